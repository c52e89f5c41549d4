"""Figures of a sweep: accuracy against cost with its Pareto front, and the patches each job kept."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fopru.eval.result import KEPT_FILE, RESULT_FILE, RunResult
from fopru.pareto.fronts import CostAxis, as_float, budget_label, cost, curves, pareto_front
from fopru.pareto.results import files_named, job_order

log = logging.getLogger(__name__)


# One subplot is this many inches at this dpi, so a figure of n benchmarks is n * 640 x 480 pixels.
SUBPLOT_INCHES: tuple[float, float] = (6.4, 4.8)


DPI = 100


PLOT_FILES: dict[CostAxis, str] = {"tflops_total": "pareto_tflops.png", "latency": "pareto_latency.png"}


KEPT_PLOT = "kept_patches.png"


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
                        budget_label(result),
                        (x_value, y_value),
                        textcoords="offset points",
                        xytext=(3, 3),
                        fontsize=6,
                        color=line.get_color(),
                    )
            with_cost = [result for result in subset if cost(result, x) is not None]
            front = [with_cost[i] for i in pareto_front([(as_float(cost(r, x)), r.accuracy) for r in with_cost])]
            if front:
                front_xs = [as_float(cost(result, x)) * scale for result in front]
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
    files = sorted(files_named(sweep_dir, KEPT_FILE, folders), key=lambda file: job_order(file.relative_to(sweep_dir)))
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
        label = f"{result.method or result.strategy} / {result.significance}\nkeep {budget_label(result)}"
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
