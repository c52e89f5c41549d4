"""LLaVA-NeXT's contract hook: AnyRes packed features (base, unpadded tiles, row newlines), 1-D RoPE."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fopru.models.base import TargetModel
from tests.models.families import Case, FamilyContract


@dataclass(frozen=True)
class LlavaNextContract(FamilyContract):
    """The stock features are the packed sequence (base grid, unpadded tile grid with its newlines); ``auto`` means
    ``compact``; the stock prefill is given the left-padded batch's positions."""

    def stock_image_features(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            output = adapter.model.model.get_image_features(batch["pixel_values"], batch["image_sizes"])
        return output.pooler_output[0]

    def stock_logits(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        with torch.no_grad():
            logits: torch.Tensor = adapter.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
        return logits


CONTRACT = LlavaNextContract(
    positions=("compact", "original", "auto"),
    run_positions="auto",
    sources=("focal", "norm"),  # with a tap, and without one; every other source runs with one strategy
    hand_fed=(Case("rank", 0.25), Case("row", 0.5)),
    kv=(Case("rank", 0.25), Case("row", 0.5), Case("pool", 0.25)),  # counts with newlines: tests/models/test_llava_next
    kv_sample=1,
    batched=(Case("rank", 0.25), Case("row", 0.5)),
    flops_significance={"rank": "cls", "pool": "norm", "divprune": "norm", "prumerge": "uniform"}
    | {"prumerge_plus": "cls", "adafv": "norm", "uniform": "uniform"},
    flops_samples=(0, 1),  # both images, of different crop counts
    min_visual_tokens=2,  # at least one base and one tile token
)
