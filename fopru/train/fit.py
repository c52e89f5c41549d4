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
    ``val_every`` steps a resumable ``lightning/last.ckpt`` is written (``train.resume`` continues from it). The
    trained model and processor are saved on rank 0 only; other ranks return ``None``.
    """
    L.seed_everything(cfg.seed, workers=True)
    with tempfile.TemporaryDirectory(prefix="fopru-untrained-") as staging:
        target.build_untrained(Path(staging), cfg.seed)
        target.checkpoint = staging
        target.load()
    target.model.train()
    pin_ddp_children_to_this_job()
    module = TrainingModule(target.model, recipe)
    datamodule = TrainingDataModule(benchmark, target, recipe, cfg.seed)
    checkpoints = ModelCheckpoint(
        dirpath=folder / "lightning", save_last=True, save_top_k=0, every_n_train_steps=recipe.val_every
    )
    with job_scoped_launcher_environment():
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            callbacks=[checkpoints],
            logger=result_logger.lightning_logger(str(cfg.group), folder.name, folder, job_type="train"),
            max_steps=recipe.max_steps,
            gradient_clip_val=recipe.gradient_clip,
            val_check_interval=recipe.val_every,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            enable_checkpointing=True,
            use_distributed_sampler=True,
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=recipe.resume)
        seconds = time.perf_counter() - started
        final = trainer.validate(module, datamodule=datamodule, verbose=False)
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
        "steps": trainer.global_step,
        "seconds": seconds,
        "seed": cfg.seed,
        "validation": {key: float(value) for key, value in final[0].items()} if final else {},
        "recipe": OmegaConf.to_container(cfg.train, resolve=True),
        "devices": trainer.world_size,
        **provenance(),
    }
    (output / "training.json").write_text(json.dumps(summary, indent=2))
    for wandb_logger in trainer.loggers:
        finish = getattr(getattr(wandb_logger, "experiment", None), "finish", None)
        if callable(finish):
            finish()
    log.info(
        "trained %d steps in %.0f s; validation %s; checkpoint in %s (evaluate it with model.checkpoint=%s)",
        trainer.global_step,
        seconds,
        summary["validation"],
        output,
        output,
    )
    return output
