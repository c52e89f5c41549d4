"""``run(cfg)``: what ``train_eval.py`` does with a composed config."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from fopru.components import build
from fopru.data.base import Benchmark
from fopru.errors import ConfigError
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("validate", "load")


def run(cfg: DictConfig) -> PruningPipeline:
    """Validate the configuration, build the pruning pipeline and, for ``stage=load``, load the model.

    Every user error surfaces as a :class:`ConfigError` before any model is loaded.
    """
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is not one of {list(STAGES)}")
    pipeline = PruningPipeline.from_config(cfg)
    target = build("model", cfg.model, TargetModel)
    build("data", cfg.data, Benchmark)
    target.check_positions(pipeline.reorder.positions)
    log.info("configuration:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info(
        "pipeline: significance=%s strategy=%s reorder=%s (positions=%s) budget=%s",
        type(pipeline.significance).__name__,
        type(pipeline.strategy).__name__,
        type(pipeline.reorder).__name__,
        pipeline.reorder.positions,
        pipeline.budget,
    )
    if cfg.stage == "load":
        target.load()
        parameters = sum(parameter.numel() for parameter in target.model.parameters())
        log.info("loaded %s (%s, %.1fM parameters)", target.checkpoint, type(target.model).__name__, parameters / 1e6)
    return pipeline
