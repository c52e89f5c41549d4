"""One training job: build the untrained model, fit it with Lightning, save it with ``save_pretrained``."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from fopru.data.base import Benchmark
from fopru.errors import ConfigError
from fopru.eval.evaluate import job_scoped_launcher_environment, pin_ddp_children_to_this_job, provenance
from fopru.eval.tracking import ResultLogger
from fopru.models.base import TargetModel
from fopru.train.data import TrainingDataModule
from fopru.train.module import TrainingModule
from fopru.train.recipe import TrainingRecipe

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    target: TargetModel,
    benchmark: Benchmark,
    recipe: TrainingRecipe,
    result_logger: ResultLogger,
    folder: Path,
) -> Path | None:
    """Train ``target``'s untrained architecture on ``benchmark`` (a training split); returns the saved checkpoint.

    The untrained model is saved and loaded back through ``from_pretrained``, like any checkpoint. Every
    phase of the recipe is one Lightning ``fit``; every ``val_every`` steps a resumable ``lightning/<phase>/last.ckpt``
    is written (``train.resume=<run folder>`` continues from it). The trained model and processor are saved on rank 0
    only; other ranks return ``None``.
    """
    L.seed_everything(cfg.seed, workers=True)
    with tempfile.TemporaryDirectory(prefix="fopru-untrained-") as staging:
        target.build_untrained(Path(staging), cfg.seed)
        target.checkpoint = staging
        target.load()
    target.model.train()
    pin_ddp_children_to_this_job()
    # (phase, steps, batch size, questions per item): the vision phase sees each image with all its answers.
    phases: list[tuple[str, int, int, int | None]] = []
    if recipe.vision_steps:
        phases.append(("vision", recipe.vision_steps, recipe.vision_batch_size, None))
    phases.append(("language", recipe.max_steps, recipe.batch_size, recipe.max_turns))
    resume = Path(recipe.resume) if recipe.resume else None
    if resume is not None and not (resume / "lightning").is_dir():
        raise ConfigError(f"train.resume={recipe.resume!r} is not a training run folder (it has no lightning/ folder)")
    if resume is not None and (resume / "lightning" / "language" / "last.ckpt").is_file():
        phases = phases[-1:]  # the language checkpoint holds the whole model: the vision phase is done
    seconds: dict[str, float] = {}
    steps: dict[str, int] = {}
    with job_scoped_launcher_environment():
        for phase, max_steps, batch_size, max_turns in phases:
            module = TrainingModule(target.model, recipe, phase)
            datamodule = TrainingDataModule(
                benchmark, target, recipe, cfg.seed, batch_size, max_turns, text=phase == "language"
            )
            checkpoints = ModelCheckpoint(
                dirpath=folder / "lightning" / phase, save_last=True, save_top_k=0, every_n_train_steps=recipe.val_every
            )
            last = resume / "lightning" / phase / "last.ckpt" if resume is not None else None
            trainer: L.Trainer = instantiate(
                cfg.trainer,
                callbacks=[checkpoints],
                logger=result_logger.lightning_logger(
                    str(cfg.group), f"{folder.name}-{phase}", folder, job_type=f"train-{phase}"
                ),
                max_steps=max_steps,
                gradient_clip_val=recipe.gradient_clip,
                val_check_interval=min(recipe.val_every, max_steps),
                check_val_every_n_epoch=None,
                num_sanity_val_steps=0,
                log_every_n_steps=10,
                enable_checkpointing=True,
                use_distributed_sampler=True,
                **unused_parameter_tolerant(cfg.trainer),
            )
            started = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=last if last is not None and last.is_file() else None)
            seconds[phase] = time.perf_counter() - started
            steps[phase] = trainer.global_step
            # The finished phase, whatever its step count: a resumed run does not redo its last steps.
            trainer.save_checkpoint(folder / "lightning" / phase / "last.ckpt")
            final = trainer.validate(module, datamodule=datamodule, verbose=False)
            for wandb_logger in trainer.loggers:
                finish = getattr(getattr(wandb_logger, "experiment", None), "finish", None)
                if callable(finish) and trainer.global_rank == 0:
                    finish()
        if trainer.world_size > 1:
            trainer.strategy.barrier()
            torch.distributed.destroy_process_group()
    if trainer.global_rank != 0:
        return None
    output = Path(recipe.output) if recipe.output else folder / "checkpoint"
    target.model.eval()
    target.model.save_pretrained(output)
    target.processor.save_pretrained(output)
    summary: dict[str, Any] = {
        "steps": steps["language"],
        "seconds": sum(seconds.values()),
        "phases": {phase: {"steps": steps[phase], "seconds": seconds[phase]} for phase in seconds},
        "seed": cfg.seed,
        "validation": {key: float(value) for key, value in final[0].items()} if final else {},
        "recipe": OmegaConf.to_container(cfg.train, resolve=True),
        "devices": trainer.world_size,
        **provenance(),
    }
    (output / "training.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "trained %s in %.0f s; validation %s; checkpoint in %s (evaluate it with model.checkpoint=%s)",
        ", ".join(f"{phase}: {count} steps" for phase, count in steps.items()),
        summary["seconds"],
        summary["validation"],
        output,
        output,
    )
    return output


def unused_parameter_tolerant(trainer: DictConfig) -> dict[str, Any]:
    """Under DDP, let parameters go without gradients: a vision-language model has some whose outputs no loss reads
    (the vision layers after the feature layer LLaVA reads; the language model in the vision phase)."""
    if trainer.get("strategy") == "ddp":
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}
