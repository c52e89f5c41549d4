"""Reading the ``result.json`` files of a sweep folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from fopru.eval.result import RESULT_FILE, RunResult

log = logging.getLogger(__name__)


def collect(sweep_dir: Path, folders: Sequence[Path] | None = None) -> list[RunResult]:
    """Every readable ``result.json`` under a Hydra sweep (or run) folder, or only those of the job ``folders``
    when given, by job number.

    Jobs are the numbered subfolders of a sweep (``hydra.sweep.subdir``); a run folder's own ``result.json`` comes
    first, non-numeric subfolders last, by name. Unreadable files are logged and skipped.
    """
    sweep_dir = Path(sweep_dir)
    paths = sorted(
        files_named(sweep_dir, RESULT_FILE, folders), key=lambda path: job_order(path.relative_to(sweep_dir))
    )
    results: list[RunResult] = []
    for path in paths:
        try:
            results.append(RunResult.load(path))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("skipping unreadable %s: %s: %s", path, type(error).__name__, error)
    return results


def files_named(sweep_dir: Path, name: str, folders: Sequence[Path] | None) -> list[Path]:
    """The files called ``name`` under ``sweep_dir``, or directly in ``folders`` when given."""
    if folders is None:
        return list(sweep_dir.rglob(name))
    return [folder / name for folder in folders if (folder / name).is_file()]


def job_order(relative: Path) -> tuple[int, int, str]:
    """Sort key of a file under a sweep folder: the run folder's own first, then the jobs by number (folders ``3``
    or ``3-keep=0.1,strategy=row``), then the rest by name."""
    if len(relative.parts) == 1:
        return (0, 0, "")
    number = relative.parts[0].split("-", 1)[0]
    return (1, int(number), str(relative)) if number.isdigit() else (2, 0, str(relative))
