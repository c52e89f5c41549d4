"""InternVL3's contract hook: every crop's pixel-shuffled tokens, tiles then thumbnail, projected; 1-D RoPE."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fopru.models.base import TargetModel
from tests.models.families import Case, FamilyContract


@dataclass(frozen=True)
class InternVLContract(FamilyContract):
    """The stock features are the projector's output for every crop of the image, crop after crop (the order of
    the ``<IMG_CONTEXT>`` placeholders); ``auto`` means ``compact``; the stock prefill is given the left-padded
    batch's positions."""

    def stock_image_features(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            output = adapter.model.model.get_image_features(pixel_values=batch["pixel_values"])
        features: torch.Tensor = output.pooler_output.flatten(0, 1)
        return features

    def stock_logits(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        with torch.no_grad():
            logits: torch.Tensor = adapter.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
        return logits


CONTRACT = InternVLContract(
    positions=("compact", "original", "auto"),
    run_positions="auto",
    sources=("focal", "norm"),  # with a tap, and without one; every other source runs with one strategy
    hand_fed=(Case("rank", 0.25), Case("row", 0.5)),
    # Example 0 is 2 x 2 tiles + thumbnail (5 crops of 16 tokens): every crop keeps floor(0.25 * 16) = 4 tokens
    # (rank, pool) or floor(0.5 * 4) = 2 rows of 4 (row).
    kv=(Case("rank", 0.25, kept=5 * 4), Case("row", 0.5, kept=5 * 2 * 4), Case("pool", 0.25, kept=5 * 4)),
    batched=(Case("rank", 0.25), Case("row", 0.5)),
    flops_significance={"pool": "norm", "divprune": "norm", "prumerge": "uniform", "vispruner": "norm"}
    | {"uniform": "uniform"},
    flops_samples=(0, 1),  # 5 and 3 crops
    min_visual_tokens=3,  # example 1 has 3 crops; every per-crop strategy keeps at least one token of each
)
