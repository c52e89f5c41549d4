"""Hydra callbacks: a sweep summary at the end of every run or multirun, and one GPU per parallel worker.

``ParetoCallback`` is registered in ``conf/hydra/callbacks/pareto.yaml`` and selected in the defaults list of
``conf/train_eval.yaml`` (``- override hydra/callbacks: pareto``) or on the command line (``hydra/callbacks=pareto``).
``OneGpuPerWorker`` comes with ``hydra/launcher=joblib_gpus``, which adds it next to the selected callbacks.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from fopru import jobs
from fopru.eval.tracking import logs_to_wandb
from fopru.pareto import summarize_sweep

log = logging.getLogger(__name__)


def sweep_group(config: DictConfig, folder: Path) -> str:
    """The sweep's name: the top-level ``group`` key when the config has a non-empty one (a sweep preset sets it),
    else what varies across its jobs (:func:`fopru.jobs.sweep_name`), else the folder's name."""
    group = config.get("group") if "group" in config else None
    return str(group) if group else jobs.sweep_name(folder)


def exit_on_termination() -> None:
    """Turn SIGTERM (``kill``, a scheduler ending the job) into a normal exit, so that exit handlers such as the
    summary of an unfinished sweep run; a handler someone else installed is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class ParetoCallback(Callback):
    """Summarizes the jobs' ``result.json`` files when Hydra is done: ``results.csv`` and the Pareto plots in the
    sweep folder (multirun) or the run folder (single run), and for a multirun one W&B ``sweep-summary`` run.

    A multirun summarizes only its own jobs: when it starts, the sweep folder gets a fresh record
    (:mod:`fopru.jobs`) and every job folder is marked with it, so results of an earlier sweep in a reused folder are
    left out. A sweep that does not run to its end (a failed job, Ctrl-C, SIGTERM, an error of Hydra's) is still
    summarized from the jobs that finished, and the jobs that did not are named, with why; rerunning the same
    command finishes it, the finished jobs resuming from their predictions. When jobs failed, the sweep exits with
    code 2 (all of them bad input) or 1.

    The summary itself never fails the sweep: its errors are logged (with their traceback).
    """

    def __init__(self, log_to_wandb: bool = True, project: str | None = None) -> None:
        self.log_to_wandb = log_to_wandb
        self.project = project
        self._pending: tuple[Path, str, bool] | None = None  # a started sweep not yet summarized: (folder, group, W&B)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Record the sweep and its planned jobs, and make sure it is summarized however the process ends."""
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            jobs.start_sweep(sweep_dir, jobs.planned_jobs(config))
            self._pending = (sweep_dir, sweep_group(config, sweep_dir), self.log_to_wandb and logs_to_wandb(config))
            atexit.register(self._summarize_pending)
            exit_on_termination()
        except Exception:
            log.exception("could not record the sweep; its summary will include every result.json in its folder")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mark the job's folder as this sweep's (a multirun only)."""
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        try:
            jobs.start_job(
                Path(str(config.hydra.runtime.output_dir)),
                Path(str(config.hydra.sweep.dir)),
                int(config.hydra.job.num),
                tuple(str(item) for item in config.hydra.overrides.task),
            )
        except Exception:
            log.exception("could not mark the job folder")

    def on_job_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any) -> None:
        """Record whether the job finished or failed, and with which error (a multirun only)."""
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN or job_return is None:
            return
        try:
            value = job_return._return_value  # the property re-raises a failed job's error
            failure = value if isinstance(value, jobs.JobFailure | BaseException) else None
            if job_return.status == JobStatus.FAILED and failure is None:
                failure = jobs.JobFailure("failed", config_error=False)
            jobs.end_job(Path(str(config.hydra.runtime.output_dir)), failure)
        except Exception:
            log.exception("could not record the job's end")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarize the sweep folder ``hydra.sweep.dir``; exit 2 (bad input) or 1 when some jobs failed."""
        if self._pending is not None:
            atexit.unregister(self._summarize_pending)
            self._pending = None
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            log_to_wandb = self.log_to_wandb and logs_to_wandb(config)
        except Exception:
            log.exception("could not summarize the sweep; its jobs' results are untouched")
            return
        unfinished = self._summarize(sweep_dir, sweep_group(config, sweep_dir), log_to_wandb)
        failed = [record for record in unfinished if record.status == "failed"]
        if failed:
            raise SystemExit(2 if all(record.config_error for record in failed) else 1)

    def _summarize_pending(self) -> None:
        """At exit, before Hydra summarized the sweep: summarize what finished (Ctrl-C, an error that stopped it)."""
        if self._pending is not None:
            sweep_dir, group, log_to_wandb = self._pending
            self._pending = None
            self._summarize(sweep_dir, group, log_to_wandb)

    def _summarize(self, sweep_dir: Path, group: str, log_to_wandb: bool) -> list[jobs.JobRecord]:
        """Summarize the sweep's finished jobs and log the ones that did not finish; returns those."""
        unfinished: list[jobs.JobRecord] = []
        try:
            summarize_sweep(sweep_dir, group, log_to_wandb, self.project)
            unfinished = jobs.unfinished_jobs(sweep_dir)
            described = jobs.describe_unfinished(sweep_dir)
        except Exception:
            log.exception("could not summarize the sweep; its jobs' results are untouched")
            return unfinished
        if described is not None:
            total, lines = described
            log.error(
                "%d of %d jobs of the sweep in %s did not finish; the summary holds the others:\n%s\n"
                "Rerun the command (with any bad value fixed) to finish the sweep: finished jobs resume from their "
                "predictions.",
                len(unfinished),
                total,
                sweep_dir,
                lines,
            )
        return unfinished

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the same table and plots for a single run into its run folder (the job logs to W&B itself)."""
        try:
            job_return = kwargs.get("job_return")
            if isinstance(job_return, JobReturn) and job_return.status == JobStatus.FAILED:
                return
            if config.get("stage", "eval") != "eval":
                return  # nothing was evaluated
            if os.environ.get("LOCAL_RANK", "0") != "0":
                return  # a DDP child that Lightning started as a single run of the same job: rank 0 summarizes
            run_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir") or config.hydra.run.dir))
            summarize_sweep(run_dir, sweep_group(config, run_dir), log_to_wandb=False)
        except Exception:
            log.exception("could not summarize the run")


CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"

# The GPU this process has claimed, with the open file descriptor whose lock reserves it: (device, fd).
_claimed: tuple[str, int] | None = None


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries: that variable's list when it is set, else the
    indices ``nvidia-smi`` reports, else none. Touches no CUDA API, so it can run before a device is chosen."""
    listed = os.environ.get(CUDA_VISIBLE_DEVICES)
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip()]


