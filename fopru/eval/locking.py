"""One run at a time per results folder, and telling a job's extra DDP ranks from its launching process."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
#: Variables that launchers set to a process's rank: Lightning's own DDP launcher (``LOCAL_RANK``, ``NODE_RANK``),
#: torchrun (``RANK``) and SLURM (``SLURM_PROCID``).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def launched_as_extra_rank() -> bool:
    """Whether this process is a rank other than 0 of a job whose rank 0 writes the folder's shared files."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return True
    return False


@contextmanager
def exclusive_results_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder/.lock`` for the block; a second run of the same configuration waits.

    Without it two runs started together would both predict every sample and append them twice. The waiting run
    then resumes from the first one's predictions (computing nothing when they are complete). The kernel drops
    the lock when its process ends, however it ends, so a killed run never leaves the folder locked.
    """
    path = Path(folder) / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "an unknown process"
            log.warning(
                "another run (%s) is evaluating this configuration in %s; waiting for it to finish, then resuming "
                "from its predictions",
                holder,
                folder,
            )
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
