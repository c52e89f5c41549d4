"""The latency front respects the measurement noise: costs whose interquartile ranges overlap count as equal."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fopru.eval.result import Latency, RunResult
from fopru.pareto import front_members, pareto_front
from fopru.pareto.fronts import noisy_pareto_front

Spread = tuple[float, float] | None


@pytest.mark.parametrize(
    ("points", "spreads", "front"),
    [
        # Two identical keep=1.0 jobs timed 37% apart, ranges overlapping: one point, the more accurate.
        ([(0.100, 0.90), (0.137, 0.91)], [(0.09, 0.15), (0.10, 0.16)], [1]),
        # The same medians with exact costs: the cheap one trades accuracy, both on the front.
        ([(0.100, 0.90), (0.137, 0.91)], [None, None], [0, 1]),
        # Clearly cheaper (ranges apart) and a little less accurate: both on the front.
        ([(0.050, 0.80), (0.137, 0.91)], [(0.045, 0.055), (0.10, 0.16)], [0, 1]),
        # A cheaper point within the noise and less accurate is dominated; one clearly cheaper stays.
        ([(0.02, 0.5), (0.11, 0.88), (0.12, 0.90)], [(0.019, 0.021), (0.10, 0.13), (0.11, 0.13)], [0, 2]),
        # Equal accuracy within the noise: the lower median is kept.
        ([(0.12, 0.9), (0.11, 0.9)], [(0.10, 0.13), (0.10, 0.12)], [1]),
        # NaN never on the front.
        ([(math.nan, 0.9), (0.1, 0.5)], [None, (0.09, 0.11)], [1]),
    ],
)
def test_noisy_front_by_hand(points: list[tuple[float, float]], spreads: list[Spread], front: list[int]) -> None:
    assert noisy_pareto_front(points, spreads) == front


values = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])


@given(st.lists(st.tuples(values, values), max_size=12))
def test_without_noise_it_is_the_exact_front(points: list[tuple[float, float]]) -> None:
    assert noisy_pareto_front(points, [None] * len(points)) == pareto_front(points)


def timed(total: float, low: float, high: float, accuracy: float, keep: float) -> RunResult:
    return RunResult(
        group="g", model="mini_llava", data="easyvqa", strategy="rank", significance="focal", reorder="original",
        keep=keep, keep_tokens=None, samples=10, kept_tokens=64.0, metrics={"accuracy": accuracy},
        primary_metric="accuracy", tflops_prefill=1.0, tflops_total=keep, peak_memory_bytes=None,
        latency=Latency(vision=0.0, pruning=0.0, prefill=0.0, decode_per_token=0.0, total=total, total_low=low,
                        total_high=high, requests=32),
        kv_cache_bytes=0.0, throughput=None, attention="sdpa", device="cpu",
    )  # fmt: skip


def test_front_flags_use_the_spread_on_latency_only() -> None:
    results = [timed(0.100, 0.09, 0.15, 0.90, 0.5), timed(0.137, 0.10, 0.16, 0.91, 1.0)]
    assert front_members(results, "latency") == [False, True]
    assert front_members(results, "tflops_total") == [True, True]  # analytic FLOPs are exact
    older = [replace(result, latency=replace(result.latency, total_low=None, total_high=None)) for result in results]
    assert front_members(older, "latency") == [True, True]  # no spread recorded: the exact rule
