"""What ``train_eval.py`` does around :func:`fopru.run.run`: command-line checks before Hydra composes, and how a
job ends (one paragraph and exit code 2 for bad input; inside a sweep, a failed job is recorded and the sweep goes
on)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig

from fopru.components import choices
from fopru.errors import ConfigError
from fopru.jobs import JobFailure
from fopru.run import run
from fopru.validation import check_known_key, check_writable, config_groups

log = logging.getLogger(__name__)

#: Hydra's output folders, which Hydra creates before the job starts, so they are checked on the command line.
HYDRA_FOLDERS: tuple[str, ...] = ("hydra.run.dir", "hydra.sweep.dir")
PREFIX = "fopru: configuration error: "


def report(error: ConfigError) -> None:
    """Print ``error`` as the one paragraph a user sees."""
    print(PREFIX + " ".join(str(error).split()), file=sys.stderr)


def check_command_line(arguments: Sequence[str]) -> None:
    """Refuse, before Hydra composes anything, an unknown group option (``strategy=rnak``, also inside a sweep
    list), an unknown top-level key (``+stratgy=row``, ``stratgy=row``) and a Hydra output folder that cannot be
    written. Grammar errors and deeper keys are left to Hydra."""
    texts = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(texts)
    except Exception:  # Hydra reports grammar errors itself
        return
    groups = config_groups()
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or override.package is not None:
            continue
        if key in HYDRA_FOLDERS:
            folder = override.get_value_element_as_str().split("${", 1)[0]
            if folder:
                check_writable(Path(folder), key)
            continue
        top = key.split(".", 1)[0].split("/", 1)[0]
        if top == "hydra":
            continue
        check_known_key(top)
        if key in groups:
            check_options(key, override)


def check_options(group: str, override: Override) -> None:
    """Every option an override of ``group`` names (one, or each of a sweep's) must be a file of ``conf/<group>/``."""
    try:
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
    except Exception:  # ranges, globs: Hydra expands and checks them
        return
    valid = choices(group)
    for value in values:
        if value is not None and str(value) not in valid:
            raise ConfigError(
                f"{group}={value} is not a {group} option: valid choices (conf/{group}/) are {', '.join(valid)}"
            )


def in_sweep() -> bool:
    """Whether this job is one of a ``-m`` sweep."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig) -> JobFailure | None:
    """Run one job. Bad input ends a single run with one paragraph and exit code 2. Inside a sweep, a job that
    fails (bad input or any error, logged with its traceback) returns a :class:`JobFailure` instead, so that the
    sweep goes on with its other jobs and its summary names the failed ones."""
    try:
        run(cfg)
    except ConfigError as error:
        report(error)
        if not in_sweep():
            raise SystemExit(2) from None
        log.error("job failed: %s%s", PREFIX, error)
        return JobFailure(f"{PREFIX}{error}", config_error=True)
    except Exception as error:
        if not in_sweep():
            raise
        log.exception("job failed")
        return JobFailure(f"{type(error).__name__}: {error}", config_error=False)
    return None
