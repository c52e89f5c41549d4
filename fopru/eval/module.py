"""The evaluation step: pruned greedy generation on a batch, one record per sample."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fopru.data.base import Benchmark
from fopru.eval.records import PredictionStore
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline
from fopru.seeding import sample_key


def kv_cache_bytes(config: Any, tokens: float, dtype: torch.dtype) -> int:
    """Bytes of keys and values cached for ``tokens`` positions (per layer, on average) across the language model's
    layers."""
    text = config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return int(2 * text.num_hidden_layers * heads * head_dim * tokens * torch.finfo(dtype).bits // 8)


class EvaluationModule(L.LightningModule):
    """Runs ``target`` with ``pipeline`` on a benchmark's batches and appends one record per sample to ``folder``.

    A record holds the sample's fields (minus the image), the prediction, the visual and text tokens that reached the
    language model (and, for in-LLM pruning, the visual tokens per layer on average and their pre-LLM equivalent),
    the analytic TFLOPs of the request and its KV-cache bytes after prefill.

    A rank other than 0 stops, without writing, as soon as the process that launched it has exited (DDP rank 0
    under Lightning's launcher, or a launcher's agent): otherwise, after rank 0 dies, it would go on appending
    predictions to a folder that a rerun may already be using.
    """

    def __init__(self, target: TargetModel, pipeline: PruningPipeline, benchmark: Benchmark, folder: Path) -> None:
        super().__init__()
        self.target = target
        self.language_vision_model = target.model  # registered, so that Lightning places it on the device
        self.pipeline = pipeline
        self.benchmark = benchmark
        self.folder = folder
        self.store: PredictionStore | None = None
        self.launcher_pid: int | None = None

    def on_predict_start(self) -> None:
        self.target.device = str(self.device)
        self.store = PredictionStore(self.folder, self.global_rank)
        self.launcher_pid = os.getppid() if self.global_rank != 0 else None

    def check_launcher_alive(self) -> None:
        """Raise if this rank's launching process has exited (the kernel then hands the rank to another parent)."""
        if self.launcher_pid is not None and os.getppid() != self.launcher_pid:
            raise RuntimeError(
                f"rank {self.global_rank} stops: its launching process (pid {self.launcher_pid}, rank 0 under "
                "Lightning's launcher) has exited, so this rank writes no more predictions"
            )

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        target = self.target
        prompts = [target.format_prompt(text) for text in batch["prompts"]]
        # One image per row: each is seeded by its sample, so random pruning ignores batch order, shards and resumes.
        keys = [sample_key(row["sample_id"]) for row in batch["rows"]]
        inputs = target.prepare(batch["images"], prompts, keys)
        generation = target.generate(inputs, self.pipeline, max_new_tokens=self.benchmark.max_new_tokens)
        flops = target.flops(inputs, generation.inputs, self.pipeline)
        generated = (generation.tokens != target.processor.tokenizer.pad_token_id).sum(dim=1).clamp_min(1)
        records = []
        for sample, row in enumerate(batch["rows"]):
            visual = int(generation.inputs.visual_tokens[sample])
            text = int(generation.inputs.text_tokens[sample])
            # With in-LLM pruning, later layers hold fewer visual tokens: the KV cache holds the per-layer mean.
            layer_mean = flops[sample].visual_tokens_mean
            layer_mean = float(visual) if layer_mean is None else float(layer_mean)
            equivalent = flops[sample].visual_tokens_equivalent
            equivalent = float(visual) if equivalent is None else float(equivalent)
            records.append(
                {
                    **row,
                    "prediction": generation.texts[sample],
                    "visual_tokens": visual,
                    "visual_tokens_layer_mean": layer_mean,
                    "visual_tokens_equivalent": equivalent,
                    "text_tokens": text,
                    "tflops_prefill": flops[sample].total(1) / 1e12,
                    "tflops_total": flops[sample].total(int(generated[sample])) / 1e12,
                    "kv_cache_bytes": kv_cache_bytes(target.model.config, layer_mean + text, target.dtype),
                }
            )
        assert self.store is not None
        self.check_launcher_alive()
        self.store.append(records)
