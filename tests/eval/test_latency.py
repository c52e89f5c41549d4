"""Latency: enough timed requests, their spread recorded, every image encoded afresh (the vision cache bypassed)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from fopru.components import load
from fopru.eval.evaluate import measure_latency, quartiles
from fopru.models.base import TargetModel
from fopru.models.vision_cache import VisionCache
from tests.models.conftest import make_image, make_pipeline


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0, 2.0, 3.0, 4.0, 5.0], (2.0, 4.0)), ([4.0, 1.0, 3.0, 2.0], (1.75, 3.25)), ([0.5], (0.5, 0.5))],
)
def test_quartiles_by_hand(values: list[float], expected: tuple[float, float]) -> None:
    assert quartiles(values) == pytest.approx(expected)


class TwoImages:
    """A benchmark of two samples (fewer than the timed requests: they are cycled through)."""

    max_new_tokens = 2

    def load(self) -> list[dict[str, Any]]:
        return [{"image": make_image(seed), "prompt": "what shape", "sample_id": str(seed)} for seed in range(2)]


def test_latency_times_every_request_with_the_cache_bypassed(tmp_path: Path) -> None:
    target = load("model", "tiny_llava", TargetModel).load()
    target.vision_cache = cache = VisionCache(folder=str(tmp_path))
    latency = measure_latency(target, make_pipeline(), TwoImages(), samples=7, warmup=1)  # type: ignore[arg-type]
    assert latency is not None and latency.requests == 7
    assert latency.total_low is not None and latency.total_high is not None
    assert latency.total_low <= latency.total <= latency.total_high
    assert latency.vision > 0, "each timed request encodes its image"
    assert cache.stats == type(cache.stats)(), "the cache is neither read nor written while timing"
    assert target.vision_cache is cache, "and it is back afterwards"
    assert statistics.median([latency.total_low, latency.total_high]) > 0
