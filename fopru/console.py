"""What a job prints: one line per job by default, everything with ``verbose=true``.

The full composed config is not printed: Hydra writes it to the job folder (``.hydra/config.yaml``; ``--cfg job``
prints it without running). Third-party chatter that says nothing about the run is silenced where it is emitted:
Lightning's device and advert lines (its loggers), its warnings about ``predict`` returning nothing (fopru writes
predictions itself) and about an empty dataloader (a fully resumed job has nothing left to predict), transformers'
weight-loading bar and its ``past_key_values`` rename notice, and W&B's banner (``WANDB_SILENT``).
"""

from __future__ import annotations

import logging
import os
import warnings

#: Warnings that say nothing about a fopru run, as (message pattern, category).
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`past_key_values` is deprecated", FutureWarning),
    (r".*predict returned None", Warning),
    (r".*Total length of .* across ranks is zero", Warning),
    (r".*isinstance\(treespec, LeafSpec\)", Warning),
)
#: Loggers whose INFO lines (devices, tips) are noise in a job's console; their warnings still show.
QUIET_LOGGERS: tuple[str, ...] = ("lightning.pytorch", "lightning.fabric", "lightning")


#: Whether the console is quiet (:func:`configure_console` without ``verbose``).
_quiet = False


def quiet_loggers() -> None:
    """Set :data:`QUIET_LOGGERS` to warnings only, if the console is quiet. Lightning sets its own loggers' level
    when it is imported, and it is imported late (only by the stages that run a Trainer): call this again then."""
    if _quiet:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def configure_console(verbose: bool) -> None:
    """Quiet third-party output unless ``verbose``; with it, fopru's own debug lines (config, pipeline) show too.

    Idempotent: every job of a sweep calls it. An explicit ``WANDB_SILENT`` in the environment is respected.
    """
    global _quiet
    _quiet = not verbose
    if verbose:
        logging.getLogger("fopru").setLevel(logging.DEBUG)
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    for pattern, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    quiet_loggers()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    transformers_logging.disable_progress_bar()
