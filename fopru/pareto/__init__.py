"""Sweep summaries: Pareto fronts, a results table, accuracy-vs-cost plots, an HTML report and one W&B summary run.

Everything here reads the ``result.json`` files that evaluation jobs write (:class:`fopru.eval.result.RunResult`);
nothing is re-parsed from logs. ``python -m fopru.pareto SWEEP_DIR`` summarizes a finished (or aborted) sweep by hand.

One module per responsibility: :mod:`~fopru.pareto.fronts` (fronts and curves), :mod:`~fopru.pareto.results`
(reading a sweep folder), :mod:`~fopru.pareto.table` (``results.csv``), :mod:`~fopru.pareto.plots` (figures),
:mod:`~fopru.pareto.wandb_summary` (the W&B run), :mod:`~fopru.pareto.summary` (all of them for one folder) and
:mod:`~fopru.pareto.cli` (the command line).
"""

from fopru.pareto.fronts import METHOD_FIELDS, CostAxis, cost, curves, front_members, method_label, pareto_front
from fopru.pareto.plots import DPI, KEPT_PLOT, PLOT_FILES, SUBPLOT_INCHES, plot_kept_patches, plot_pareto, shade_pruned
from fopru.pareto.results import collect
from fopru.pareto.summary import SweepSummary, summarize_sweep
from fopru.pareto.table import CSV_FILE, LATENCY_FIELDS, pivot_markdown, results_table, write_csv
from fopru.pareto.wandb_summary import log_summary_to_wandb

__all__ = [
    "CSV_FILE",
    "DPI",
    "KEPT_PLOT",
    "LATENCY_FIELDS",
    "METHOD_FIELDS",
    "PLOT_FILES",
    "SUBPLOT_INCHES",
    "CostAxis",
    "SweepSummary",
    "collect",
    "cost",
    "curves",
    "front_members",
    "log_summary_to_wandb",
    "method_label",
    "pareto_front",
    "pivot_markdown",
    "plot_kept_patches",
    "plot_pareto",
    "results_table",
    "shade_pruned",
    "summarize_sweep",
    "write_csv",
]
