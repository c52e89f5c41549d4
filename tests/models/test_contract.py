"""The adapter contract on every model in the registry (``conf/model/``): what holds for any family.

A new family is tested here by adding its configs (``tiny_<name>.yaml`` with a fixture in ``fopru/models/tiny/``,
and its real checkpoints' configs), without editing a test; its own file keeps only what is its own.
"""

from __future__ import annotations

import re
import time

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, choices
from fopru.errors import ConfigError
from fopru.models.base import TargetModel
from fopru.models.loading import EMBEDDED_PREFIX, TINY_PREFIX
from tests.models.conftest import TINY_MODELS, fixture_module

#: Every registered model whose checkpoint comes from the hub (not a tiny fixture, not shipped with the package).
HUB_MODELS = [
    name
    for name in choices("model")
    if not str(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml").checkpoint).startswith(
        (TINY_PREFIX, EMBEDDED_PREFIX)
    )
]


def test_the_registry_has_tiny_and_hub_models() -> None:
    assert TINY_MODELS and HUB_MODELS


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_tiny_model_has_a_fixture_with_two_example_samples(name: str) -> None:
    module = fixture_module(name)
    assert callable(module.build)
    assert len(module.EXAMPLE_PROMPTS) == len(module.EXAMPLE_SIZES) == 2


@pytest.mark.parametrize("name", HUB_MODELS)
def test_an_unreachable_hub_checkpoint_fails_fast_with_its_name(name: str) -> None:
    config = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    config.device = "cpu"
    adapter = instantiate(config)
    assert isinstance(adapter, TargetModel)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=re.escape(f"checkpoint '{config.checkpoint}' could not be reached")):
        adapter.load()
    assert time.monotonic() - started < 10
