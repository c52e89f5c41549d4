"""The record of one ``-m`` sweep: which jobs it planned, which of them finished, failed or never ran.

A sweep folder can be reused (a fixed ``hydra.sweep.dir``, a rerun), so it may hold job folders of earlier sweeps.
When a sweep starts, ``sweep.json`` in its folder gets a fresh id and the planned jobs; each job folder gets a
``job.json`` naming that id, its number, overrides and status. A summary reads only the jobs of the latest sweep
(:func:`finished_job_folders`), and :func:`unfinished_jobs` says which of them did not finish and why.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from fopru.eval.result import KEPT_FILE, RESULT_FILE

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
JOB_FILE = "job.json"
#: What a job of an earlier sweep may have left in a reused job folder, removed when a job of this sweep starts.
JOB_OUTPUTS: tuple[str, ...] = (RESULT_FILE, KEPT_FILE, JOB_FILE)

Status = Literal["started", "finished", "failed"]


@dataclass(frozen=True)
class JobFailure:
    """What a sweep job returns when it did not finish: the message, and whether it was bad input."""

    message: str
    config_error: bool


@dataclass(frozen=True)
class JobRecord:
    """One job of a sweep, as ``job.json`` in its folder holds it."""

    sweep: str
    number: int
    overrides: tuple[str, ...]
    status: Status = "started"
    error: str | None = None
    config_error: bool = False


def _write_json(path: Path, values: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(values, indent=2))
    staging.replace(path)  # a reader never sees half a file


def planned_jobs(config: DictConfig) -> list[tuple[str, ...]] | None:
    """The overrides of every job Hydra's basic sweeper will launch, in job-number order (``None`` for other
    sweepers, whose jobs are only known as they start)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default="")
    if not str(sweeper).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        (batch,) = BasicSweeper.split_arguments(overrides, None)
    except Exception as error:  # the sweeper reports its own errors; without a plan, jobs are listed as they start
        log.debug("could not list the sweep's jobs: %s", error)
        return None
    return [tuple(job) for job in batch]


#: The longest sweep name made of its overrides (W&B group names are capped at 128 characters).
MAX_GROUP_LENGTH = 120


def sweep_label(planned: list[tuple[str, ...]] | None) -> str | None:
    """What varies across a sweep's jobs, written as on the command line (``keep=0.05,0.1 strategy=rank,row``), or
    ``None`` when nothing varies or the jobs are not known: the name of a sweep that has no preset's ``group``."""
    if not planned or len(planned) < 2:
        return None
    varying = varying_overrides(planned)
    values: dict[str, list[str]] = {}
    for job in planned:
        for override in job:
            key, _, value = override.partition("=")
            if key in varying and value not in values.setdefault(key, []):
                values[key].append(value)
    if not values:
        return None
    name = " ".join(f"{key}={','.join(chosen)}" for key, chosen in values.items()).replace("/", "_")
    return name if len(name) <= MAX_GROUP_LENGTH else name[: MAX_GROUP_LENGTH - 3] + "..."


def start_sweep(sweep_dir: Path, planned: list[tuple[str, ...]] | None) -> str:
    """Give the sweep in ``sweep_dir`` a fresh id and record its planned jobs and the name made of what varies
    across them (:func:`sweep_label`); returns the id."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep = uuid.uuid4().hex
    started = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "id": sweep,
        "started": started,
        "jobs": None if planned is None else [list(job) for job in planned],
        "name": sweep_label(planned),
    }
    _write_json(sweep_dir / SWEEP_FILE, record)
    return sweep


def sweep_name(sweep_dir: Path) -> str:
    """The name of the sweep in ``sweep_dir``: what varies across its jobs when ``sweep.json`` knows it, else the
    folder's name."""
    sweep = read_sweep(sweep_dir)
    name = sweep.get("name") if sweep is not None else None
    return str(name) if name else Path(sweep_dir).resolve().name


def read_sweep(sweep_dir: Path) -> dict[str, Any] | None:
    """``sweep.json`` of ``sweep_dir``, or ``None`` when there is none (a folder summarized by hand, a single run)."""
    try:
        values = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) and "id" in values else None


def start_job(job_dir: Path, sweep_dir: Path, number: int, overrides: tuple[str, ...]) -> JobRecord | None:
    """Mark ``job_dir`` as a job of the sweep now running in ``sweep_dir``, removing what an earlier job left there;
    ``None`` when that sweep has no record."""
    sweep = read_sweep(sweep_dir)
    if sweep is None:
        return None
    job_dir.mkdir(parents=True, exist_ok=True)
    for name in JOB_OUTPUTS:
        (job_dir / name).unlink(missing_ok=True)
    record = JobRecord(str(sweep["id"]), number, overrides)
    _write_json(job_dir / JOB_FILE, asdict(record))
    return record


