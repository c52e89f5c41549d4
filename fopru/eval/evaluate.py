"""One evaluation job: predictions over a benchmark (any Trainer: CPU, GPU, DDP), then scores and costs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
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
from fopru.eval.locking import exclusive_results_folder, launched_as_extra_rank
from fopru.eval.module import EvaluationModule
from fopru.eval.records import finished_ids, read_records
from fopru.eval.result import Latency, RunResult
from fopru.eval.uncertainty import bootstrap_interval
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline
from fopru.timing import PhaseTimer

log = logging.getLogger(__name__)

#: The config keys that define what a job computes; the results folder is named after them and after what the code
#: and the checkpoint make of them (:func:`job_identity`), so a rerun resumes only from its own predictions.
IDENTITY_KEYS = ("model", "data", "significance", "strategy", "reorder", "llm_pruning", "keep", "keep_tokens", "seed")
LIBRARIES = ("torch", "transformers", "lightning", "hydra-core", "datasets", "wandb", "fopru")
#: Stands for the benchmark's prompt when the adapter's template is recorded (it never occurs in a real prompt).
PROMPT_PLACEHOLDER = "\u2063{prompt}\u2063"
#: Lightning's spellings of one numeric precision (``trainer.precision``), as one name each.
_PRECISIONS = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true", "None": "32-true"}
PROVENANCE_FILE = "provenance.json"


def job_identity(cfg: DictConfig, target: TargetModel, benchmark: Benchmark) -> dict[str, Any]:
    """What the predictions of a job depend on beyond its config keys: the weights (a content fingerprint of the
    checkpoint, :func:`~fopru.models.loading.checkpoint_fingerprint`), the prompt template the adapter wraps every
    benchmark prompt in (chat template included), the generation settings and the numeric precision.

    Each benchmark prompt itself is checked per sample on resume (a record holds its prompt); ``target`` must be
    loaded (its processor holds the chat template).
    """
    benchmark_class = type(benchmark)
    precision = str(cfg.trainer.get("precision")) if "trainer" in cfg else "None"
    return {
        "weights": target.fingerprint(),
        "prompt_template": target.format_prompt(PROMPT_PLACEHOLDER),
        "generation": {
            "decoding": "greedy",
            "max_new_tokens": benchmark.max_new_tokens,
            "benchmark": f"{benchmark_class.__module__}.{benchmark_class.__qualname__}",
        },
        "precision": _PRECISIONS.get(precision, precision),
        "dtype": str(target.dtype),
    }


def results_folder(cfg: DictConfig, identity: dict[str, Any] | None = None) -> Path:
    """``<results_dir>/<data>/<model>/<strategy>-<significance>[-<reorder>][-<llm_pruning>]-keep<keep>[-seed<seed>]-
    <hash>``: one folder per configuration, its name holding every choice that differs from the defaults (reorder
    other than ``original``, in-LLM pruning, a seed other than 0), the hash over the :data:`IDENTITY_KEYS` and
    ``identity`` (:func:`job_identity`)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    key = {name: resolved.get(name) for name in IDENTITY_KEYS}
    if isinstance(key["data"], dict):  # predictions are per sample id: a larger limit reuses a smaller one's
        key["data"] = {name: value for name, value in key["data"].items() if name != "limit"}
    if identity:
        key["identity"] = identity
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    budget = f"tokens{cfg.keep_tokens}" if cfg.keep_tokens is not None else f"keep{cfg.keep}"
    parts = [choice(cfg, "strategy"), choice(cfg, "significance")]
    if "reorder" in cfg and choice(cfg, "reorder") not in DEFAULT_CHOICES:
        parts.append(choice(cfg, "reorder"))
    if "llm_pruning" in cfg and choice(cfg, "llm_pruning") not in DEFAULT_CHOICES:
        parts.append(choice(cfg, "llm_pruning"))
    parts.append(budget)
    if cfg.get("seed", 0) not in (0, None):
        parts.append(f"seed{cfg.seed}")
    name = "-".join([*parts, digest])
    root = Path(cfg.results_dir)
    if not root.is_absolute() and HydraConfig.initialized():
        root = Path(get_original_cwd()) / root
    return root / choice(cfg, "data") / choice(cfg, "model") / name


