"""Qwen3-VL's contract hook: Qwen2-VL's (merged 2 x 2 tokens, no [CLS], M-RoPE kept), with the stock DeepStack
features of the kept tokens added at the kept positions in the hand-fed language model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from fopru.models.base import TargetModel
from tests.models.families.tiny_qwen2_vl import CONTRACT as QWEN2_VL
from tests.models.families.tiny_qwen2_vl import Qwen2VLContract


@dataclass(frozen=True)
class Qwen3VLContract(Qwen2VLContract):
    """The stock language model fed by hand: the kept merged tokens in the image's place, and every DeepStack level's
    stock features of the same tokens, in the same order, given as ``deepstack_visual_embeds`` at those positions
    (``visual_pos_masks``), as the stock forward passes them."""

    def hand_fed_logits(
        self,
        adapter: TargetModel,
        batch: Mapping[str, torch.Tensor],
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        kept: torch.Tensor,
        start: int,
    ) -> torch.Tensor:
        model = adapter.model
        with torch.no_grad():
            output: Any = model.get_image_features(
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]
            )
            visual = torch.zeros(embeds.shape[:2], dtype=torch.bool)
            visual[0, start : start + kept.shape[0]] = True
            hidden = model.model.language_model(
                inputs_embeds=embeds,
                position_ids=position_ids,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                visual_pos_masks=visual,
                deepstack_visual_embeds=[level[0][kept] for level in output.deepstack_features],
            ).last_hidden_state
            logits: torch.Tensor = model.lm_head(hidden)[0]
        return logits


# The tiny Qwen3-VL has the tiny Qwen2-VL's examples and grids (7 x 7 and 7 x 10 merged tokens): the same cases.
CONTRACT = Qwen3VLContract(**{field.name: getattr(QWEN2_VL, field.name) for field in fields(QWEN2_VL)})
