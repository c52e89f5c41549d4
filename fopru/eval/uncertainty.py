"""Sampling uncertainty of a benchmark score: bootstrap intervals over samples, and paired differences of two jobs.

A score on a ``data.limit`` subset is an estimate; these say how far it could move with another draw of samples.
Each bootstrap replicate draws the benchmark's scoring units (a sample, or MME's two-question image) with
replacement and recomputes the benchmark's own metric on them through its score function, so any metric works
(accuracy, POPE F1, MME perception totals), not only means of per-sample correctness. The interval is the
percentile interval of the replicates. Resampling is seeded: the same records always give the same interval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Records = Sequence[Mapping[str, Any]]
ScoreFunction = Callable[[Records], Mapping[str, float]]

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A ``level`` percentile bootstrap interval ``[low, high]`` of ``resamples`` replicates around ``value``."""

    value: float
    low: float
    high: float
    level: float = LEVEL
    resamples: int = RESAMPLES

    @property
    def half_width(self) -> float:
        """Half the interval's width (what a ``±`` shows)."""
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` of one metric on the samples two jobs share, with its paired bootstrap interval.

    Attributes:
        metric: the metric compared.
        samples: the scoring units both jobs predicted (the difference is over those only).
        a, b: each job's metric on those shared units.
        difference: the ``b - a`` interval; excluding 0 means the gap is unlikely to be sampling noise alone.
    """

    metric: str
    samples: int
    a: float
    b: float
    difference: Interval


def units(records: Records, unit: str = "sample_id") -> dict[Hashable, list[Mapping[str, Any]]]:
    """``records`` grouped by their ``unit`` field (the benchmark's scoring unit), in first-seen order."""
    grouped: dict[Hashable, list[Mapping[str, Any]]] = {}
    for record in records:
        if unit not in record:
            raise KeyError(f"a record has no {unit!r} field to resample by: {sorted(record)}")
        grouped.setdefault(record[unit], []).append(record)
    return grouped


def _draw(groups: Sequence[list[Mapping[str, Any]]], picks: Sequence[int], unit: str) -> list[dict[str, Any]]:
    """The records of the drawn units; each copy of a unit drawn twice gets ids of its own, so that scores which
    group by the unit (MME's image pairs) see two units, not one with twice the questions."""
    drawn: list[dict[str, Any]] = []
    for copy, pick in enumerate(picks):
        for record in groups[pick]:
            renamed = {**record, unit: f"{record[unit]}~{copy}"}
            if unit != "sample_id" and "sample_id" in record:
                renamed["sample_id"] = f"{record['sample_id']}~{copy}"
            drawn.append(renamed)
    return drawn


def _percentiles(values: Sequence[float], level: float) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``values`` (linear interpolation)."""
    ordered = sorted(values)
    last = len(ordered) - 1

    def quantile(q: float) -> float:
        position = q * last
        below = int(position)
        above = min(below + 1, last)
        return ordered[below] + (ordered[above] - ordered[below]) * (position - below)

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def bootstrap_interval(
    records: Records,
    score: ScoreFunction,
    metric: str,
    unit: str = "sample_id",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """The ``level`` bootstrap interval of ``score(records)[metric]`` over resampled scoring units.

    Args:
        records: the scored prediction records of one job.
        score: the benchmark's score function (``Benchmark.score``).
        metric: the metric to bound (the benchmark's primary metric).
        unit: the record field naming the scoring unit (``Benchmark.bootstrap_unit``).
    """
    if not records:
        raise ValueError("no records to bootstrap")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples={resamples} must be >= 1 and level={level} in (0, 1)")
    groups = list(units(records, unit).values())
    rng = random.Random(seed)
    replicates = [
        score(_draw(groups, [rng.randrange(len(groups)) for _ in groups], unit))[metric] for _ in range(resamples)
    ]
    low, high = _percentiles(replicates, level)
    return Interval(score(records)[metric], low, high, level, resamples)


def paired_difference(
    records_a: Records,
    records_b: Records,
    score: ScoreFunction,
    metric: str,
    unit: str = "sample_id",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> PairedDifference:
    """``b - a`` on the scoring units both jobs predicted, each replicate drawing the same units for both jobs.

    Pairing removes the spread that comes from which samples were drawn: two methods that fail on the same hard
    samples get a narrow interval around their true gap, where two separate intervals would overlap.
    """
    groups_a, groups_b = units(records_a, unit), units(records_b, unit)
    shared = [key for key in groups_a if key in groups_b]
    if not shared:
        raise ValueError(f"the two jobs share no {unit!r}: nothing to compare")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples={resamples} must be >= 1 and level={level} in (0, 1)")
    paired_a = [groups_a[key] for key in shared]
    paired_b = [groups_b[key] for key in shared]
    rng = random.Random(seed)
    replicates = []
    for _ in range(resamples):
        picks = [rng.randrange(len(shared)) for _ in shared]
        replicates.append(score(_draw(paired_b, picks, unit))[metric] - score(_draw(paired_a, picks, unit))[metric])
    a = score([record for group in paired_a for record in group])[metric]
    b = score([record for group in paired_b for record in group])[metric]
    low, high = _percentiles(replicates, level)
    return PairedDifference(metric, len(shared), a, b, Interval(b - a, low, high, level, resamples))