#: The default options of the groups a results folder names only when they differ (as chosen, or as class names).
DEFAULT_CHOICES: frozenset[str] = frozenset({"original", "OriginalOrder", "none", "NoLLMPruning"})


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


def record_run(folder: Path, entry: dict[str, Any]) -> int:
    """Append one run's provenance to ``folder/provenance.json`` (``{"runs": [...]}``, oldest first) and return its
    index. Each run that appends predictions has its own entry, so no commit is credited with earlier predictions."""
    runs = read_runs(folder)
    runs.append(entry)
    (folder / PROVENANCE_FILE).write_text(json.dumps({"runs": runs}, indent=2))
    return len(runs) - 1


def update_run(folder: Path, index: int, **fields: Any) -> None:
    """Fill in fields of run ``index`` of ``folder/provenance.json`` (its end, the predictions it added)."""
    runs = read_runs(folder)
    runs[index].update(fields)
    (folder / PROVENANCE_FILE).write_text(json.dumps({"runs": runs}, indent=2))


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """The provenance entries of the runs that wrote ``folder`` (a file from before runs were listed: one entry)."""
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data["runs"]) if isinstance(data, dict) and "runs" in data else [data]


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
    """Median per-stage seconds of ``samples`` single-sample requests on a warmed-up model (``warmup`` requests
    untimed), with the quartiles of the total. The vision cache is bypassed: each request encodes its image, as a
    request on a new image does. A benchmark with fewer samples is cycled through."""
    if samples <= 0:
        return None
    dataset = benchmark.load()
    if len(dataset) == 0:
        return None
    rows = [dataset[index % len(dataset)] for index in range(samples + warmup)]
    per_stage: dict[str, list[float]] = {name: [] for name in ("vision", "pruning", "prefill", "decode_per_token")}
    totals: list[float] = []
    cache, target.vision_cache = target.vision_cache, None
    try:
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
    finally:
        target.vision_cache = cache

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    low, high = quartiles(totals)
    return Latency(
        vision=median(per_stage["vision"]),
        pruning=median(per_stage["pruning"]),
        prefill=median(per_stage["prefill"]),
        decode_per_token=median(per_stage["decode_per_token"]),
        total=median(totals),
        total_low=low,
        total_high=high,
        requests=len(totals),
    )


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles of ``values`` (linear interpolation between order statistics, as
    ``numpy.percentile``'s default); both the value itself for a single one."""
    if len(values) == 1:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def evaluate(cfg: DictConfig, pipeline: PruningPipeline, target: TargetModel, benchmark: Benchmark) -> RunResult | None:
    """Predict every sample (resuming), then on rank 0 score, measure latency and write ``result.json``.

    The weights load first: the results folder is named after their fingerprint. Rank 0 holds the folder's lock
    from reading the finished samples to writing the result, so a second run of the same configuration waits and
    then resumes; the other DDP ranks write only their own prediction files.
    """
    target.load()
    identity = job_identity(cfg, target, benchmark)
    folder = results_folder(cfg, identity)
    folder.mkdir(parents=True, exist_ok=True)
    extra_rank = launched_as_extra_rank()
    with nullcontext() if extra_rank else exclusive_results_folder(folder):
        dataset = benchmark.load()
        prompts = {
            str(sample): str(prompt) for sample, prompt in zip(dataset["sample_id"], dataset["prompt"], strict=True)
        }
        skip = finished_ids(folder, prompts)
        run = -1
        if not extra_rank:
            (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            started = {"started": _now(), "predictions_before": len(skip), "weights": identity["weights"]}
            run = record_run(folder, {**provenance(), **started})
        if skip:
            log.info("resuming in %s: %d samples already predicted", folder, len(skip))
        pin_ddp_children_to_this_job()
        datamodule = BenchmarkDataModule(benchmark, cfg.batch_size, skip)
        module = EvaluationModule(target, pipeline, benchmark, folder)
        with job_scoped_launcher_environment():
            trainer: L.Trainer = instantiate(cfg.trainer)
            started_at = time.perf_counter()
            trainer.predict(module, datamodule=datamodule, return_predictions=False)
            elapsed = time.perf_counter() - started_at
            if trainer.world_size > 1:
                trainer.strategy.barrier()
                # The next job of a sweep runs in this same process: it must start a process group of its own, not
                # find this one (whose other ranks are about to exit) still initialised.
                torch.distributed.destroy_process_group()
        if trainer.global_rank != 0:
            return None
        wanted = set(datamodule.sample_ids)
        records = [record for record in read_records(folder, prompts) if str(record["sample_id"]) in wanted]
        update_run(folder, run, finished=_now(), predictions_added=len(records) - len(wanted & skip))
        return score_and_measure(
            cfg, pipeline, target, benchmark, folder, records, wanted, skip, elapsed, trainer.world_size
        )


def score_and_measure(
    cfg: DictConfig,
    pipeline: PruningPipeline,
    target: TargetModel,
    benchmark: Benchmark,
    folder: Path,
    records: list[dict[str, Any]],
    wanted: set[str],
    skip: set[str],
    elapsed: float,
    world: int,
) -> RunResult:
    """Rank 0's part after prediction: the metrics, the latency and memory of timed requests, ``result.json``."""
    if len(records) != len(wanted):
        log.error(
            "ONLY %d OF THE %d REQUESTED SAMPLES HAVE A PREDICTION in %s: the result covers those %d "
            "(samples_requested in result.json says so); rerun the same command to predict the rest",
            len(records),
            len(wanted),
            folder,
            len(records),
        )
    unavailable: dict[str, str] = {}
    device = torch.device(target.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_reset = reset_peak_resident_memory() if device.type != "cuda" else None
    latency = measure_latency(target, pipeline, benchmark, cfg.latency_samples, cfg.latency_warmup)
    peak = job_peak_memory(device, latency is not None, memory_reset, unavailable)
    new_samples = len(records) - len(wanted & skip)
    throughput: float | None = new_samples / elapsed if new_samples > 0 and elapsed > 0 else None
    if throughput is None:
        unavailable["throughput"] = (
            f"all {len(records)} samples were predicted by earlier runs of this configuration: nothing was timed"
        )
    interval = bootstrap_interval(records, benchmark.score, benchmark.primary_metric, benchmark.BOOTSTRAP_UNIT)
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
        peak_memory_bytes=peak,
        kv_cache_bytes=statistics.fmean(record["kv_cache_bytes"] for record in records),
        throughput=throughput,
        attention=str(target.attn_implementation),
        device=_device_name(device, world),
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        samples_requested=len(wanted),
        throughput_samples=new_samples if throughput is not None else None,
        unavailable=unavailable,
        accuracy_low=interval.low,
        accuracy_high=interval.high,
        results_folder=str(folder),
    )
    result.save(folder)
    return result


#: Linux: writing 5 to this file resets the process's peak resident memory (``VmHWM``) to its current size.
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_resident_memory() -> str | None:
    """Reset this process's peak resident memory, so that the next reading is this job's; ``None`` when done,
    else why it cannot be (then the process's lifetime peak is all there is)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError as error:
        return f"the peak resident memory cannot be reset here ({error}): only the process's lifetime peak exists"
    return None


def peak_resident_memory() -> int | None:
    """This process's peak resident memory in bytes since the last reset (``VmHWM``), or ``None`` off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def job_peak_memory(
    device: torch.device, timed: bool, reset_failure: str | None, unavailable: dict[str, str]
) -> int | None:
    """The peak memory of this job's timed requests, or ``None`` with the reason in ``unavailable``."""
    if not timed:
        unavailable["peak_memory_bytes"] = "latency_samples=0: no request was timed, so no peak was measured"
        return None
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = peak_resident_memory() if reset_failure is None else None
    if peak is None:
        unavailable["peak_memory_bytes"] = reset_failure or "no per-process peak resident memory on this platform"
    return peak


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _get(record: dict[str, Any], key: str) -> float:
    """A per-layer token field, or the visual tokens for records written before it existed (a resumed folder)."""
    return float(record.get(key, record["visual_tokens"]))


def _device_name(device: torch.device, world: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return f"{name} x{world}" if world > 1 else name
