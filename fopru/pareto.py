"""Sweep summaries: Pareto fronts, a results table, accuracy-vs-cost plots and one W&B summary run.

Everything here reads the ``result.json`` files that evaluation jobs write (:class:`fopru.eval.result.RunResult`);
nothing is re-parsed from logs. ``python -m fopru.pareto SWEEP_DIR`` summarizes a finished (or aborted) sweep by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fopru.eval.result import KEPT_FILE, RESULT_FILE, RunResult
from fopru.jobs import finished_job_folders, stale_results

log = logging.getLogger(__name__)

CostAxis = Literal["tflops_total", "latency"]

LATENCY_FIELDS: tuple[str, ...] = ("total", "vision", "pruning", "prefill", "decode_per_token")
# Config choices that tell one method's curve from another's; the curve label names only those that vary.
METHOD_FIELDS: tuple[str, ...] = ("model", "significance", "strategy", "reorder", "llm_pruning")
# One subplot is this many inches at this dpi, so a figure of n benchmarks is n * 640 x 480 pixels.
SUBPLOT_INCHES: tuple[float, float] = (6.4, 4.8)
DPI = 100
CSV_FILE = "results.csv"
PLOT_FILES: dict[CostAxis, str] = {"tflops_total": "pareto_tflops.png", "latency": "pareto_latency.png"}
KEPT_PLOT = "kept_patches.png"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(cost, accuracy)`` points, lower cost and higher accuracy being better.

    A point is dominated when another one costs no more and is at least as accurate, and is strictly better in one
    of the two. Ties are broken deterministically: of several identical points only the one with the lowest index
    is on the front; a point with the same cost as a more accurate one, or the same accuracy as a cheaper one, is
    dominated. Points with a NaN coordinate are never on the front. The indices come back by increasing cost (and
    so increasing accuracy).
    """
    valid = [i for i, (cost, accuracy) in enumerate(points) if not (math.isnan(cost) or math.isnan(accuracy))]
    # Cheapest first; at equal cost the most accurate, then the lowest index, comes first and dominates the rest.
    order = sorted(valid, key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def cost(result: RunResult, axis: CostAxis) -> float | None:
    """The cost of ``result`` on ``axis``: mean TFLOPs per sample, or median end-to-end seconds per sample."""
    if axis == "tflops_total":
        return result.tflops_total
    return result.latency.total if result.latency is not None else None


def front_members(results: Sequence[RunResult], axis: CostAxis) -> list[bool | None]:
    """Per result: on the Pareto front of its (benchmark, primary metric) across all methods, or ``None`` when
    the result has no cost on ``axis`` (latency not measured)."""
    members: list[bool | None] = [None] * len(results)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, result in enumerate(results):
        if cost(result, axis) is not None:
            groups.setdefault((result.data, result.primary_metric), []).append(i)
    for indices in groups.values():
        points = [(_float(cost(results[i], axis)), results[i].accuracy) for i in indices]
        on_front = set(pareto_front(points))
        for position, i in enumerate(indices):
            members[i] = position in on_front
    return members


def results_table(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per result with the same columns in every row (missing values are ``None``).

    Columns: the config choices and budget, every metric as ``<data>/<metric>`` (blank for other benchmarks), the
    primary metric's name and value (``accuracy``), FLOPs, latency (``latency_<stage>`` in seconds, blank when not
    measured), memory, throughput and ``pareto_tflops`` / ``pareto_latency`` (front membership per benchmark and
    primary metric across all methods).
    """
    metric_columns = sorted({f"{result.data}/{name}" for result in results for name in result.metrics})
    on_tflops_front = front_members(results, "tflops_total")
    on_latency_front = front_members(results, "latency")
    rows: list[dict[str, Any]] = []
    for result, tflops_front, latency_front in zip(results, on_tflops_front, on_latency_front, strict=True):
        row: dict[str, Any] = {
            "group": result.group,
            "model": result.model,
            "data": result.data,
            "strategy": result.strategy,
            "significance": result.significance,
            "reorder": result.reorder,
            "llm_pruning": result.llm_pruning,
            "method": result.method,
            "keep": result.keep,
            "keep_tokens": result.keep_tokens,
            "kept_tokens": result.kept_tokens,
            "kept_tokens_layer_mean": result.kept_tokens_layer_mean,
            "kept_tokens_equivalent": result.kept_tokens_equivalent,
            "samples": result.samples,
        }
        row.update(dict.fromkeys(metric_columns))
        row.update({f"{result.data}/{name}": value for name, value in result.metrics.items()})
        row["primary_metric"] = result.primary_metric
        row["scoring"] = result.scoring
        row["accuracy"] = result.accuracy
        row["tflops_prefill"] = result.tflops_prefill
        row["tflops_total"] = result.tflops_total
        for stage in LATENCY_FIELDS:
            row[f"latency_{stage}"] = getattr(result.latency, stage) if result.latency is not None else None
        row["peak_memory_bytes"] = result.peak_memory_bytes
        row["kv_cache_bytes"] = result.kv_cache_bytes
        row["throughput"] = result.throughput
        row["attention"] = result.attention
        row["device"] = result.device
        row["pareto_tflops"] = tflops_front
        row["pareto_latency"] = latency_front
        rows.append(row)
    return rows


def pivot_markdown(results: Sequence[RunResult], row: str, column: str, value: str = "accuracy") -> str:
    """A Markdown table of ``value`` (a :class:`RunResult` attribute or property, in percent when it is the primary
    metric) with one row per value of ``row`` and one column per value of ``column`` (e.g. strategy x keep), in
    first-seen row order and sorted column order; missing cells are blank."""
    rows = list(dict.fromkeys(getattr(result, row) for result in results))
    columns = sorted({getattr(result, column) for result in results}, key=lambda item: (item is None, item))
    cells = {(getattr(result, row), getattr(result, column)): getattr(result, value) for result in results}

    def show(cell: Any) -> str:
        if cell is None:
            return ""
        return f"{100 * cell:.1f}" if value == "accuracy" else f"{cell:.3g}"

    lines = [
        f"| {row} \\ {column} | " + " | ".join(str(item) for item in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [f"| {item} | " + " | ".join(show(cells.get((item, key))) for key in columns) + " |" for item in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` (from :func:`results_table`) as CSV with a header; ``None`` becomes an empty cell."""
    path = Path(path)
    columns = list(rows[0]) if rows else []
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return path


def method_label(result: RunResult, varying: Sequence[str]) -> str:
    """The curve a result belongs to: its method preset when presets vary in the sweep, else its strategy plus
    whichever other method fields vary."""
    if "method" in varying and result.method is not None:
        return result.method
    fields = [name for name in METHOD_FIELDS if name in varying or name == "strategy"]
    return " ".join(f"{name}={getattr(result, name)}" if name != "strategy" else result.strategy for name in fields)


def curves(results: Sequence[RunResult], axis: CostAxis) -> dict[str, list[tuple[float, float, RunResult]]]:
    """Per method label, its ``(cost, accuracy, result)`` points sorted by cost; results without that cost are
    left out."""
    varying = [name for name in (*METHOD_FIELDS, "method") if len({getattr(result, name) for result in results}) > 1]
    by_label: dict[str, list[tuple[float, float, RunResult]]] = {}
    for result in results:
        value = cost(result, axis)
        if value is not None:
            by_label.setdefault(method_label(result, varying), []).append((value, result.accuracy, result))
    return {label: sorted(points, key=lambda point: (point[0], point[1])) for label, points in sorted(by_label.items())}


def plot_pareto(results: Sequence[RunResult], x: CostAxis, path: Path) -> Path:
    """Plot the primary metric against ``x`` into a PNG: one subplot per benchmark, one curve per method (points
    sorted by cost, each labelled with its budget), the front over all methods as a dashed step line through
    circled points. Latency is plotted in milliseconds per sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = sorted({(result.data, result.primary_metric) for result in results})
    if not benchmarks:
        raise ValueError("no results to plot")
    scale = 1e3 if x == "latency" else 1.0
    xlabel = "latency per sample (ms, median end to end)" if x == "latency" else "TFLOPs per sample (analytic)"
    width, height = SUBPLOT_INCHES
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(width * len(benchmarks), height), dpi=DPI, squeeze=False)
    try:
        for ax, (data, metric) in zip(axes[0], benchmarks, strict=True):
            subset = [result for result in results if (result.data, result.primary_metric) == (data, metric)]
            for label, points in curves(subset, x).items():
                xs = [point[0] * scale for point in points]
                ys = [point[1] for point in points]
                (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
                for x_value, y_value, (_, _, result) in zip(xs, ys, points, strict=True):
                    ax.annotate(
                        _budget_label(result),
                        (x_value, y_value),
                        textcoords="offset points",
                        xytext=(3, 3),
                        fontsize=6,
                        color=line.get_color(),
                    )
            with_cost = [result for result in subset if cost(result, x) is not None]
            front = [with_cost[i] for i in pareto_front([(_float(cost(r, x)), r.accuracy) for r in with_cost])]
            if front:
                front_xs = [_float(cost(result, x)) * scale for result in front]
                front_ys = [result.accuracy for result in front]
                ax.step(
                    front_xs, front_ys, where="post", linestyle="--", color="black", linewidth=1, label="Pareto front"
                )
                ax.scatter(front_xs, front_ys, s=120, facecolors="none", edgecolors="black", linewidths=1.2, zorder=3)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{metric} (primary metric)")
            ax.set_title(data)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
    return path


def shade_pruned(image: Any, grid: tuple[int, int], kept: Sequence[int], dim: float = 0.25) -> Any:
    """An (H, W, 3) uint8 image with the patches not in ``kept`` (row-major indices on a ``grid`` of rows x cols
    tiling the image) darkened to ``dim`` of their brightness."""
    import numpy as np

    rows, cols = grid
    mask = np.zeros(rows * cols, dtype=np.float32)
    mask[list(kept)] = 1.0
    height, width = image.shape[:2]
    cells = mask.reshape(rows, cols)
    pixel_mask = cells[(np.arange(height) * rows) // height][:, (np.arange(width) * cols) // width]
    shaded = image.astype(np.float32) * (dim + (1.0 - dim) * pixel_mask[..., None])
    return shaded.round().astype(np.uint8)


def plot_kept_patches(
    sweep_dir: Path,
    path: Path,
    max_jobs: int = 12,
    keep: float | None = None,
    folders: Sequence[Path] | None = None,
) -> Path | None:
    """Draw the patches each job kept on the same few samples: one column per job (its strategy and budget), one
    row per sample, pruned patches dimmed. Reads the ``kept_patches.json`` files jobs save beside their
    ``result.json`` (of the job ``folders`` only, when given); ``None`` when there are none. At most ``max_jobs``
    columns, in job order; only jobs at budget ``keep`` when it is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    sweep_dir = Path(sweep_dir)
    files = sorted(_files(sweep_dir, KEPT_FILE, folders), key=lambda file: _job_order(file.relative_to(sweep_dir)))
    jobs: list[tuple[str, Path, list[dict[str, Any]]]] = []
    for file in files:
        try:
            result = RunResult.load(file.parent / RESULT_FILE)
            records = json.loads(file.read_text())
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("skipping unreadable kept patches in %s: %s", file.parent, error)
            continue
        if keep is not None and result.keep != keep:
            continue
        label = f"{result.method or result.strategy} / {result.significance}\nkeep {_budget_label(result)}"
        jobs.append((label, file.parent, records))
    if not jobs:
        return None
    jobs = jobs[:max_jobs]
    samples = min(len(records) for _, _, records in jobs)
    if samples == 0:
        return None
    figure, axes = plt.subplots(samples, len(jobs), figsize=(1.9 * len(jobs), 2.1 * samples), dpi=DPI, squeeze=False)
    try:
        for column, (label, folder, records) in enumerate(jobs):
            for row in range(samples):
                record = records[row]
                image = np.asarray(Image.open(folder / record["image"]).convert("RGB"))
                rows, cols = record["grid"]
                ax = axes[row][column]
                ax.imshow(shade_pruned(image, (rows, cols), record["kept"]), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(label, fontsize=7)
                ax.set_xlabel(f"{len(record['kept'])}/{rows * cols} kept", fontsize=6)
                if column == 0:
                    ax.set_ylabel(str(record["question"])[:40], fontsize=6)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
    return Path(path)


def collect(sweep_dir: Path, folders: Sequence[Path] | None = None) -> list[RunResult]:
    """Every readable ``result.json`` under a Hydra sweep (or run) folder, or only those of the job ``folders``
    when given, by job number.

    Jobs are the numbered subfolders of a sweep (``hydra.sweep.subdir``); a run folder's own ``result.json`` comes
    first, non-numeric subfolders last, by name. Unreadable files are logged and skipped.
    """
    sweep_dir = Path(sweep_dir)
    paths = sorted(_files(sweep_dir, RESULT_FILE, folders), key=lambda path: _job_order(path.relative_to(sweep_dir)))
    results: list[RunResult] = []
    for path in paths:
        try:
            results.append(RunResult.load(path))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("skipping unreadable %s: %s: %s", path, type(error).__name__, error)
    return results


@dataclass(frozen=True)
class SweepSummary:
    """What :func:`summarize_sweep` wrote; a path is ``None`` when nothing of that kind was written.

    Attributes:
        results: how many results were summarized.
        csv: the results table.
        tflops_plot, latency_plot: accuracy against TFLOPs, and against latency (only when every result has one).
        wandb_dir: the W&B summary run's local folder.
        kept_plot: the kept patches of every job on the same samples (when the jobs saved them).
    """

    results: int
    csv: Path | None = None
    tflops_plot: Path | None = None
    latency_plot: Path | None = None
    wandb_dir: Path | None = None
    kept_plot: Path | None = None


def summarize_sweep(sweep_dir: Path, group: str, log_to_wandb: bool, project: str | None = None) -> SweepSummary:
    """Write ``results.csv``, ``pareto_tflops.png``, (when every result has latency) ``pareto_latency.png`` and (when
    jobs saved kept patches) ``kept_patches.png`` into ``sweep_dir``; with ``log_to_wandb``, log them to one extra
    W&B run (job type ``sweep-summary``, group ``group``, offline unless ``WANDB_MODE`` says otherwise, project
    ``project`` or ``WANDB_PROJECT`` or "fopru").

    A folder holding a sweep record (``sweep.json``, :mod:`fopru.jobs`) is summarized from the finished jobs of
    its latest sweep only; results other sweeps left in it are not. A sweep without any readable result writes
    nothing.
    """
    sweep_dir = Path(sweep_dir)
    folders = finished_job_folders(sweep_dir)
    stale = stale_results(sweep_dir)
    if stale:
        log.info(
            "leaving out %d %s files under %s that are not of its latest sweep's finished jobs",
            stale,
            RESULT_FILE,
            sweep_dir,
        )
    results = collect(sweep_dir, folders)
    if not results:
        log.warning("no readable %s under %s: nothing to summarize", RESULT_FILE, sweep_dir)
        return SweepSummary(results=0)
    rows = results_table(results)
    csv_path = write_csv(rows, sweep_dir / CSV_FILE)
    tflops_plot = plot_pareto(results, "tflops_total", sweep_dir / PLOT_FILES["tflops_total"])
    latency_plot = None
    if all(result.latency is not None for result in results):
        latency_plot = plot_pareto(results, "latency", sweep_dir / PLOT_FILES["latency"])
    kept_plot = plot_kept_patches(sweep_dir, sweep_dir / KEPT_PLOT, folders=folders)
    wandb_dir = None
    if log_to_wandb:
        plots = [tflops_plot, latency_plot, kept_plot]
        wandb_dir = log_summary_to_wandb(results, rows, plots, sweep_dir, group, project)
    log.info("summarized %d results of %s: %s", len(results), sweep_dir, csv_path)
    return SweepSummary(len(results), csv_path, tflops_plot, latency_plot, wandb_dir, kept_plot)


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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fopru.pareto SWEEP_DIR [--group NAME] [--wandb] [--table ROW COLUMN] [--kept-at KEEP]``:
    summarize a sweep folder by hand."""
    parser = argparse.ArgumentParser(prog="python -m fopru.pareto", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--group", default=None, help="W&B group (default: the folder's name)")
    parser.add_argument("--wandb", action="store_true", help="also log a sweep-summary run to W&B")
    parser.add_argument("--kept-at", type=float, help="also draw the kept patches of the jobs at this keep only")
    parser.add_argument(
        "--table",
        nargs=2,
        metavar=("ROW", "COLUMN"),
        help="also print a Markdown table of the primary metric (%%), e.g. --table strategy keep",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sweep_dir: Path = arguments.sweep_dir
    summary = summarize_sweep(sweep_dir, arguments.group or sweep_dir.resolve().name, arguments.wandb)
    print(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in vars(summary).items()}))
    folders = finished_job_folders(sweep_dir)
    if arguments.kept_at is not None:
        kept_path = sweep_dir / f"kept_patches_keep{arguments.kept_at:g}.png"
        print(plot_kept_patches(sweep_dir, kept_path, keep=arguments.kept_at, folders=folders))
    if arguments.table:
        print(pivot_markdown(collect(sweep_dir, folders), *arguments.table))


def _files(sweep_dir: Path, name: str, folders: Sequence[Path] | None) -> list[Path]:
    """The files called ``name`` under ``sweep_dir``, or directly in ``folders`` when given."""
    if folders is None:
        return list(sweep_dir.rglob(name))
    return [folder / name for folder in folders if (folder / name).is_file()]


def _float(value: float | None) -> float:
    return math.nan if value is None else value


def _budget_label(result: RunResult) -> str:
    return f"{result.keep_tokens} tok" if result.keep_tokens is not None else f"{result.keep:g}"


def _job_order(relative: Path) -> tuple[int, int, str]:
    if len(relative.parts) == 1:
        return (0, 0, "")
    first = relative.parts[0]
    return (1, int(first), str(relative)) if first.isdigit() else (2, 0, str(relative))


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


if __name__ == "__main__":
    main()
