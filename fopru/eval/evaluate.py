"""One evaluation job: predictions over a benchmark (any Trainer: CPU, GPU, DDP), then scores and costs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fopru.data.base import Benchmark
from fopru.eval.data import BenchmarkDataModule, collate
from fopru.eval.module import EvaluationModule
from fopru.eval.records import finished_ids, read_records
from fopru.eval.result import Latency, RunResult
from fopru.eval.timing import PhaseTimer
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline

log = logging.getLogger(__name__)

#: The keys that define what a job computes; the results folder is named after them, so a rerun resumes.
IDENTITY_KEYS = ("model", "data", "significance", "strategy", "reorder", "llm_pruning", "keep", "keep_tokens", "seed")
LIBRARIES = ("torch", "transformers", "lightning", "hydra-core", "datasets", "wandb", "fopru")


def results_folder(cfg: DictConfig) -> Path:
    """``<results_dir>/<data>/<model>/<strategy>-<significance>[-<llm_pruning>]-keep<keep>-<hash>``: one folder per
    configuration."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    identity = {key: resolved.get(key) for key in IDENTITY_KEYS}
    if isinstance(identity["data"], dict):  # predictions are per sample id: a larger limit reuses a smaller one's
        identity["data"] = {key: value for key, value in identity["data"].items() if key != "limit"}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    budget = f"tokens{cfg.keep_tokens}" if cfg.keep_tokens is not None else f"keep{cfg.keep}"
    method = f"{choice(cfg, 'strategy')}-{choice(cfg, 'significance')}"
    if "llm_pruning" in cfg and choice(cfg, "llm_pruning") not in ("none", "NoLLMPruning"):
        method += f"-{choice(cfg, 'llm_pruning')}"
    name = f"{method}-{budget}-{digest}"
    root = Path(cfg.results_dir)
    if not root.is_absolute() and HydraConfig.initialized():
        root = Path(get_original_cwd()) / root
    return root / choice(cfg, "data") / choice(cfg, "model") / name


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for a config group (``rank`` for ``strategy=rank``), or the target class name."""
    if HydraConfig.initialized():
        chosen = HydraConfig.get().runtime.choices.get(group)
        if chosen:
            return str(chosen)
    return str(cfg[group]["_target_"]).rsplit(".", 1)[-1]


def chosen_method() -> str | None:
    """The ``method=`` preset of this run, if one was chosen."""
    if not HydraConfig.initialized():
        return None
    chosen = HydraConfig.get().runtime.choices.get("method")
    return str(chosen) if chosen else None


def provenance() -> dict[str, Any]:
    """Git commit, library versions, Python and platform of this run."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"git_commit": commit or None, "versions": versions, "python": sys.version, "platform": platform.platform()}


