"""An offline HTML report of a sweep, beside its ``results.csv``: the jobs with their intervals, then the figures.

One self-contained file (figures embedded as data URIs, no script, no network), for readers without W&B: open it
in any browser, attach it to a message, or copy it off a cluster.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from fopru.eval.result import RunResult
from fopru.pareto.fronts import front_members
from fopru.pareto.plots import figure_title
from fopru.pareto.table import varying_overrides
from fopru.pareto.units import flops_unit

REPORT_FILE = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.front td { background: #eef6ee; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; }
"""


def embedded(path: Path) -> str:
    """A PNG as an ``<img>`` with its bytes inline, so the report needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def jobs_table(results: Sequence[RunResult]) -> str:
    """The jobs as an HTML table: what varies, the primary metric with its 95% interval, tokens, FLOPs, front."""
    factor, unit = flops_unit(result.tflops_total for result in results)
    on_front = front_members(results, "tflops_total")
    header = ["#", "varies", "benchmark", "metric", "value [95% interval]", "visual tokens", f"{unit}/sample"]
    rows = ["<tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in header) + "</tr>"]
    for number, (result, varies, front) in enumerate(zip(results, varying_overrides(results), on_front, strict=True)):
        cells = [
            (str(number), True),
            (varies, False),
            (result.data, False),
            (result.primary_metric, False),
            (result.accuracy_interval, True),
            (f"{result.kept_tokens:.1f}", True),
            (f"{result.tflops_total * factor:.3g}", True),
        ]
        shown = "".join(
            f'<td class="number">{html.escape(text)}</td>' if number_cell else f"<td>{html.escape(text)}</td>"
            for text, number_cell in cells
        )
        rows.append(f'<tr class="front">{shown}</tr>' if front else f"<tr>{shown}</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def write_report(results: Sequence[RunResult], figures: Sequence[Path | None], folder: Path) -> Path:
    """Write ``report.html`` into ``folder``: the title, the jobs table, then each existing figure."""
    title = figure_title(results)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Jobs</h2>",
        jobs_table(results),
        '<p class="note">Intervals: 95% bootstrap over samples (1000 resamples of the benchmark\'s scoring units, '
        "the benchmark's own metric recomputed on each). Shaded rows are on the TFLOPs Pareto front. Compare two "
        "jobs on their shared samples with <code>python -m fopru.pareto SWEEP --compare JOB_A JOB_B</code>.</p>",
    ]
    for figure in figures:
        if figure is not None and Path(figure).is_file():
            sections += [f"<h2>{html.escape(Path(figure).stem.replace('_', ' '))}</h2>", embedded(Path(figure))]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    path = Path(folder) / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
