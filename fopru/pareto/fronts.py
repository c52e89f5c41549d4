"""Pareto fronts of (cost, accuracy) points and the per-method curves through them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from fopru.eval.result import RunResult

CostAxis = Literal["tflops_total", "latency"]


# Config choices that tell one method's curve from another's; the curve label names only those that vary.
METHOD_FIELDS: tuple[str, ...] = ("model", "significance", "strategy", "reorder", "llm_pruning")


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


def noisy_pareto_front(
    points: Sequence[tuple[float, float]], spreads: Sequence[tuple[float, float] | None]
) -> list[int]:
    """:func:`pareto_front` for costs measured with noise: ``spreads[i]`` is point i's (low, high) cost range (the
    interquartile range of its timed requests; ``None``: exact). Two costs whose ranges overlap count as equal, so
    a point is dominated only by one at least as accurate that is clearly cheaper (its range ends below this one's)
    or as cheap within the noise and more accurate; of points equal within the noise in both, the one with the
    lowest median cost (then index) is kept. The front never steps through a cost difference smaller than the
    noise. Indices by increasing cost.
    """
    valid = [i for i, (cost, accuracy) in enumerate(points) if not (math.isnan(cost) or math.isnan(accuracy))]

    def span(i: int) -> tuple[float, float]:
        spread = spreads[i]
        return spread if spread is not None else (points[i][0], points[i][0])

    def dominates(a: int, b: int) -> bool:
        (low_a, high_a), (low_b, high_b) = span(a), span(b)
        clearly_cheaper = high_a < low_b
        same_cost = not clearly_cheaper and not high_b < low_a
        accuracy_a, accuracy_b = points[a][1], points[b][1]
        if accuracy_a < accuracy_b:
            return False
        tie_break = (points[a][0], a) < (points[b][0], b)  # equal within the noise: the cheaper, then the first
        return clearly_cheaper or (same_cost and (accuracy_a > accuracy_b or tie_break))

    front = [b for b in valid if not any(dominates(a, b) for a in valid if a != b)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def cost_spread(result: RunResult, axis: CostAxis) -> tuple[float, float] | None:
    """The (low, high) range of ``result``'s cost on ``axis``: the latency's interquartile range when recorded,
    else ``None`` (analytic FLOPs are exact)."""
    latency = result.latency
    if axis != "latency" or latency is None or latency.total_low is None or latency.total_high is None:
        return None
    return latency.total_low, latency.total_high


def front_of(results: Sequence[RunResult], axis: CostAxis) -> list[int]:
    """The indices of ``results`` (all with a cost on ``axis``) on their Pareto front, noise-aware for latency."""
    points = [(as_float(cost(result, axis)), result.accuracy) for result in results]
    return noisy_pareto_front(points, [cost_spread(result, axis) for result in results])


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
        on_front = set(front_of([results[i] for i in indices], axis))
        for position, i in enumerate(indices):
            members[i] = position in on_front
    return members


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


def as_float(value: float | None) -> float:
    """``None`` as NaN, for coordinates."""
    return math.nan if value is None else value


def budget_label(result: RunResult) -> str:
    """A job's budget as a point label: its token count, or its kept fraction."""
    return f"{result.keep_tokens} tok" if result.keep_tokens is not None else f"{result.keep:g}"
