"""LLaVA-1.5's contract hook: CLIP features of layers[-2] without [CLS], 1-D RoPE, compact or original positions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fopru.models.base import TargetModel
from tests.models.families import Case, FamilyContract


@dataclass(frozen=True)
class LlavaContract(FamilyContract):
    """The stock features are the projected patch tokens of the feature layer ([CLS] dropped)."""

    def stock_image_features(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            output = adapter.model.get_image_features(
                batch["pixel_values"], vision_feature_layer=-2, vision_feature_select_strategy="default"
            )
        return output.pooler_output[0]


CONTRACT = LlavaContract(
    positions=("compact", "original"),
    run_positions="compact",
    sources=("focal", "cls", "norm", "random"),
    hand_fed=tuple(Case(strategy, 0.34) for strategy in ("rank", "row", "random", "uniform")),
    # 6 x 6 patches: floor(0.25 * 36) = 9 tokens; floor(0.34 * 6) = 2 rows of 6; pooling keeps floor(0.25 * 36).
    kv=(Case("rank", 0.25, kept=9), Case("row", 0.34, kept=12), Case("pool", 0.25, kept=9)),
    batched=(Case("rank", 0.25), Case("row", 0.25)),
    batched_samples=(0, 1, 2),
    flops_significance={"row": "cls", "pool": "norm", "uniform": "uniform", "divprune": "norm", "prumerge": "uniform"}
    | {"prumerge_plus": "cls", "vispruner": "norm"},
    flops_tokens={"row": 3, "pool": 2, "visionzip": 2, "adafv": 2},
    flops_default_tokens=1,
    new_tokens=8,
)