def lock_file_name(device: str) -> str:
    """The lock file of one ``CUDA_VISIBLE_DEVICES`` entry (an index or a UUID such as ``GPU-8f3c...``)."""
    return "gpu-" + re.sub(r"[^\w.-]", "_", device) + ".lock"


def claim_gpu(gpus: Sequence[str], lock_dir: Path, poll_s: float = 2.0) -> str:
    """Reserve one of ``gpus`` for the rest of this process's life and make it the only visible one.

    The reservation is an exclusive ``flock`` on ``lock_dir/gpu-<device>.lock``, held through a file descriptor
    kept open until the process exits; the kernel drops it when the process dies however it dies, so a crashed
    worker never leaks its GPU. A process that already holds one keeps it (a CUDA context cannot move to another
    device), and a process that finds every GPU taken waits for one to be released.
    """
    global _claimed
    if _claimed is None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        waited = 0.0
        while _claimed is None:
            for device in gpus:
                descriptor = os.open(lock_dir / lock_file_name(device), os.O_RDWR | os.O_CREAT)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(descriptor)
                    continue
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"{os.getpid()}\n".encode())
                _claimed = (device, descriptor)
                break
            else:
                if waited % 60 < poll_s:
                    log.warning("all of GPUs %s are taken (locks in %s); waiting for one", list(gpus), lock_dir)
                time.sleep(poll_s)
                waited += poll_s
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized() and os.environ.get(CUDA_VISIBLE_DEVICES) != _claimed[0]:
        log.warning("CUDA was initialized in this process before a GPU was claimed: CUDA_VISIBLE_DEVICES has no effect")
    os.environ[CUDA_VISIBLE_DEVICES] = _claimed[0]
    return _claimed[0]


class OneGpuPerWorker(Callback):
    """Gives each parallel job process its own GPU, for the joblib launcher (``hydra/launcher=joblib_gpus``).

    Why not ``CUDA_VISIBLE_DEVICES = job number % GPU count``: joblib's loky workers are reused across jobs and have
    no worker index, a CUDA context cannot change device once created, and jobs of uneven length would put two
    jobs on one GPU while another idles. Instead, each worker process claims a free GPU at its first job with a
    file lock (:func:`claim_gpu`) and keeps it for all its later jobs.

    Args:
        gpus: the devices to share out (``CUDA_VISIBLE_DEVICES`` entries); ``None``: :func:`visible_gpus` of the
            launching process.
        lock_dir: where the per-GPU lock files live; ``None``: one folder per user in the temporary directory, so
            concurrent sweeps on one machine share the GPUs instead of doubling up on them.
    """

    def __init__(self, gpus: list[str] | None = None, lock_dir: str | None = None) -> None:
        self.gpus = [str(device) for device in gpus] if gpus is not None else None
        self.lock_dir = Path(lock_dir) if lock_dir else Path(tempfile.gettempdir()) / f"fopru-gpu-locks-{os.getuid()}"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Resolve the GPU list in the launching process and set the launcher's ``n_jobs`` to one worker per GPU
        when it is -1, or when it asks for more workers than there are GPUs."""
        if self.gpus is None:
            self.gpus = visible_gpus()
        launcher = config.hydra.launcher
        if not self.gpus:
            log.warning("no GPU found: jobs run without a GPU of their own")
            return
        if "n_jobs" in launcher and (launcher.n_jobs == -1 or launcher.n_jobs > len(self.gpus)):
            if launcher.n_jobs != -1:
                log.warning("n_jobs=%d but only %d GPUs: one worker per GPU", launcher.n_jobs, len(self.gpus))
            with read_write(launcher):
                launcher.n_jobs = len(self.gpus)
        log.info("one GPU per worker from %s (locks in %s)", self.gpus, self.lock_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Claim this worker's GPU (once per process) before the job touches CUDA."""
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        if gpus:
            device = claim_gpu(gpus, self.lock_dir)
            job = OmegaConf.select(config, "hydra.job.num", default=None)
            log.info("job %s (pid %d) runs on CUDA_VISIBLE_DEVICES=%s", job, os.getpid(), device)
