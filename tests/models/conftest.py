"""Shared fixtures for adapter tests: pipelines and small real-looking images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fopru.components import load
from fopru.layout import Budget
from fopru.pipeline import PruningPipeline
from fopru.reorder import OriginalOrder
from fopru.reorder.base import Positions
from fopru.significance.base import SignificanceSource
from fopru.strategies import PruningStrategy


def make_pipeline(
    strategy: str = "rank",
    keep: float = 0.25,
    significance: str = "focal",
    positions: Positions = "compact",
) -> PruningPipeline:
    """A pipeline built from the registered configs, with the given budget and position mode."""
    return PruningPipeline(
        significance=load("significance", significance, SignificanceSource),
        strategy=load("strategy", strategy, PruningStrategy),
        reorder=OriginalOrder(positions=positions),
        budget=Budget(keep=keep),
    )


def make_image(seed: int, width: int = 48, height: int = 48) -> Image.Image:
    """A smooth random image (blobs, not white noise), so that attention has structure."""
    generator = np.random.default_rng(seed)
    coarse = generator.random((4, 4, 3))
    image = Image.fromarray((coarse * 255).astype("uint8")).resize((width, height), Image.Resampling.BICUBIC)
    return image
