"""The result of one evaluation job, as written to ``result.json`` in the job's output folder.

Sweep-level tools (Pareto fronts, tables, plots, W&B summaries) read these files; nothing is re-parsed from logs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
#: Beside a job's result: the kept patches of its first samples (see :mod:`fopru.eval.kept`).
KEPT_FILE = "kept_patches.json"


@dataclass(frozen=True)
class Latency:
    """Median seconds per sample of each stage, measured on a warmed-up model (device events on GPU), every image
    encoded afresh (the vision cache is bypassed: a request on a new image).

    Attributes:
        vision: vision encoder, tap included (for all of a sample's images).
        pruning: significance + selection + building the kept tokens (projector included for LLaVA).
        prefill: the language model's prefill, i.e. time to first token after the visual tokens are ready.
        decode_per_token: one greedy decode step.
        total: the whole request, end to end.
        total_low, total_high: the first and third quartiles of ``total`` over the timed requests (its interquartile
            range, the spread the latency plot draws and the Pareto front respects); ``None`` in results written
            before they were recorded.
        requests: how many requests were timed.
    """

    vision: float
    pruning: float
    prefill: float
    decode_per_token: float
    total: float
    total_low: float | None = None
    total_high: float | None = None
    requests: int | None = None


@dataclass(frozen=True)
class RunResult:
    """One job: a (model, benchmark, method, budget) point with its accuracy and its cost.

    Attributes:
        group: the sweep's name (the W&B group); all jobs of one ``-m`` run share it.
        model, data, strategy, significance, reorder: the config choices (group option names).
        keep, keep_tokens: the nominal budget.
        samples: samples scored.
        kept_tokens: mean visual tokens per sample that reached the language model (the actual count).
        metrics: the benchmark's official metrics, name -> value.
        primary_metric: the name in ``metrics`` that Pareto curves plot.
        tflops_prefill, tflops_total: mean analytic TFLOPs per sample (vision + pruning + projector + prefill; and
            with decoding of the generated tokens).
        latency: median per-stage latency, or ``None`` when not measured.
        peak_memory_bytes: peak memory while timing the latency requests, measured for this job alone: on GPU the
            allocator's peak, on CPU the peak resident memory (Linux, reset before timing); ``None`` when not
            measured (see ``unavailable``).
        kv_cache_bytes: mean KV-cache bytes per sample after prefill.
        throughput: samples per second this job predicted (``throughput_samples`` of them, timed from the start of
            prediction); ``None`` when it predicted none (every sample resumed from an earlier run).
        attention: the attention implementation of the language model (sdpa, flash_attention_2, eager).
        device: where it ran (e.g. "cpu", "NVIDIA H100 80GB HBM3 x2").
        overrides: the job's Hydra overrides, for reproducing it.
        llm_pruning: the in-LLM pruning method (``none``: visual tokens stay in every layer).
        kept_tokens_layer_mean: mean over samples of the visual tokens per language-model layer averaged over layers
            (equals ``kept_tokens`` without in-LLM pruning).
        kept_tokens_equivalent: the visual-token count with which a pre-LLM method would cost the same prefill: the
            budget to set in-LLM methods beside pre-LLM ones.
        method: the method preset (``method=visionzip``), or ``None`` when the groups were chosen one by one.
        samples_requested: the samples the job was asked to score; ``samples`` is smaller only when some have no
            prediction, which the run reports as an error.
        throughput_samples: the samples ``throughput`` was measured on (fewer than ``samples`` after a resume).
        unavailable: why a figure is ``None``, by field name (``throughput``, ``peak_memory_bytes``).
        scoring: the scoring protocol of ``metrics``, ``name@revision`` (:mod:`fopru.data.scoring`); results
            written before it was recorded were scored ``lenient``.
        accuracy_low, accuracy_high: the 95% bootstrap interval of the primary metric over samples
            (:mod:`fopru.eval.uncertainty`); ``None`` in results written before it was recorded.
        results_folder: the folder holding the job's predictions (``predictions.rank*.jsonl``) and config, which
            paired comparisons of two jobs read.
    """

    group: str
    model: str
    data: str
    strategy: str
    significance: str
    reorder: str
    keep: float
    keep_tokens: int | None
    samples: int
    kept_tokens: float
    metrics: dict[str, float]
    primary_metric: str
    tflops_prefill: float
    tflops_total: float
    latency: Latency | None
    peak_memory_bytes: int | None
    kv_cache_bytes: float
    throughput: float | None
    attention: str
    device: str
    overrides: list[str] = field(default_factory=list)
    llm_pruning: str = "none"
    kept_tokens_layer_mean: float | None = None
    kept_tokens_equivalent: float | None = None
    method: str | None = None
    samples_requested: int | None = None
    throughput_samples: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    scoring: str = "lenient"
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    results_folder: str | None = None

    @property
    def accuracy(self) -> float:
        """The primary metric's value."""
        return self.metrics[self.primary_metric]

    @property
    def accuracy_interval(self) -> str:
        """The primary metric with its 95% interval, e.g. ``0.620 [0.480, 0.760]`` or ``1432 [1350, 1511]`` for
        totals (no interval recorded: the value only)."""

        def show(value: float) -> str:
            return f"{value:.3f}" if abs(value) <= 1 else f"{value:.4g}"

        if self.accuracy_low is None or self.accuracy_high is None:
            return show(self.accuracy)
        return f"{show(self.accuracy)} [{show(self.accuracy_low)}, {show(self.accuracy_high)}]"

    def save(self, folder: Path) -> Path:
        """Write ``result.json`` into ``folder``."""
        path = Path(folder) / RESULT_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: Path) -> RunResult:
        """Read a ``result.json`` written by :meth:`save`."""
        data: dict[str, Any] = json.loads(Path(path).read_text())
        latency = data.pop("latency")
        return cls(latency=Latency(**latency) if latency is not None else None, **data)
