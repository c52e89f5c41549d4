"""``summarize_sweep``: every summary file of a sweep folder in one call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fopru.eval.result import RESULT_FILE
from fopru.jobs import finished_job_folders, stale_results
from fopru.pareto.plots import KEPT_PLOT, PLOT_FILES, plot_kept_pages, plot_pareto
from fopru.pareto.report import write_report
from fopru.pareto.results import collect
from fopru.pareto.table import CSV_FILE, console_table, results_table, write_csv
from fopru.pareto.wandb_summary import log_summary_to_wandb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSummary:
    """What :func:`summarize_sweep` wrote; a path is ``None`` when nothing of that kind was written.

    Attributes:
        results: how many results were summarized.
        csv: the results table.
        tflops_plot, latency_plot: accuracy against TFLOPs, and against latency (only when every result has one).
        wandb_dir: the W&B summary run's local folder.
        kept_plot: the kept patches of every job on the same samples (when the jobs saved them): its first page.
        kept_pages: every page of it (``kept_patches.png``, ``kept_patches_2.png``, ...).
        report: the offline HTML report (``report.html``: the jobs table and the figures).
    """

    results: int
    csv: Path | None = None
    tflops_plot: Path | None = None
    latency_plot: Path | None = None
    wandb_dir: Path | None = None
    kept_plot: Path | None = None
    kept_pages: tuple[Path, ...] = ()
    report: Path | None = None

    def files(self) -> list[str]:
        """The names of the files written (the W&B run as its folder's name)."""
        paths = (self.csv, self.report, self.tflops_plot, self.latency_plot, *self.kept_pages)
        names = [path.name for path in paths if path is not None]
        return names + ([f"wandb/{self.wandb_dir.name}"] if self.wandb_dir is not None else [])


def summarize_sweep(sweep_dir: Path, group: str, log_to_wandb: bool, project: str | None = None) -> SweepSummary:
    """Write ``results.csv``, ``pareto_tflops.png``, (when every result has latency) ``pareto_latency.png``, (when
    jobs saved kept patches) ``kept_patches.png`` (one page per 8 jobs) and ``report.html`` into ``sweep_dir``;
    with ``log_to_wandb``, log them to one extra W&B run (job type ``sweep-summary``, group ``group``, offline
    unless ``WANDB_MODE`` says otherwise, project ``project`` or ``WANDB_PROJECT`` or "fopru").

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
    kept_pages = tuple(plot_kept_pages(sweep_dir, sweep_dir / KEPT_PLOT, folders=folders))
    kept_plot = kept_pages[0] if kept_pages else None
    wandb_dir = None
    if log_to_wandb:
        plots = [tflops_plot, latency_plot, *kept_pages]
        wandb_dir = log_summary_to_wandb(results, rows, plots, sweep_dir, group, project)
    report = write_report(results, [tflops_plot, latency_plot, *kept_pages], sweep_dir)
    summary = SweepSummary(len(results), csv_path, tflops_plot, latency_plot, wandb_dir, kept_plot, kept_pages, report)
    if len(results) > 1:
        log.info("%d jobs:\n%s", len(results), console_table(results))
    log.info("summary in %s: %s", sweep_dir, ", ".join(summary.files()))
    return summary
