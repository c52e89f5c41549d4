"""Per-sample predictions as JSON lines, appended as they are produced, one file per process.

A run that dies loses at most the batch in flight: each batch is appended, flushed and synced before the next one
starts. Rerunning the same configuration reads every rank's file (a torn last line from a crash is ignored) and
skips the samples already there.
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


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every complete record of every rank file in ``folder``, first occurrence of each sample id kept."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).glob(PATTERN)):
        with path.open() as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("ignoring an incomplete line %d of %s (a run stopped while writing it)", number, path)
                    continue
                records.setdefault(str(record["sample_id"]), record)
    return list(records.values())


def finished_ids(folder: Path) -> set[str]:
    """Sample ids that already have a prediction in ``folder``."""
    return {str(record["sample_id"]) for record in read_records(folder)}


class PredictionStore:
    """Appends one process's records to ``predictions.rank<rank>.jsonl`` in ``folder``."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.path = Path(folder) / f"predictions.rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write a batch of records durably."""
        with self.path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
