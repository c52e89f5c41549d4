"""LLaVA-OneVision's contract hook: AnyRes packed, projected features (base grid, unpadded and possibly
``anyres_max_9``-resampled tile grid with its row newlines), 1-D RoPE, SigLIP without [CLS]."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fopru.models.base import TargetModel
from tests.models.families import Case, FamilyContract


@dataclass(frozen=True)
class LlavaOnevisionContract(FamilyContract):
    """The stock features are the model's packed sequence (projected before packing, so resampled tokens are blends
    of projected patches); ``auto`` means ``compact``; the stock prefill is given the left-padded batch's positions."""

    def stock_image_features(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            output = adapter.model.model.get_image_features(
                batch["pixel_values"], batch["image_sizes"], batch_num_images=batch["batch_num_images"]
            )
        features: torch.Tensor = output.pooler_output[0]
        return features

    def stock_logits(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        with torch.no_grad():
            logits: torch.Tensor = adapter.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
        return logits


CONTRACT = LlavaOnevisionContract(
    positions=("compact", "original", "auto"),
    run_positions="auto",
    sources=("focal", "norm"),  # with a tap, and without one; every other source runs with one strategy
    unsupported_sources={"cls": r"significance=cls needs a vision encoder with a \[CLS\] token"},
    hand_fed=(Case("rank", 0.25), Case("row", 0.5)),
    hand_fed_sample=1,  # 200 x 150: its 4 x 4 tile grid is unpadded and resampled
    # counts with newlines, per grid: tests/models/test_llava_onevision.py
    kv=(Case("rank", 0.25), Case("row", 0.5), Case("pool", 0.25)),
    kv_sample=1,
    batched=(Case("rank", 0.25), Case("row", 0.5)),
    flops_significance={"pool": "norm", "divprune": "norm", "prumerge": "uniform", "vispruner": "norm"}
    | {"uniform": "uniform"},
    flops_samples=(0, 1),  # 3 and 17 crops, the second resampled
    min_visual_tokens=2,  # at least one base and one tile token
)
