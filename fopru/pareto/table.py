"""The results table (``results.csv``) and Markdown pivots of it."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fopru.eval.result import RunResult
from fopru.pareto.fronts import front_members
from fopru.pareto.units import flops_unit

LATENCY_FIELDS: tuple[str, ...] = ("total", "vision", "pruning", "prefill", "decode_per_token")


CSV_FILE = "results.csv"


def results_table(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per result with the same columns in every row (missing values are ``None``).

    Columns: the config choices and budget, every metric as ``<data>/<metric>`` (blank for other benchmarks), the
    primary metric's name and value (``accuracy``) with its 95% bootstrap interval over samples (``accuracy_low``,
    ``accuracy_high``; blank in results written before intervals were recorded), FLOPs, latency
    (``latency_<stage>`` in seconds, blank when not measured), memory, throughput and ``pareto_tflops`` /
    ``pareto_latency`` (front membership per benchmark and
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
        row["accuracy_low"] = result.accuracy_low
        row["accuracy_high"] = result.accuracy_high
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
    metric, with half its 95% interval as ``±`` when recorded) with one row per value of ``row`` and one column per
    value of ``column`` (e.g. strategy x keep), in first-seen row order and sorted column order; missing cells are
    blank."""
    rows = list(dict.fromkeys(getattr(result, row) for result in results))
    columns = sorted({getattr(result, column) for result in results}, key=lambda item: (item is None, item))
    cells = {(getattr(result, row), getattr(result, column)): result for result in results}

    def show(cell: Any) -> str:
        if cell is None:
            return ""
        return f"{100 * cell:.1f}" if value == "accuracy" else f"{cell:.3g}"

    def show_interval(item: Any, key: Any) -> str:
        result = cells.get((item, key))
        if result is None or getattr(result, value) is None:
            return ""
        if value != "accuracy" or result.accuracy_low is None or result.accuracy_high is None:
            return show(getattr(result, value))
        return f"{show(result.accuracy)} ±{100 * (result.accuracy_high - result.accuracy_low) / 2:.1f}"

    lines = [
        f"| {row} \\ {column} | " + " | ".join(str(item) for item in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [f"| {item} | " + " | ".join(show_interval(item, key) for key in columns) + " |" for item in rows]
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


def varying_overrides(results: Sequence[RunResult]) -> list[str]:
    """Per result, its overrides that not every result shares (what varies across the sweep), space-separated;
    ``defaults`` for a result without any."""
    common = set.intersection(*(set(result.overrides) for result in results)) if results else set()
    shown = [" ".join(item for item in result.overrides if item not in common) for result in results]
    return [
        text or ("defaults" if not result.overrides else "(same)") for text, result in zip(shown, results, strict=True)
    ]


def console_table(results: Sequence[RunResult]) -> str:
    """A small fixed-width table of a sweep's jobs for the console: what varies, the primary metric with its 95%
    interval, the kept visual tokens and the FLOPs per sample (one unit for the column)."""
    factor, unit = flops_unit(result.tflops_total for result in results)
    header = ("#", "varies", "metric [95% interval]", "tokens", f"{unit}/sample")
    body = [
        (
            str(number),
            varies,
            f"{result.data} {result.primary_metric} {result.accuracy_interval}",
            f"{result.kept_tokens:.1f}",
            f"{result.tflops_total * factor:.3g}",
        )
        for number, (result, varies) in enumerate(zip(results, varying_overrides(results), strict=True))
    ]
    widths = [max(len(row[column]) for row in (header, *body)) for column in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column < 3 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *body)
    )
