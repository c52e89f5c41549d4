"""Shared fixtures for adapter tests: pipelines and small real-looking images."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from types import ModuleType

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from fopru.components import CONFIG_DIR, choices, load
from fopru.layout import Budget
from fopru.models.base import TargetModel
from fopru.models.loading import TINY_PREFIX
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


#: Every tiny model registered in conf/model/ (``tiny_*.yaml``): the families the contract tests run on.
TINY_MODELS = [name for name in choices("model") if name.startswith("tiny_")]

#: Language-model depth of the deepened tiny families: the tiny models have 2 layers, 4 let in-LLM methods (PyramidDrop,
#: the method presets' boundaries) have several stages.
DEPTH = 4


def deepen(adapter: TargetModel, depth: int = DEPTH) -> TargetModel:
    """A copy of ``adapter`` whose language model has ``depth`` layers: the tiny weights where they exist (vision
    tower, projector, embeddings, first layers), seeded random weights for the added layers."""
    config = copy.deepcopy(adapter.model.config)
    text = config.get_text_config()
    text.num_hidden_layers = depth
    if getattr(text, "layer_types", None):
        text.layer_types = [text.layer_types[0]] * depth
    torch.manual_seed(0)
    model = type(adapter.model)(config).eval()
    missing, unexpected = model.load_state_dict(adapter.model.state_dict(), strict=False)
    assert not unexpected and all(".layers.2." in name or ".layers.3." in name for name in missing)
    deeper = copy.copy(adapter)
    deeper._model = model
    return deeper


@pytest.fixture(scope="module", params=TINY_MODELS)
def deep_family(request: pytest.FixtureRequest) -> tuple[str, TargetModel]:
    """Every tiny family, loaded from its registered config and deepened to :data:`DEPTH` layers."""
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / f"{request.param}.yaml"))
    assert isinstance(built, TargetModel)
    built.load()
    return request.param, deepen(built)


def fixture_module(name: str) -> ModuleType:
    """The fixture module behind ``conf/model/<name>.yaml``'s ``tiny:<fixture>`` checkpoint."""
    checkpoint = str(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml").checkpoint)
    assert checkpoint.startswith(TINY_PREFIX), f"{name} is not a tiny fixture: {checkpoint}"
    return importlib.import_module(f"fopru.models.tiny.{checkpoint.removeprefix(TINY_PREFIX)}")


def example_batch(name: str, adapter: TargetModel, samples: list[int]) -> Mapping[str, torch.Tensor]:
    """The tiny fixture's example samples (its ``EXAMPLE_PROMPTS`` and ``EXAMPLE_SIZES``), prepared as a batch.

    Sample ``s`` is an image drawn with seed ``s`` at the size of example ``s % 2``, with that example's prompt:
    samples past the fixture's two are new images of known sizes."""
    module = fixture_module(name)
    sizes, prompts = module.EXAMPLE_SIZES, module.EXAMPLE_PROMPTS
    images = [make_image(seed, *sizes[seed % len(sizes)]) for seed in samples]
    return adapter.prepare(images, [prompts[seed % len(prompts)] for seed in samples])
