"""Per-sample predictions as JSON lines, appended as they are produced, one file per process.

A run that dies loses at most the batch in flight: each batch is appended, flushed and synced before the next one
starts. Rerunning the same configuration reads every rank's file and skips the samples already there. A crash in the
middle of a write leaves a torn last line; the store cuts it off before it appends again (with a warning), so the
next record does not land on the same line and the torn sample is simply predicted again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PATTERN = "predictions.rank*.jsonl"


def read_records(folder: Path, prompts: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every complete record of every rank file in ``folder``, first occurrence of each sample id kept.

    With ``prompts`` (sample id -> the prompt the benchmark builds now), a record made from another prompt (the
    benchmark's prompt code changed since) is stale: it is skipped, so its sample counts as unpredicted.
    """
    records: dict[str, dict[str, Any]] = {}
    stale: set[str] = set()
    for path in sorted(Path(folder).glob(PATTERN)):
        with path.open() as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if line.endswith("\n"):  # not a torn tail: the file was damaged some other way
                        log.error("ignoring the unreadable line %d of %s; its sample is predicted again", number, path)
                    else:
                        log.warning("ignoring the incomplete line %d of %s (a run stopped writing it)", number, path)
                    continue
                sample = str(record["sample_id"])
                if (
                    prompts is not None
                    and sample in prompts
                    and record.get("prompt", prompts[sample]) != prompts[sample]
                ):
                    stale.add(sample)
                    continue
                records.setdefault(sample, record)
    stale -= records.keys()
    if stale:
        log.warning(
            "%d predictions in %s were made from a prompt the benchmark no longer builds: predicting them again",
            len(stale),
            folder,
        )
    return list(records.values())


def finished_ids(folder: Path, prompts: Mapping[str, str] | None = None) -> set[str]:
    """Sample ids that already have a prediction in ``folder`` (made from the current prompt, given ``prompts``)."""
    return {str(record["sample_id"]) for record in read_records(folder, prompts)}


def repair_torn_tail(path: Path) -> int:
    """Cut a partial last line (no final newline: a crash mid-write) off ``path``; the bytes removed (0: intact)."""
    if not path.is_file():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        handle.seek(0)
        keep = handle.read().rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning(
        "%s ended in a partial line (a run stopped while writing it): cut off %d bytes; that sample is predicted again",
        path,
        size - keep,
    )
    return size - keep


class PredictionStore:
    """Appends one process's records to ``predictions.rank<rank>.jsonl`` in ``folder``, after cutting off a torn last
    line left by a crash (:func:`repair_torn_tail`)."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.path = Path(folder) / f"predictions.rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write a batch of records durably."""
        with self.path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