def pin_ddp_children_to_this_job() -> None:
    """Make Lightning's DDP launcher start this job's other ranks, not a whole new sweep.

    Lightning starts each extra rank by re-running the script with the parent's ``sys.argv`` plus
    ``hydra.run.dir=<HydraConfig.run.dir>``. Inside a ``-m`` sweep that argv still holds ``-m`` and every swept
    value, so each child would launch a sweep of its own. The job's own overrides and output folder are used instead.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg: Any = HydraConfig.get()  # a DictConfig at run time
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


#: What Lightning's DDP launcher writes into the launching process's own environment.
_LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def job_scoped_launcher_environment() -> Iterator[None]:
    """Undo the launcher's environment variables when the job ends.

    The next job of a sweep runs in the same process; finding ``LOCAL_RANK`` set, Lightning would take it for a
    child started by an external launcher and wait forever for ranks it never starts.
    """
    saved = {name: os.environ.get(name) for name in _LAUNCHER_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure_latency(
    target: TargetModel, pipeline: PruningPipeline, benchmark: Benchmark, samples: int, warmup: int
) -> Latency | None:
    """Median per-stage seconds of single-sample requests on a warmed-up model (``warmup`` requests untimed)."""
    if samples <= 0:
        return None
    dataset = benchmark.load()
    rows = [dataset[index] for index in range(min(len(dataset), samples + warmup))]
    per_stage: dict[str, list[float]] = {name: [] for name in ("vision", "pruning", "prefill", "decode_per_token")}
    totals: list[float] = []
    for position, row in enumerate(rows):
        batch = collate([row])
        inputs = target.prepare(batch["images"], [target.format_prompt(batch["prompts"][0])])
        target.timer = timer = PhaseTimer(target.device)
        try:
            with timer.phase("total"):
                target.generate(inputs, pipeline, max_new_tokens=benchmark.max_new_tokens)
            seconds = timer.seconds()
        finally:
            target.timer = None
        if position < warmup:
            continue
        totals.append(seconds["total"])
        for name in ("vision", "pruning", "prefill"):
            per_stage[name].append(seconds.get(name, 0.0))
        if timer.counts.get("decode"):
            per_stage["decode_per_token"].append(seconds["decode"] / timer.counts["decode"])
    if not totals:
        return None

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    return Latency(
        vision=median(per_stage["vision"]),
        pruning=median(per_stage["pruning"]),
        prefill=median(per_stage["prefill"]),
        decode_per_token=median(per_stage["decode_per_token"]),
        total=median(totals),
    )


def evaluate(cfg: DictConfig, pipeline: PruningPipeline, target: TargetModel, benchmark: Benchmark) -> RunResult | None:
    """Predict every sample (resuming), then on rank 0 score, measure latency and write ``result.json``."""
    folder = results_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "provenance.json").write_text(json.dumps(provenance(), indent=2))
    skip = finished_ids(folder)
    if skip:
        log.info("resuming in %s: %d samples already predicted", folder, len(skip))
    pin_ddp_children_to_this_job()
    datamodule = BenchmarkDataModule(benchmark, cfg.batch_size, skip)
    module = EvaluationModule(target.load(), pipeline, benchmark, folder)
    with job_scoped_launcher_environment():
        trainer: L.Trainer = instantiate(cfg.trainer)
        started = time.perf_counter()
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
        elapsed = time.perf_counter() - started
        if trainer.world_size > 1:
            trainer.strategy.barrier()
            # The next job of a sweep runs in this same process: it must start a process group of its own, not
            # find this one (whose other ranks are about to exit) still initialised.
            torch.distributed.destroy_process_group()
    if trainer.global_rank != 0:
        return None
    wanted = set(datamodule.sample_ids)
    records = [record for record in read_records(folder) if str(record["sample_id"]) in wanted]
    if len(records) != len(wanted):
        log.warning("%d of %d samples have a prediction", len(records), len(wanted))
    device = torch.device(target.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    latency = measure_latency(target, pipeline, benchmark, cfg.latency_samples, cfg.latency_warmup)
    # GPU: the allocator's peak during the timed requests; CPU: the process's peak resident memory (Linux: KiB).
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    new_samples = len(records) - len(wanted & skip)
    result = RunResult(
        group=str(cfg.group),
        model=choice(cfg, "model"),
        data=choice(cfg, "data"),
        strategy=choice(cfg, "strategy"),
        significance=choice(cfg, "significance"),
        reorder=choice(cfg, "reorder"),
        keep=float(cfg.keep),
        keep_tokens=cfg.keep_tokens,
        samples=len(records),
        kept_tokens=statistics.fmean(record["visual_tokens"] for record in records),
        llm_pruning=choice(cfg, "llm_pruning") if "llm_pruning" in cfg else "none",
        method=chosen_method(),
        kept_tokens_layer_mean=statistics.fmean(_get(record, "visual_tokens_layer_mean") for record in records),
        kept_tokens_equivalent=statistics.fmean(_get(record, "visual_tokens_equivalent") for record in records),
        metrics=benchmark.score(records),
        primary_metric=benchmark.primary_metric,
        scoring=benchmark.protocol.label,
        tflops_prefill=statistics.fmean(record["tflops_prefill"] for record in records),
        tflops_total=statistics.fmean(record["tflops_total"] for record in records),
        latency=latency,
        peak_memory_bytes=int(peak),
        kv_cache_bytes=statistics.fmean(record["kv_cache_bytes"] for record in records),
        throughput=new_samples / elapsed if new_samples > 0 and elapsed > 0 else 0.0,
        attention=str(target.attn_implementation),
        device=_device_name(device, trainer.world_size),
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    )
    result.save(folder)
    return result


def _get(record: dict[str, Any], key: str) -> float:
    """A per-layer token field, or the visual tokens for records written before it existed (a resumed folder)."""
    return float(record.get(key, record["visual_tokens"]))


def _device_name(device: torch.device, world: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return f"{name} x{world}" if world > 1 else name
