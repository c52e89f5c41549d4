"""Sampling uncertainty of a benchmark score: bootstrap intervals over samples, and paired differences of two jobs.

A score on a ``data.limit`` subset is an estimate; these say how far it could move with another draw of samples.
Each bootstrap replicate draws the benchmark's scoring units (a sample, or MME's two-question image) with
replacement and recomputes the benchmark's own metric on them through its score function, so any metric works
(accuracy, POPE F1, MME perception totals), not only means of per-sample correctness. The interval is the
percentile interval of the replicates. Resampling is seeded: the same records always give the same interval.

Recomputing the metric on copies of every record for each of 1000 replicates is slow on a full split, so the
replicates take a shortcut where it gives the same numbers (:class:`Resampler`): a metric that is the mean of its
units' own scores (accuracy, VQA soft accuracy) is averaged from the per-unit scores of the drawn units, and a
benchmark that scores per sample reads the drawn records as they are; only scores that group records by their
unit (MME's image pairs, MMBench's circular variants) get renamed copies. Each shortcut is checked against the full
recomputation on the records and on the first replicates before it is used, so it never changes an interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


#: Replicates recomputed in full to check a shortcut before it replaces the recomputation.
CHECKED_REPLICATES = 3


class Resampler:
    """The metric of drawn scoring units, by the fastest route that gives the full recomputation's value
    (see the module docstring)."""

    def __init__(self, groups: Sequence[list[Mapping[str, Any]]], score: ScoreFunction, metric: str, unit: str):
        self.groups, self.score, self.metric, self.unit = groups, score, metric, unit
        self.unit_scores = self._unit_scores()
        self.unit_array = None if self.unit_scores is None else np.array(self.unit_scores, dtype=np.float64)
        self.by_reference = unit == "sample_id"
        self.checks_left = CHECKED_REPLICATES

    def _unit_scores(self) -> list[float] | None:
        """Each unit's own metric, when the metric over all units is their mean; else ``None``."""
        try:
            scores = [float(self.score(group)[self.metric]) for group in self.groups]
        except Exception:  # a score undefined on a single unit (an F1 without positives): no shortcut
            return None
        every = float(self.score([record for group in self.groups for record in group])[self.metric])
        return scores if _mean(scores) == every else None

    def full(self, picks: np.ndarray) -> float:
        """The metric recomputed on renamed copies of the drawn records (what every route must equal)."""
        return float(self.score(_draw(self.groups, picks.tolist(), self.unit))[self.metric])

    def fast(self, picks: np.ndarray) -> float | None:
        if self.unit_array is not None:
            return _mean(self.unit_array[picks].tolist())
        if self.by_reference:
            groups = self.groups
            return float(self.score([record for pick in picks.tolist() for record in groups[pick]])[self.metric])
        return None

    def __call__(self, picks: np.ndarray) -> float:
        value = self.fast(picks)
        if value is None:
            return self.full(picks)
        if self.checks_left > 0:
            self.checks_left -= 1
            full = self.full(picks)
            if full != value:  # the shortcut does not hold for this score: recompute from now on
                self.unit_array, self.by_reference, self.checks_left = None, False, 0
                return full
        return value


def draws(seed: int, population: int, size: int, replicates: int) -> np.ndarray:
    """A (replicates, size) int64 array of picks from ``range(population)``: exactly what ``replicates * size``
    calls of ``random.Random(seed).randrange(population)`` return, row by row, drawn in bulk.

    CPython's ``randrange(n)`` takes the top ``n.bit_length()`` bits of one 32-bit Mersenne Twister word per try and
    rejects values >= n; ``getrandbits(32 * m)`` returns the next m words, first word lowest. The bulk route reads
    the same words; its first picks are checked against ``randrange`` itself, and the slow route is taken on any
    mismatch (another Python's generator).
    """
    if population < 1:
        raise ValueError(f"cannot draw from {population} units")
    needed = size * replicates
    bits = population.bit_length()
    rng = random.Random(seed)
    if bits <= 32:
        parts, found = [], 0
        while found < needed:
            # Each try is accepted with probability population / 2**bits > 1/2: ask for a little more than expected.
            words = int((needed - found) * 2**bits / population * 1.02) + 64
            raw = np.frombuffer(rng.getrandbits(32 * words).to_bytes(4 * words, "little"), dtype="<u4")
            values = raw >> np.uint32(32 - bits)
            parts.append(values[values < population])
            found += parts[-1].shape[0]
        picks = np.concatenate(parts)[:needed].astype(np.int64)
        reference = random.Random(seed)
        if [reference.randrange(population) for _ in range(min(needed, 64))] == picks[:64].tolist():
            return picks.reshape(replicates, size)
    reference = random.Random(seed)
    slow = [reference.randrange(population) for _ in range(needed)]
    return np.array(slow, dtype=np.int64).reshape(replicates, size)


def _mean(values: Sequence[float]) -> float:
    """The correctly rounded mean (``statistics.fmean``'s), independent of the order of ``values``."""
    return math.fsum(values) / len(values)


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


def _check_settings(resamples: int, level: float) -> None:
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples={resamples} must be >= 1 and level={level} in (0, 1)")


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
    _check_settings(resamples, level)
    groups = list(units(records, unit).values())
    replicate = Resampler(groups, score, metric, unit)
    replicates = [replicate(picks) for picks in draws(seed, len(groups), len(groups), resamples)]
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
    _check_settings(resamples, level)
    paired_a = [groups_a[key] for key in shared]
    paired_b = [groups_b[key] for key in shared]
    replicate_a, replicate_b = Resampler(paired_a, score, metric, unit), Resampler(paired_b, score, metric, unit)
    replicates = [replicate_b(picks) - replicate_a(picks) for picks in draws(seed, len(shared), len(shared), resamples)]
    a = score([record for group in paired_a for record in group])[metric]
    b = score([record for group in paired_b for record in group])[metric]
    low, high = _percentiles(replicates, level)
    return PairedDifference(metric, len(shared), a, b, Interval(b - a, low, high, level, resamples))
