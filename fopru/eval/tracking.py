"""Logging each job's result to Weights & Biases (offline by default, syncable later with ``wandb sync``)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fopru.errors import ConfigError
from fopru.eval.result import RunResult

MODES = ("offline", "online", "disabled")


class ResultLogger:
    """Where a job's :class:`RunResult` goes besides ``result.json``: one W&B run per job, grouped by sweep.

    Args:
        project: the W&B project.
        mode: ``offline`` (default: writes ``wandb/offline-run-*`` in the job folder, upload later with ``wandb
            sync``), ``online``, or ``disabled`` (no W&B at all, whatever ``WANDB_MODE`` says). Otherwise
            ``WANDB_MODE`` in the environment wins.
        entity: the W&B entity (team or user), or null for the default.
    """

    def __init__(self, project: str = "fopru", mode: str = "offline", entity: str | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"logger mode={mode!r} is not one of {list(MODES)}")
        self.project = project
        self.mode = mode
        self.entity = entity

    @property
    def effective_mode(self) -> str:
        """The mode W&B runs get: ``disabled`` when configured so (``logger=none``), else ``WANDB_MODE`` if set, else
        the configured mode."""
        if self.mode == "disabled":
            return "disabled"
        return os.environ.get("WANDB_MODE", self.mode)

    def log(self, result: RunResult, cfg: DictConfig, folder: Path, name: str) -> None:
        """One W&B run holding the job's config, its metrics and costs as summary values, and its result row."""
        mode = self.effective_mode
        if mode == "disabled":
            return
        import wandb

        run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=result.group,
            name=name,
            job_type="eval",
            mode=mode,  # type: ignore[arg-type]
            dir=str(folder),
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            reinit="finish_previous",
        )
        try:
            row = flatten(asdict(result))
            run.summary.update(row)
            run.log({key: value for key, value in row.items() if isinstance(value, int | float)})
        finally:
            run.finish()

    def lightning_logger(self, group: str, name: str, folder: Path, job_type: str) -> Any:
        """A Lightning ``WandbLogger`` with these settings (training curves), or ``False`` when W&B is disabled."""
        mode = self.effective_mode
        if mode == "disabled":
            return False
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            project=self.project,
            entity=self.entity,
            group=group,
            name=name,
            job_type=job_type,
            mode=mode,
            save_dir=str(folder),
        )


def logs_to_wandb(cfg: DictConfig) -> bool:
    """Whether a composed config's logger writes W&B runs (``logger=none`` never does, whatever ``WANDB_MODE`` says);
    the sweep summary follows the jobs' logger."""
    logger = cfg.get("logger") if "logger" in cfg else None
    if logger is None:
        return True
    return str(logger.get("mode", "offline")) != "disabled"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"latency": {"total": 1}}`` -> ``{"latency/total": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