def read_job(job_dir: Path) -> JobRecord | None:
    """``job.json`` of ``job_dir``, or ``None``."""
    try:
        values = json.loads((Path(job_dir) / JOB_FILE).read_text())
        return JobRecord(
            sweep=str(values["sweep"]),
            number=int(values["number"]),
            overrides=tuple(values["overrides"]),
            status=values["status"],
            error=values.get("error"),
            config_error=bool(values.get("config_error", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def end_job(job_dir: Path, failure: JobFailure | BaseException | None) -> JobRecord | None:
    """Record how the job in ``job_dir`` ended: finished, or failed with ``failure``."""
    record = read_job(job_dir)
    if record is None:
        return None
    if failure is None:
        record = replace(record, status="finished")
    elif isinstance(failure, JobFailure):
        record = replace(record, status="failed", error=failure.message, config_error=failure.config_error)
    else:
        record = replace(record, status="failed", error=f"{type(failure).__name__}: {failure}")
    _write_json(job_dir / JOB_FILE, asdict(record))
    return record


def sweep_jobs(sweep_dir: Path) -> list[tuple[Path, JobRecord]] | None:
    """The job folders of the latest sweep in ``sweep_dir`` with their records, by job number; ``None`` when the
    folder has no sweep record (every ``result.json`` under it then counts)."""
    sweep = read_sweep(sweep_dir)
    if sweep is None:
        return None
    jobs = []
    for path in Path(sweep_dir).rglob(JOB_FILE):
        record = read_job(path.parent)
        if record is not None and record.sweep == sweep["id"]:
            jobs.append((path.parent, record))
    return sorted(jobs, key=lambda job: job[1].number)


def finished_job_folders(sweep_dir: Path) -> list[Path] | None:
    """The folders of the latest sweep's finished jobs (``None``: no sweep record, see :func:`sweep_jobs`)."""
    jobs = sweep_jobs(sweep_dir)
    if jobs is None:
        return None
    return [folder for folder, record in jobs if record.status == "finished"]


def stale_results(sweep_dir: Path) -> int:
    """How many ``result.json`` files under ``sweep_dir`` belong to no finished job of its latest sweep."""
    finished = finished_job_folders(sweep_dir)
    if finished is None:
        return 0
    kept = {folder.resolve() for folder in finished}
    return sum(1 for path in Path(sweep_dir).rglob(RESULT_FILE) if path.parent.resolve() not in kept)


def unfinished_jobs(sweep_dir: Path) -> list[JobRecord]:
    """The latest sweep's jobs that did not finish: failed, interrupted (``started``) or never started (planned
    but without a folder), by job number."""
    sweep = read_sweep(sweep_dir)
    jobs = sweep_jobs(sweep_dir)
    if sweep is None or jobs is None:
        return []
    records = {record.number: record for _, record in jobs}
    planned = sweep.get("jobs")
    for number, overrides in enumerate(planned or []):
        records.setdefault(number, JobRecord(str(sweep["id"]), number, tuple(overrides), "started", "not started"))
    return [record for _, record in sorted(records.items()) if record.status != "finished"]


def varying_overrides(jobs: list[tuple[str, ...]]) -> set[str]:
    """The keys whose values differ between ``jobs`` (every key when there is one job)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    counts = {key: sum(any(o.partition("=")[0] == key for o in job) for job in jobs) for key in values}
    return {key for key, seen in values.items() if len(jobs) < 2 or len(seen) > 1 or counts[key] < len(jobs)}


def describe_unfinished(sweep_dir: Path) -> tuple[int, str] | None:
    """How many jobs the latest sweep in ``sweep_dir`` has and one line per job of it that did not finish (its
    number, the overrides that tell it from the other jobs, what stopped it); ``None`` when every job finished."""
    unfinished = unfinished_jobs(sweep_dir)
    if not unfinished:
        return None
    sweep = read_sweep(sweep_dir) or {}
    recorded = [record.overrides for _, record in sweep_jobs(sweep_dir) or []]
    every = [tuple(job) for job in sweep.get("jobs") or []] or recorded + [r.overrides for r in unfinished]
    varying = varying_overrides(every)
    lines = []
    for record in unfinished:
        shown = " ".join(item for item in record.overrides if item.partition("=")[0] in varying) or "no overrides"
        why = f"failed: {record.error}" if record.status == "failed" else (record.error or "interrupted")
        lines.append(f"  #{record.number} ({shown}): {why}")
    return len(every), "\n".join(lines)


#: The longest job folder name, so that a job with many overrides still gets a folder every file system accepts.
JOB_NAME_CHARACTERS = 120
JOB_NAME_RESOLVER = "fopru_job_name"


def job_folder_name(number: int | str, overrides: str) -> str:
    """A sweep job's folder name: its number, then what it overrides (Hydra's ``hydra.job.override_dirname``,
    e.g. ``3-keep=0.1,strategy=row``), with path separators replaced and cut to :data:`JOB_NAME_CHARACTERS`."""
    shown = re.sub(r"[/\\\0]", "_", overrides).strip(".") if overrides else ""
    name = f"{number}-{shown}" if shown else str(number)
    return name[:JOB_NAME_CHARACTERS]


def register_resolvers() -> None:
    """Make ``${fopru_job_name:NUMBER,OVERRIDES}`` (:func:`job_folder_name`) usable in configs
    (``hydra.sweep.subdir``)."""
    if not OmegaConf.has_resolver(JOB_NAME_RESOLVER):
        OmegaConf.register_new_resolver(
            JOB_NAME_RESOLVER, lambda number, overrides="": job_folder_name(number, overrides)
        )
