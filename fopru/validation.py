"""Checks of a run configuration that need no model weights, each a :class:`ConfigError` naming the bad value and
the valid choices.

:func:`check_configuration` reads the composed config only (every stage, ``stage=validate`` included).
:func:`check_before_loading` runs before a stage loads weights: this machine's devices, the folders the run writes,
and what only the model's shape or the benchmark's rows rule out, read from the checkpoint's ``config.json`` and the
benchmark's split, so that a 7B checkpoint is never loaded just to report a typo.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fopru.components import CONFIG_DIR
from fopru.data.base import Benchmark
from fopru.errors import ConfigError
from fopru.eval.tracking import ResultLogger
from fopru.models.base import TargetModel, check_device
from fopru.pipeline import PruningPipeline

#: Run-level integer keys of ``conf/train_eval.yaml`` and the smallest value each accepts.
RUN_INTEGERS: dict[str, int] = {"batch_size": 1, "figure_samples": 0, "latency_samples": 0, "latency_warmup": 0}
#: Environment variables naming folders W&B writes to besides the job folder.
WANDB_FOLDERS: tuple[str, ...] = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


def config_groups() -> list[str]:
    """The config groups of ``conf/`` (its folders, Hydra's own excluded)."""
    return sorted(path.name for path in CONFIG_DIR.iterdir() if path.is_dir() and path.name != "hydra")


def run_keys() -> list[str]:
    """The run-level keys of ``conf/train_eval.yaml``."""
    root = OmegaConf.load(CONFIG_DIR / "train_eval.yaml")
    assert isinstance(root, DictConfig)
    return sorted(str(key) for key in root if key not in ("defaults", "hydra"))


def check_known_key(key: str) -> None:
    """Refuse a top-level key that is neither a run-level key nor a config group (a typo such as ``+stratgy=row``
    would otherwise be added to the config and ignored)."""
    groups, keys = config_groups(), run_keys()
    if key in groups or key in keys:
        return
    close = difflib.get_close_matches(key, [*groups, *keys], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(
        f"unknown key {key!r}{hint}: the run-level keys are {', '.join(keys)} and the config groups "
        f"{', '.join(groups)}; a group's own keys are set as <group>.<key>=<value>"
    )


def check_configuration(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> None:
    """The composed config's own checks: known top-level keys, run-level values, the trainer's device count, and
    (given Hydra's group ``choices``) a method preset contradicted by an explicit group choice."""
    for key in cfg:
        check_known_key(str(key))
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer (e.g. seed=0)")
    for key, smallest in RUN_INTEGERS.items():
        value = cfg.get(key, smallest)
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise ConfigError(f"{key}={value!r} must be an integer >= {smallest}")
    if "trainer" in cfg:
        check_trainer_devices(cfg.trainer.get("devices", "auto"))
    if choices is not None:
        check_method_preset(choices)


def check_trainer_devices(devices: Any) -> None:
    """Lightning's ``devices``: a count >= 1, -1 (all), ``auto``, or a non-empty list of device indices."""
    valid = "a count >= 1, -1 (every device), 'auto', or a list of device indices such as [0,1]"
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return
        parts = [part.strip() for part in text.strip("[]").split(",") if part.strip()]
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise ConfigError(f"trainer.devices={devices!r} is not {valid}") from None
        devices = numbers[0] if len(numbers) == 1 and "," not in text else numbers
    if isinstance(devices, bool):
        raise ConfigError(f"trainer.devices={devices!r} is not {valid}")
    if isinstance(devices, int):
        if devices == -1 or devices >= 1:
            return
        raise ConfigError(f"trainer.devices={devices} is not {valid}")
    items = list(devices) if OmegaConf.is_list(devices) or isinstance(devices, list | tuple) else None
    if items and all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in items):
        return
    raise ConfigError(f"trainer.devices={devices!r} is not {valid}")


def method_groups(method: str) -> dict[str, str]:
    """The groups a method preset ``conf/method/<method>.yaml`` sets (``{"strategy": "row", ...}``)."""
    path = CONFIG_DIR / "method" / f"{method}.yaml"
    if not path.is_file():
        return {}
    preset = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(preset, dict)
    groups: dict[str, str] = {}
    for entry in preset.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = str(key).removeprefix("override").strip().lstrip("/")
                if group in config_groups() and value is not None:
                    groups[group] = str(value)
    return groups


def check_method_preset(choices: Mapping[str, Any]) -> None:
    """Refuse a ``method=`` preset whose groups an explicit choice overrides (``method=fopru_row strategy=rank``
    would otherwise run rank and be labelled fopru_row)."""
    method = choices.get("method")
    if not method:
        return
    contradicted = [
        f"{group}={choices.get(group)}"
        for group, option in method_groups(str(method)).items()
        if choices.get(group) is not None and str(choices.get(group)) != option
    ]
    if contradicted:
        sets = " ".join(f"{group}={option}" for group, option in method_groups(str(method)).items())
        raise ConfigError(
            f"method={method} sets {sets}, but {' '.join(contradicted)} was chosen too: drop method= to run the "
            f"groups you chose, or drop {' '.join(item.split('=')[0] + '=' for item in contradicted)} to run {method}"
        )


def check_writable(folder: Path, key: str) -> None:
    """Refuse ``folder`` when it, or the nearest existing folder above it, cannot hold a new file (tried for real,
    since permission bits say nothing to root, and a path may run through a file)."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={str(folder)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".fopru-write-test-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"{key}={str(folder)!r} is not writable ({error.strerror or error} in {str(existing)!r}): choose a "
            f"folder you can write to"
        ) from None


def wandb_writes(result_logger: ResultLogger) -> bool:
    """Whether the job will write a W&B run (its mode, or ``WANDB_MODE`` when W&B is not disabled in the config)."""
    if result_logger.mode == "disabled":
        return False
    return os.environ.get("WANDB_MODE", result_logger.mode) != "disabled"


def check_trainer_accelerator(trainer: DictConfig) -> None:
    """Refuse a GPU trainer on a machine without CUDA (Lightning would say so only after the model has loaded)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} but this machine has no CUDA device; use trainer=cpu "
            "(or trainer=ddp trainer.accelerator=cpu for several CPU processes)"
        )


def check_before_loading(
    cfg: DictConfig,
    pipeline: PruningPipeline,
    target: TargetModel,
    benchmark: Benchmark,
    result_logger: ResultLogger,
    folder: Path,
    results_root: Path,
) -> None:
    """What a stage that loads weights checks first: devices, writable folders, the checkpoint's files and config,
    and the benchmark's samples (``data.limit``, a hub data set that cannot be reached)."""
    check_device(target.device)
    if "trainer" in cfg:
        check_trainer_accelerator(cfg.trainer)
    check_writable(folder, "hydra.run.dir")
    if cfg.stage == "eval":
        check_writable(results_root, "results_dir")
    if cfg.stage in ("eval", "train") and wandb_writes(result_logger):
        check_writable(folder / "wandb", "the W&B folder")
        for variable in WANDB_FOLDERS:
            if os.environ.get(variable):
                check_writable(Path(os.environ[variable]), variable)
    if cfg.stage in ("eval", "load"):
        target.check_against_config(pipeline)
    if cfg.stage == "eval":
        benchmark.load()
