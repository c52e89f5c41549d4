"""Figures of a sweep: accuracy against cost with its Pareto front, and the patches each job kept."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fopru.eval.result import KEPT_FILE, RESULT_FILE, RunResult
from fopru.pareto.fronts import CostAxis, as_float, budget_label, cost, cost_spread, curves, front_of
from fopru.pareto.results import files_named, job_order
from fopru.pareto.table import varying_overrides
from fopru.pareto.units import flops_unit

log = logging.getLogger(__name__)


# One subplot is this many inches at this dpi, so a figure of n benchmarks is n * 640 + 320 (legend) x 480 pixels.
SUBPLOT_INCHES: tuple[float, float] = (6.4, 4.8)


DPI = 100
#: Room beside the subplots for the legend, in inches.
LEGEND_INCHES = 3.2


PLOT_FILES: dict[CostAxis, str] = {"tflops_total": "pareto_tflops.png", "latency": "pareto_latency.png"}


KEPT_PLOT = "kept_patches.png"


#: Markers cycled over curves (open, decreasing in size), so that curves through the same points stay visible.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p", "d", "8", "H")
#: Above this many curves the non-highlighted ones are muted and budget labels are drawn for the highlighted only.
BUSY_CURVES = 5


def highlighted(label: str) -> bool:
    """Whether a curve is FoPru's (highlighted in colour; the other methods are muted when there are many)."""
    return "fopru" in label.lower() or "significance=focal" in label


def figure_title(results: Sequence[RunResult]) -> str:
    """Model(s), benchmark(s), samples and the sweep's name, for the top of a figure."""

    def joined(values: Sequence[object]) -> str:
        return ", ".join(str(value) for value in dict.fromkeys(values))

    samples = sorted({result.samples for result in results})
    shown = str(samples[0]) if len(samples) == 1 else f"{samples[0]}-{samples[-1]}"
    return (
        f"{joined([r.model for r in results])} on {joined([r.data for r in results])}: {shown} samples, "
        f"sweep {joined([r.group for r in results])}"
    )


def spread_errors(
    xs: Sequence[float], spreads: Sequence[tuple[float, float] | None], scale: float
) -> list[list[float]] | None:
    """Matplotlib's (below, above) error lengths of costs ``xs`` (already scaled) from their (low, high) spreads;
    ``None`` when no point has one."""
    if all(spread is None for spread in spreads):
        return None
    below = [max(0.0, x - spread[0] * scale) if spread else 0.0 for x, spread in zip(xs, spreads, strict=True)]
    above = [max(0.0, spread[1] * scale - x) if spread else 0.0 for x, spread in zip(xs, spreads, strict=True)]
    return [below, above]


