"""The evaluation step: pruned greedy generation on a batch, one record per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from fopru.data.base import Benchmark
from fopru.eval.records import PredictionStore
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline


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
    """

    def __init__(self, target: TargetModel, pipeline: PruningPipeline, benchmark: Benchmark, folder: Path) -> None:
        super().__init__()
        self.target = target
        self.language_vision_model = target.model  # registered, so that Lightning places it on the device
        self.pipeline = pipeline
        self.benchmark = benchmark
        self.folder = folder
        self.store: PredictionStore | None = None

    def on_predict_start(self) -> None:
        self.target.device = str(self.device)
        self.store = PredictionStore(self.folder, self.global_rank)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        target = self.target
        prompts = [target.format_prompt(text) for text in batch["prompts"]]
        inputs = target.prepare(batch["images"], prompts)
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
        self.store.append(records)
