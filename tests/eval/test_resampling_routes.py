"""The bootstrap's shortcuts (per-unit means, records read by reference) give exactly the intervals of the full
recomputation on renamed copies, which is re-expressed here step by step."""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from fopru.data.metrics import mme_scores
from fopru.eval.uncertainty import bootstrap_interval, paired_difference

Records = Sequence[Mapping[str, Any]]


def reference_interval(records: Records, score: Any, metric: str, unit: str, resamples: int) -> tuple[float, float]:
    """Every replicate recomputed on copies of the drawn records, each copy of a unit renamed; percentile interval
    with linear interpolation (the algorithm as first written)."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(record[unit], []).append(record)
    units = list(groups.values())
    rng = random.Random(0)
    values = []
    for _ in range(resamples):
        drawn = []
        for copy, pick in enumerate([rng.randrange(len(units)) for _ in units]):
            for record in units[pick]:
                renamed = {**record, unit: f"{record[unit]}~{copy}"}
                if unit != "sample_id":
                    renamed["sample_id"] = f"{record['sample_id']}~{copy}"
                drawn.append(renamed)
        values.append(score(drawn)[metric])
    ordered = sorted(values)
    last = len(ordered) - 1

    def quantile(q: float) -> float:
        below = int(q * last)
        above = min(below + 1, last)
        return ordered[below] + (ordered[above] - ordered[below]) * (q * last - below)

    return quantile((1 - 0.95) / 2), quantile((1 + 0.95) / 2)


class Counted:
    """A score function that counts its calls."""

    def __init__(self, score: Any) -> None:
        self.score, self.calls = score, 0

    def __call__(self, records: Records) -> dict[str, float]:
        self.calls += 1
        return self.score(records)


def accuracy(records: Records) -> dict[str, float]:
    return {"accuracy": statistics.fmean(float(record["correct"]) for record in records)}


def soft_accuracy(records: Records) -> dict[str, float]:
    return {"accuracy": sum(min(1.0, record["matches"] / 3) for record in records) / len(records)}


def f1(records: Records) -> dict[str, float]:
    hits = sum(record["answer"] == record["prediction"] == "yes" for record in records)
    said_yes = sum(record["prediction"] == "yes" for record in records)
    is_yes = sum(record["answer"] == "yes" for record in records)
    return {"f1": 2 * hits / (said_yes + is_yes) if said_yes + is_yes else 0.0}


def by_sample_id(records: Records) -> dict[str, float]:
    """A score that counts distinct sample ids: reading duplicates by reference would change it."""
    return {"distinct": len({record["sample_id"] for record in records}) / len(records)}


generator = random.Random(7)
SAMPLES = [
    {"sample_id": f"s{i}", "correct": generator.random() < 0.7, "matches": generator.randrange(5),
     "answer": generator.choice(["yes", "no"]), "prediction": generator.choice(["yes", "no"])}
    for i in range(60)
]  # fmt: skip


@pytest.mark.parametrize(
    ("score", "metric"), [(accuracy, "accuracy"), (soft_accuracy, "accuracy"), (f1, "f1"), (by_sample_id, "distinct")]
)
def test_per_sample_scores_give_the_reference_interval(score: Any, metric: str) -> None:
    interval = bootstrap_interval(SAMPLES, score, metric, resamples=200)
    assert (interval.low, interval.high) == reference_interval(SAMPLES, score, metric, "sample_id", 200)


def test_grouped_scores_give_the_reference_interval() -> None:
    records = []
    for image in range(25):
        for question, answer in enumerate(("Yes", "No")):
            right = generator.random() < 0.75
            records.append(
                {"sample_id": f"img{image}#{question}", "question_id": f"img{image}", "category": "color",
                 "answer": answer, "prediction": answer if right else ("No" if answer == "Yes" else "Yes")}
            )  # fmt: skip
    interval = bootstrap_interval(records, mme_scores, "mme_perception", unit="question_id", resamples=100)
    expected = reference_interval(records, mme_scores, "mme_perception", "question_id", 100)
    assert (interval.low, interval.high) == expected


def test_a_mean_metric_is_scored_once_per_unit_not_once_per_replicate() -> None:
    counted = Counted(accuracy)
    bootstrap_interval(SAMPLES, counted, "accuracy", resamples=1000)
    # Per unit once, all units once, a few checked replicates, the value: not 1000 recomputations.
    assert counted.calls <= len(SAMPLES) + 10


def test_paired_differences_are_unchanged() -> None:
    other = [{**record, "correct": not record["correct"] if i % 5 == 0 else record["correct"]}
             for i, record in enumerate(SAMPLES)]  # fmt: skip
    difference = paired_difference(SAMPLES, other, accuracy, "accuracy", resamples=200).difference
    rng = random.Random(0)
    values = []
    for _ in range(200):
        picks = [rng.randrange(len(SAMPLES)) for _ in SAMPLES]
        values.append(
            statistics.fmean(float(other[p]["correct"]) for p in picks)
            - statistics.fmean(float(SAMPLES[p]["correct"]) for p in picks)
        )
    ordered = sorted(values)
    low = ordered[int(0.025 * 199)] + (ordered[int(0.025 * 199) + 1] - ordered[int(0.025 * 199)]) * (
        0.025 * 199 - int(0.025 * 199)
    )
    assert difference.low == pytest.approx(low, abs=1e-15)


@pytest.mark.parametrize("population", [1, 2, 3, 64, 65, 1000, 9673])
def test_bulk_draws_are_the_randrange_sequence(population: int) -> None:
    from fopru.eval.uncertainty import draws

    rng = random.Random(3)
    expected = [[rng.randrange(population) for _ in range(50)] for _ in range(7)]
    assert draws(3, population, 50, 7).tolist() == expected