def plot_pareto(results: Sequence[RunResult], x: CostAxis, path: Path) -> Path:
    """Plot the primary metric against ``x`` into a PNG: one subplot per benchmark, one curve per method (points
    sorted by cost, error bars the 95% bootstrap interval), the front over all methods as a dashed step line through
    circled points, the legend beside the plots. FLOPs are shown in the unit that suits them (MFLOPs, GFLOPs,
    TFLOPs), latency in milliseconds per sample. With more than :data:`BUSY_CURVES` curves, FoPru's are drawn in
    colour and the others muted; budget labels go on the highlighted curves only, once per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = sorted({(result.data, result.primary_metric) for result in results})
    if not benchmarks:
        raise ValueError("no results to plot")
    if x == "latency":
        scale, xlabel = 1e3, "latency per sample (ms, median end to end, interquartile range)"
    else:
        scale, unit = flops_unit(result.tflops_total for result in results)
        xlabel = f"{unit} per sample (analytic)"
    width, height = SUBPLOT_INCHES
    columns = len(benchmarks)
    figure, axes = plt.subplots(1, columns, figsize=(width * columns + LEGEND_INCHES, height), dpi=DPI, squeeze=False)
    try:
        handles: dict[str, Any] = {}
        for ax, (data, metric) in zip(axes[0], benchmarks, strict=True):
            subset = [result for result in results if (result.data, result.primary_metric) == (data, metric)]
            series = curves(subset, x)
            busy = len(series) > BUSY_CURVES
            labelled: set[tuple[float, float, str]] = set()
            for number, (label, points) in enumerate(series.items()):
                xs = [point[0] * scale for point in points]
                ys = [point[1] for point in points]
                errors = [
                    [max(0.0, y - (r.accuracy_low if r.accuracy_low is not None else y)) for y, (_, _, r) in
                     zip(ys, points, strict=True)],
                    [max(0.0, (r.accuracy_high if r.accuracy_high is not None else y) - y) for y, (_, _, r) in
                     zip(ys, points, strict=True)],
                ]  # fmt: skip
                cost_errors = spread_errors(xs, [cost_spread(r, x) for _, _, r in points], scale)
                strong = highlighted(label) or not busy
                style: dict[str, Any] = {"color": None if strong else "0.55", "alpha": 1.0 if strong else 0.6}
                container = ax.errorbar(
                    xs,
                    ys,
                    yerr=errors,
                    xerr=cost_errors,
                    marker=MARKERS[number % len(MARKERS)],
                    markersize=max(4.0, 10.0 - 0.5 * number),
                    fillstyle="none",
                    linewidth=2.0 if strong and busy else 1.2,
                    capsize=2,
                    elinewidth=0.8,
                    label=label,
                    zorder=4 if strong else 2,
                    **style,
                )
                handles.setdefault(label, container)
                if busy and not strong:
                    continue
                colour = container.lines[0].get_color()
                for x_value, y_value, (_, _, result) in zip(xs, ys, points, strict=True):
                    text = budget_label(result)
                    spot = (round(x_value, 6), round(y_value, 6), text)
                    if spot in labelled:
                        continue  # identical points of several curves: one label
                    labelled.add(spot)
                    ax.annotate(
                        text, (x_value, y_value), textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour
                    )
            with_cost = [result for result in subset if cost(result, x) is not None]
            front = [with_cost[i] for i in front_of(with_cost, x)]
            if front:
                front_xs = [as_float(cost(result, x)) * scale for result in front]
                front_ys = [result.accuracy for result in front]
                (step,) = ax.step(front_xs, front_ys, where="post", linestyle="--", color="black", linewidth=1)
                handles.setdefault("Pareto front", step)
                ax.scatter(front_xs, front_ys, s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=5)
            ax.set_xlabel(xlabel, fontsize=10)
            ax.set_ylabel(f"{metric} (primary metric, 95% interval)", fontsize=10)
            ax.set_title(f"{data}", fontsize=11)
            ax.grid(True, alpha=0.3)
        figure.suptitle(figure_title(results), fontsize=11)
        figure.legend(
            list(handles.values()),
            list(handles),
            loc="center right",
            fontsize=8 if len(handles) <= 10 else 7,
            frameon=False,
        )
        figure.tight_layout(rect=(0, 0, (width * columns) / (width * columns + LEGEND_INCHES), 1))
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
    max_jobs: int = 8,
    keep: float | None = None,
    folders: Sequence[Path] | None = None,
) -> Path | None:
    """The first page of :func:`plot_kept_pages` (``path``), or ``None`` when no job saved kept patches."""
    pages = plot_kept_pages(sweep_dir, path, max_jobs, keep, folders)
    return pages[0] if pages else None


def page_path(path: Path, page: int) -> Path:
    """Page ``page`` (0 first) of a figure: ``path`` itself, then ``<stem>_2<suffix>``, ``<stem>_3<suffix>``..."""
    path = Path(path)
    return path if page == 0 else path.with_name(f"{path.stem}_{page + 1}{path.suffix}")


def plot_kept_pages(
    sweep_dir: Path,
    path: Path,
    max_jobs: int = 8,
    keep: float | None = None,
    folders: Sequence[Path] | None = None,
) -> list[Path]:
    """Draw the patches each job kept on the same few samples: one column per job, titled with its number and what
    it overrides that the other jobs do not, one row per sample, pruned patches dimmed. Reads the
    ``kept_patches.json`` files jobs save beside their ``result.json`` (of the job ``folders`` only, when given).
    Every job is drawn, in job order, ``max_jobs`` per page (:func:`page_path`); only jobs at budget ``keep`` when
    it is given. Returns the pages written (none when no job saved kept patches)."""
    sweep_dir = Path(sweep_dir)
    files = sorted(files_named(sweep_dir, KEPT_FILE, folders), key=lambda file: job_order(file.relative_to(sweep_dir)))
    found: list[tuple[RunResult, Path, list[dict[str, Any]]]] = []
    for file in files:
        try:
            result = RunResult.load(file.parent / RESULT_FILE)
            records = json.loads(file.read_text())
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("skipping unreadable kept patches in %s: %s", file.parent, error)
            continue
        if keep is None or result.keep == keep:
            found.append((result, file.parent, records))
    if not found or min(len(records) for _, _, records in found) == 0:
        return []
    varies = varying_overrides([result for result, _, _ in found])
    jobs = [
        (job_title(folder, result, text), folder, records)
        for (result, folder, records), text in zip(found, varies, strict=True)
    ]
    pages = []
    for page, first in enumerate(range(0, len(jobs), max_jobs)):
        pages.append(draw_kept_page(jobs[first : first + max_jobs], page_path(path, page)))
    if len(pages) > 1:
        log.info("kept patches of %d jobs on %d pages: %s ...", len(jobs), len(pages), pages[0].name)
    return pages


def job_title(folder: Path, result: RunResult, varies: str) -> str:
    """A column title: the job folder's number, what the job overrides that others do not (or its method and
    budget), wrapped to fit a column."""
    number = folder.name.split("-", 1)[0]
    text = (
        varies if varies not in ("defaults", "(same)") else f"{result.method or result.strategy} keep {result.keep:g}"
    )
    return "\n".join([f"#{number}" if number.isdigit() else folder.name[:20], *textwrap.wrap(text, 22)[:4]])


def draw_kept_page(jobs: Sequence[tuple[str, Path, list[dict[str, Any]]]], path: Path) -> Path:
    """One page of kept patches: a column per ``(title, job folder, records)``, a row per sample they all have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    samples = min(len(records) for _, _, records in jobs)
    title_lines = max(title.count("\n") + 1 for title, _, _ in jobs)
    figure, axes = plt.subplots(
        samples, len(jobs), figsize=(2.4 * len(jobs) + 1.2, 2.5 * samples + 0.25 * title_lines), dpi=DPI, squeeze=False
    )
    try:
        for column, (title, folder, records) in enumerate(jobs):
            for row in range(samples):
                record = records[row]
                image = np.asarray(Image.open(folder / record["image"]).convert("RGB"))
                rows, cols = record["grid"]
                ax = axes[row][column]
                ax.imshow(shade_pruned(image, (rows, cols), record["kept"]), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=9)
                ax.set_xlabel(f"{len(record['kept'])}/{rows * cols} kept", fontsize=8)
                if column == 0:
                    ax.set_ylabel("\n".join(textwrap.wrap(str(record["question"]), 24)[:3]), fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
    return Path(path)
