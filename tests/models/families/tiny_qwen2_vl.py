"""Qwen2-VL's contract hook: merged 2 x 2 patch tokens without [CLS], M-RoPE positions (original only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fopru.models.base import TargetModel
from fopru.reorder.base import Positions
from tests.models.families import Case, FamilyContract


@dataclass(frozen=True)
class Qwen2VLContract(FamilyContract):
    """The stock features are the merger's output; kept tokens keep their stock M-RoPE (t, h, w) positions, the
    columns of the model's own rope index (``compact`` is refused, ``auto`` means ``original``)."""

    def stock_image_features(self, adapter: TargetModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            output: Any = adapter.model.get_image_features(
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]
            )
        return output.pooler_output[0]

    def hand_positions(
        self, adapter: TargetModel, batch: Mapping[str, torch.Tensor], columns: torch.Tensor, positions: Positions
    ) -> torch.Tensor:
        index, _ = adapter.model.model.get_rope_index(
            input_ids=batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )
        return torch.as_tensor(index)[:, :, columns]


CONTRACT = Qwen2VLContract(
    positions=("original", "auto"),
    run_positions="original",
    sources=("focal", "norm"),  # with a tap, and without one
    unsupported_sources={"cls": r"significance=cls needs a vision encoder with a \[CLS\] token"},
    hand_fed=(Case("rank", 0.25), Case("row", 0.5)),
    hand_fed_sample=1,
    # 7 x 7 merged tokens: floor(0.25 * 49) = 12 tokens; floor(0.5 * 7) = 3 rows of 7.
    kv=(Case("rank", 0.25, kept=12), Case("row", 0.5, kept=21)),
    batched=(Case("rank", 0.25),),
    flops_significance={"pool": "norm", "divprune": "norm", "prumerge": "uniform", "vispruner": "norm"}
    | {"uniform": "uniform"},
    flops_samples=(1,),
)
