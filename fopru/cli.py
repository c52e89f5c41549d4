"""What ``train_eval.py`` does around :func:`fopru.run.run`: command-line checks before Hydra composes, and how a
job ends (one paragraph and exit code 2 for bad input; inside a sweep, a failed job is recorded and the sweep goes
on)."""

from __future__ import annotations

import difflib
import logging
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fopru.components import CONFIG_DIR, choices
from fopru.console import configure_console
from fopru.errors import ConfigError
from fopru.jobs import JobFailure, register_resolvers
from fopru.run import run
from fopru.validation import check_known_key, check_writable, config_groups

log = logging.getLogger(__name__)

#: Hydra's output folders, which Hydra creates before the job starts, so they are checked on the command line.
HYDRA_FOLDERS: tuple[str, ...] = ("hydra.run.dir", "hydra.sweep.dir")
PREFIX = "fopru: configuration error: "

register_resolvers()  # before Hydra resolves the job folder names of a sweep (conf/train_eval.yaml)


def report(error: ConfigError) -> None:
    """Print ``error`` as the one paragraph a user sees."""
    print(PREFIX + " ".join(str(error).split()), file=sys.stderr)


def check_command_line(arguments: Sequence[str]) -> None:
    """Refuse, before Hydra composes anything, an unknown group option (``strategy=rnak``, also inside a sweep
    list), an unknown top-level key (``+stratgy=row``, ``stratgy=row``) and a Hydra output folder that cannot be
    written, then composes the first job to refuse a misspelt nested key (``model.devcie=cpu``). Grammar errors are
    left to Hydra."""
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
    check_composition(overrides)


def first_job(overrides: Sequence[Override]) -> list[str] | None:
    """The overrides of a sweep's first job (each sweep replaced by its first value); ``None`` when a sweep cannot
    be expanded here (globs)."""
    job = []
    for override in overrides:
        if override.is_sweep_override():
            try:
                value = next(iter(override.sweep_string_iterator()))
            except Exception:
                return None
            job.append(f"{override.get_key_element()}={value}")
        else:
            job.append(override.input_line or "")
    return job


def check_composition(overrides: Sequence[Override]) -> None:
    """Compose the first job as Hydra will; a key that is not in the config becomes a :class:`ConfigError` naming
    the keys that are."""
    job = first_job(overrides)
    if job is None:
        return
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name="train_eval", overrides=job)
    except ConfigCompositionException as error:
        missing = re.search(r"Could not override '([^']+)'", str(error))
        if missing is None:
            raise ConfigError(" ".join(str(error).split())) from None
        key = missing.group(1)
        parent, _, leaf = key.rpartition(".")
        rest = [item for item in job if item.split("=", 1)[0].lstrip("+~") != key]
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                node = OmegaConf.select(compose(config_name="train_eval", overrides=rest), parent) if parent else None
        except Exception:  # another override is wrong too: Hydra's message is all there is to say
            raise ConfigError(" ".join(str(error).split())) from None
        keys = sorted(str(name) for name in node) if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(leaf, keys, n=1)
        hint = f" (did you mean {parent}.{close[0]}?)" if close else ""
        raise ConfigError(
            f"{key} is not a key of {parent or 'the configuration'}{hint}: its keys are {', '.join(keys)}"
        ) from None


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


class _InterruptWatch:
    """Remembers a Ctrl-C (SIGINT) while a job runs. Libraries may turn the KeyboardInterrupt into an ordinary
    exception (a worker or thread that dies of it, a loop that reports it as its own error); a job that fails after
    a Ctrl-C is an interrupted job, and must stop the sweep rather than let it go on with the next job."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt


def run_job(cfg: DictConfig) -> JobFailure | None:
    """Run one job. Bad input ends a single run with one paragraph and exit code 2. Inside a sweep, a job that
    fails (bad input or any error, logged with its traceback) returns a :class:`JobFailure` instead, so that the
    sweep goes on with its other jobs and its summary names the failed ones; a Ctrl-C stops the sweep."""
    configure_console(bool(cfg.get("verbose", False)))
    watch = _InterruptWatch()
    previous = signal.signal(signal.SIGINT, watch) if _main_thread() else None
    try:
        return _run_job(cfg, watch)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _run_job(cfg: DictConfig, watch: _InterruptWatch) -> JobFailure | None:
    try:
        run(cfg)
    except ConfigError as error:
        report(error)
        if not in_sweep():
            raise SystemExit(2) from None
        log.error("job failed: %s%s", PREFIX, error)
        return JobFailure(f"{PREFIX}{error}", config_error=True)
    except Exception as error:
        if watch.seen:
            raise KeyboardInterrupt from error
        if not in_sweep():
            raise
        log.exception("job failed")
        return JobFailure(f"{type(error).__name__}: {error}", config_error=False)
    return None
