"""The sweep-summary W&B run: the results table, line charts per benchmark and the figures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fopru.eval.result import RunResult
from fopru.pareto.fronts import CostAxis, curves


def log_summary_to_wandb(
    results: Sequence[RunResult],
    rows: Sequence[dict[str, Any]],
    plots: Sequence[Path | None],
    sweep_dir: Path,
    group: str,
    project: str | None = None,
) -> Path:
    """Log the table, one line chart per (benchmark, cost axis) with a series per method, and the PNGs to one new
    W&B run, finish it and return its local folder."""
    import wandb

    run = wandb.init(
        project=project or os.environ.get("WANDB_PROJECT", "fopru"),
        group=group,
        job_type="sweep-summary",
        name=f"{group}-summary",
        dir=str(sweep_dir),
        mode=_wandb_mode(),
        config={"sweep_dir": str(sweep_dir), "results": len(results)},
        reinit="create_new",
    )
    try:
        columns: list[str | int] = list(rows[0])
        table = wandb.Table(columns=columns, data=[list(row.values()) for row in rows])
        logged: dict[str, Any] = {"results": table}
        axes: tuple[tuple[CostAxis, float, str], ...] = (
            ("tflops_total", 1.0, "TFLOPs per sample"),
            ("latency", 1e3, "latency per sample (ms)"),
        )
        for axis, unit_scale, xname in axes:
            if axis == "latency" and any(result.latency is None for result in results):
                continue  # as for the PNG: a latency chart only when every job measured latency
            for data, metric in sorted({(result.data, result.primary_metric) for result in results}):
                subset = [result for result in results if (result.data, result.primary_metric) == (data, metric)]
                series = curves(subset, axis)
                if not series:
                    continue
                logged[f"pareto/{data}/{metric}_vs_{axis}"] = wandb.plot.line_series(
                    xs=[[point[0] * unit_scale for point in points] for points in series.values()],
                    ys=[[point[1] for point in points] for points in series.values()],
                    keys=list(series),
                    title=f"{data}: {metric} vs {xname}",
                    xname=xname,
                )
        for plot in plots:
            if plot is not None:
                logged[f"pareto/{plot.stem}"] = wandb.Image(str(plot))
        run.log(logged)
        run.summary["results"] = len(results)
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


def _wandb_mode() -> Literal["online", "offline", "disabled", "shared"]:
    mode = os.environ.get("WANDB_MODE", "offline")
    modes: dict[str, Literal["online", "offline", "disabled", "shared"]] = {
        "online": "online",
        "run": "online",
        "offline": "offline",
        "dryrun": "offline",
        "disabled": "disabled",
        "shared": "shared",
    }
    return modes.get(mode, "offline")
