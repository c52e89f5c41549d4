"""``run(cfg)``: what ``train_eval.py`` does with a composed config."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from fopru.errors import ConfigError
from fopru.pipeline import PruningPipeline

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("validate",)


def run(cfg: DictConfig) -> PruningPipeline:
    """Validate the configuration and build the pruning pipeline it describes.

    Every user error surfaces as a :class:`ConfigError` before any model is loaded.
    """
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is not one of {list(STAGES)}")
    pipeline = PruningPipeline.from_config(cfg)
    log.info("configuration:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info(
        "pipeline: significance=%s strategy=%s reorder=%s (positions=%s) budget=%s",
        type(pipeline.significance).__name__,
        type(pipeline.strategy).__name__,
        type(pipeline.reorder).__name__,
        pipeline.reorder.positions,
        pipeline.budget,
    )
    return pipeline
