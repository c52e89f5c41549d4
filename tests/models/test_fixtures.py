"""Tiny fixtures are found by name: ``tiny:<name>`` is built by ``fopru/models/tiny/<name>.py``."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR
from fopru.errors import ConfigError
from fopru.models.loading import TINY_DIR, resolve_checkpoint


def test_every_tiny_model_config_names_a_fixture_module() -> None:
    for path in sorted((CONFIG_DIR / "model").glob("tiny_*.yaml")):
        checkpoint = str(OmegaConf.load(path).checkpoint)
        assert checkpoint.startswith("tiny:"), path
        assert (TINY_DIR / f"{checkpoint.removeprefix('tiny:')}.py").is_file(), path


def test_an_unknown_tiny_checkpoint_names_the_fixtures() -> None:
    with pytest.raises(ConfigError, match=r"'tiny:nope' is not a tiny fixture; valid tiny checkpoints: \[.*'llava'"):
        resolve_checkpoint("tiny:nope")
