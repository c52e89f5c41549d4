"""Bootstrap intervals and paired differences against hand-worked and textbook cases."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from fopru.data.metrics import mme_scores
from fopru.eval.uncertainty import bootstrap_interval, paired_difference


def accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The share of records with ``correct``: the mean the normal approximation describes."""
    return {"accuracy": statistics.fmean(float(record["correct"]) for record in records)}


def records_of(outcomes: Sequence[bool]) -> list[dict[str, Any]]:
    return [{"sample_id": f"s{i}", "correct": outcome} for i, outcome in enumerate(outcomes)]


def test_every_sample_right_gives_a_zero_width_interval() -> None:
    interval = bootstrap_interval(records_of([True] * 30), accuracy, "accuracy", resamples=200)
    assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_the_interval_of_a_proportion_matches_the_normal_approximation() -> None:
    # 280 of 400 right: p = 0.7, standard error sqrt(p (1 - p) / n) = 0.0229, so 95% is about 0.655 .. 0.745.
    outcomes = [i % 10 < 7 for i in range(400)]
    interval = bootstrap_interval(records_of(outcomes), accuracy, "accuracy", resamples=2000, seed=1)
    half = 1.96 * math.sqrt(0.7 * 0.3 / 400)
    assert interval.value == pytest.approx(0.7)
    assert interval.low == pytest.approx(0.7 - half, abs=0.008)
    assert interval.high == pytest.approx(0.7 + half, abs=0.008)


def test_two_samples_give_the_hand_worked_bootstrap_distribution() -> None:
    # One right, one wrong: a resample of two is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% percentiles are 0 and 1, and about half of the replicates sit at 0.5.
    interval = bootstrap_interval(records_of([True, False]), accuracy, "accuracy", resamples=1000)
    assert (interval.value, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_the_interval_is_seeded() -> None:
    records = records_of([i % 3 == 0 for i in range(60)])
    first = bootstrap_interval(records, accuracy, "accuracy", resamples=300, seed=7)
    assert bootstrap_interval(records, accuracy, "accuracy", resamples=300, seed=7) == first
    assert bootstrap_interval(records, accuracy, "accuracy", resamples=300, seed=8) != first


def test_paired_identical_jobs_differ_by_exactly_zero() -> None:
    records = records_of([i % 4 != 0 for i in range(50)])
    compared = paired_difference(records, list(reversed(records)), accuracy, "accuracy", resamples=300)
    assert compared.samples == 50
    assert (compared.difference.value, compared.difference.low, compared.difference.high) == (0.0, 0.0, 0.0)


def test_a_job_right_on_every_sample_the_other_gets_right_plus_some_is_never_worse() -> None:
    # b is right wherever a is, and on 10 more of 100 samples: every paired replicate has b - a >= 0, while the two
    # jobs' separate intervals overlap (sampling noise that pairing removes).
    a = records_of([i < 50 for i in range(100)])
    b = records_of([i < 60 for i in range(100)])
    compared = paired_difference(a, b, accuracy, "accuracy", resamples=1000)
    assert compared.difference.value == pytest.approx(0.1)
    assert 0.0 < compared.difference.low < 0.1 < compared.difference.high
    alone_a = bootstrap_interval(a, accuracy, "accuracy")
    alone_b = bootstrap_interval(b, accuracy, "accuracy")
    assert alone_b.low < alone_a.high  # overlapping separate intervals


def test_only_shared_samples_are_compared() -> None:
    a = records_of([True, True, False, False])
    b = [*records_of([True, True, False]), {"sample_id": "extra", "correct": True}]
    compared = paired_difference(a, b, accuracy, "accuracy", resamples=100)
    assert compared.samples == 3
    assert (compared.a, compared.b) == (pytest.approx(2 / 3), pytest.approx(2 / 3))


def mme_pair(image: str, category: str, first_right: bool, second_right: bool) -> list[dict[str, Any]]:
    return [
        {"sample_id": f"{image}#0", "question_id": image, "category": category, "answer": "Yes",
         "prediction": "Yes" if first_right else "No"},
        {"sample_id": f"{image}#1", "question_id": image, "category": category, "answer": "No",
         "prediction": "No" if second_right else "Yes"},
    ]  # fmt: skip


def test_mme_images_are_resampled_whole_and_duplicates_stay_separate_images() -> None:
    # mme_scores refuses an image with other than two questions: drawing an image twice must make two images.
    records = [record for i in range(20) for record in mme_pair(f"img{i}", "color", True, True)]
    interval = bootstrap_interval(records, mme_scores, "mme_perception", unit="question_id", resamples=100)
    assert (interval.value, interval.low, interval.high) == (200.0, 200.0, 200.0)
    mixed = [record for i in range(20) for record in mme_pair(f"img{i}", "color", True, i % 2 == 0)]
    spread = bootstrap_interval(mixed, mme_scores, "mme_perception", unit="question_id", resamples=300)
    # 30 of 40 questions right (75) and 10 of 20 images with both (50): a score of 125.
    assert spread.value == pytest.approx(125.0)
    assert spread.low < 125.0 < spread.high


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no records"):
        bootstrap_interval([], accuracy, "accuracy")
    with pytest.raises(ValueError, match="share no"):
        paired_difference(records_of([True]), [{"sample_id": "other", "correct": True}], accuracy, "accuracy")
    with pytest.raises(KeyError, match="question_id"):
        bootstrap_interval(records_of([True]), accuracy, "accuracy", unit="question_id")
