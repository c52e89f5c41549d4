"""``run(cfg)``: what ``train_eval.py`` does with a composed config."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf, open_dict

from fopru.components import build
from fopru.console import quiet_loggers
from fopru.data.base import Benchmark
from fopru.errors import ConfigError
from fopru.eval.result import RunResult
from fopru.eval.tracking import ResultLogger
from fopru.jobs import sweep_name
from fopru.models.base import TargetModel
from fopru.models.shared_prefix import shared_prefix_switch
from fopru.models.vision_cache import VisionCache
from fopru.pareto.units import format_flops
from fopru.pipeline import PruningPipeline
from fopru.train.recipe import TrainingRecipe
from fopru.validation import check_before_loading, check_configuration

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("validate", "load", "eval", "train")


def run(cfg: DictConfig) -> PruningPipeline:
    """Validate the configuration, build the pruning pipeline, then run the stage.

    ``validate``: nothing more; ``load``: load the model; ``eval``: evaluate the pruned model on the benchmark;
    ``train``: train the model's untrained architecture on the benchmark's training split (``conf/train``).

    Every user error surfaces as a :class:`ConfigError` before any model is loaded: the config's own checks in
    every stage, and before a stage that loads weights, the checks against this machine, the folders it writes, the
    checkpoint's config and the benchmark's samples (:mod:`fopru.validation`).
    """
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is not one of {list(STAGES)}")
    check_configuration(cfg, HydraConfig.get().runtime.choices if HydraConfig.initialized() else None)
    pipeline = PruningPipeline.from_config(cfg)
    target = build("model", cfg.model, TargetModel)
    if "cache" in cfg:
        target.vision_cache = build("cache", cfg.cache, VisionCache)
    target.shared_prefix = shared_prefix_switch(cfg.get("shared_prefix", True))
    benchmark = build("data", cfg.data, Benchmark)
    result_logger = build("logger", cfg.logger, ResultLogger)
    target.check_positions(pipeline.reorder.positions)
    folder = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    if cfg.stage != "validate":
        check_before_loading(cfg, pipeline, target, benchmark, result_logger, folder, results_root(cfg))
    log.debug("configuration:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.debug(
        "pipeline: significance=%r strategy=%r reorder=%r llm_pruning=%r budget=%s",
        pipeline.significance,
        pipeline.strategy,
        pipeline.reorder,
        pipeline.llm_pruning,
        pipeline.budget,
    )
    if cfg.stage in ("eval", "train"):
        with open_dict(cfg):
            cfg.group = cfg.group or default_group()
    # Lightning (with torch._dynamo and torchmetrics, about half of a process's start-up) is imported only by the
    # stages that run a Trainer: validate and load never pay for it.
    if cfg.stage == "train":
        from fopru.train.fit import train

        quiet_loggers()  # Lightning, just imported, has set its loggers' levels
        recipe = build("train", cfg.train, TrainingRecipe)
        train(cfg, target, benchmark.train_split(), recipe, result_logger, folder)
    if cfg.stage == "eval":
        from fopru.eval.evaluate import evaluate
        from fopru.eval.kept import record_kept_patches

        quiet_loggers()  # Lightning, just imported, has set its loggers' levels
        result = evaluate(cfg, pipeline, target, benchmark)
        if result is not None:  # rank 0
            result.save(folder)
            record_kept_patches(target, pipeline, benchmark, folder, cfg.figure_samples)
            result_logger.log(result, cfg, folder, name=folder.name)
            log.info(job_line(result, folder))
    if cfg.stage == "load":
        target.load()
        parameters = sum(parameter.numel() for parameter in target.model.parameters())
        log.info("loaded %s (%s, %.1fM parameters)", target.checkpoint, type(target.model).__name__, parameters / 1e6)
    return pipeline


def job_line(result: RunResult, folder: Path) -> str:
    """The one console line of a finished job: what varies (its overrides), the primary metric with its 95%
    interval, the kept tokens, the FLOPs and where the results are."""
    varies = " ".join(result.overrides) or "defaults"
    return (
        f"{varies} | {result.data} {result.primary_metric} {result.accuracy_interval} | "
        f"{result.kept_tokens:.1f} visual tokens | {format_flops(result.tflops_total)} per sample | "
        f"{shown_path(folder)} (predictions in {shown_path(Path(result.results_folder or folder))})"
    )


def shown_path(path: Path) -> str:
    """``path`` relative to the folder the command was started in, when it lies below it."""
    start = Path(get_original_cwd()) if HydraConfig.initialized() else Path.cwd()
    try:
        return str(Path(path).resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def results_root(cfg: DictConfig) -> Path:
    """``results_dir``, relative to the folder the command was started in."""
    root = Path(str(cfg.results_dir)).expanduser()
    if not root.is_absolute() and HydraConfig.initialized():
        root = Path(get_original_cwd()) / root
    return root


def default_group() -> str:
    """Inside ``-m``, the sweep's name (all its jobs share it): what varies across its jobs, else the sweep folder's
    name (:func:`fopru.jobs.sweep_name`); else ``single``."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep_name(Path(HydraConfig.get().sweep.dir))
    return "single"
