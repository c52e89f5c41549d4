"""Qwen3-VL (``Qwen/Qwen3-VL-{2,4,8}B-Instruct``): images only.

A ViT without [CLS] (patch 16, learned position embedding interpolated to each image's grid, 2-D rotary
embedding), every block attending over the whole image; a 2 x 2 patch merger into the language model's width; and
*DeepStack*: the outputs of a few intermediate blocks (``vision_config.deepstack_visual_indexes``: 5, 11, 17 of 24
blocks in the 2B and 4B checkpoints, 8, 16, 24 of 27 in the 8B) go through mergers of their own, and level i is added
to the output of language layer i at the visual positions. The language model is Qwen3 with interleaved 3-D M-RoPE.

The adapter is the Qwen2-VL one (:class:`~fopru.models.qwen2_vl.Qwen2VLAdapter`: tap, pooling onto merged tokens,
M-RoPE positions, FLOPs) plus what DeepStack needs: pruning selects (or merges) every DeepStack level exactly as the
main merged tokens, in the same order (:func:`~fopru.models.pruning.prune_images`), the assembler places the kept
levels at the kept tokens' positions (:attr:`LanguageInputs.deepstack`), and the prefill runs the stock language
model with those features (:meth:`Qwen3VLAdapter.prefill_forward`) or, with in-LLM pruning, adds level i to layer
i's output at the tokens still present there (:class:`~fopru.models.staged.StagedDecoder`). Videos and Qwen3-VL's
frame timestamps are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

from fopru.models.inputs import LanguageInputs
from fopru.models.qwen2_vl import Qwen2VLAdapter
from fopru.significance.attention import AttentionSummary

if TYPE_CHECKING:
    from fopru.pipeline import PruningRequest
    from fopru.significance.base import SignificanceSource


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor (constructible, savable and loadable without torchvision; see
    :class:`~fopru.models.qwen2_vl.ImageOnlyQwen2VLProcessor`). Images are expanded as by the stock processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        # transformers derives the sub-processors from this signature: no video_processor, so none is checked.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: the Qwen2-VL adapter's tap, merge pooling and M-RoPE positions, with DeepStack pruned alike.

    - Significance: the attention of one vision block, no [CLS] (``has_cls=False``: the focal rule reads the
      attention each patch receives). Every block attends over the whole image (no windows), one attention call per
      image. The default tap is the last block, ``depth - 1`` (23 of 24 in the 2B and 4B checkpoints, 26 of 27 in
      the 8B): the one whose output the main merger turns into the tokens the language model receives; every
      DeepStack level reads an earlier block. ``tap_layer`` or the significance source's ``layer`` choose another.
    - Patch statistics are pooled (summed) over each 2 x 2 merge block onto the merged tokens, as for Qwen2-VL: the
      image processor emits each merge block's patches contiguously and the tower keeps that order.
    - DeepStack: ``get_image_features`` returns, besides the merged tokens, one (n, D) tensor per level over the
      same n merged tokens. The pruning selection (indices, or merge weights) is applied to every level exactly as
      to the merged tokens, so kept token j of an image carries the DeepStack features of the same merged token(s)
      at every level, in the same order; the language model adds them at the kept positions only.
    - Positions: M-RoPE, ``reorder.positions=original`` only (kept tokens keep their (t, h, w) positions).
    """

    #: DeepStack features enter language layers past the embeddings at the visual positions: the prefill runs whole.
    splits_prefill = False
    model_class: Any = Qwen3VLForConditionalGeneration
    processor_class: Any = ImageOnlyQwen3VLProcessor

    def deepstack_layers(self) -> list[int]:
        """The vision blocks whose outputs feed the DeepStack levels, in level order."""
        return [int(index) for index in self.model.config.vision_config.deepstack_visual_indexes]

    def run_vision(
        self, batch: Mapping[str, torch.Tensor], source: PruningRequest | SignificanceSource
    ) -> tuple[Any, list[AttentionSummary] | None]:
        output, summaries = super().run_vision(batch, source)
        if isinstance(output, tuple) and len(output) == 2:
            # Releases whose get_image_features returns (merged tokens, DeepStack levels) rather than an output.
            output = SimpleNamespace(pooler_output=output[0], deepstack_features=output[1])
        return output, summaries

    def image_deepstack(self, output: Any, grid_thw: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per image, its (n_i, D) feature of every DeepStack level (``get_image_features``' per-level splits)."""
        levels = output.deepstack_features
        images = int(grid_thw.shape[0])
        split = []
        for level in levels:
            parts = tuple(level) if not isinstance(level, torch.Tensor) else self._split(level, grid_thw)
            split.append(parts)
        return [tuple(level[image] for level in split) for image in range(images)]

    def _split(self, level: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.split(level, (grid_thw.prod(-1) // self.merge_size**2).tolist()))

    def prefill_forward(self, inputs: LanguageInputs, cache: DynamicCache, logits_to_keep: int = 0) -> torch.Tensor:
        """The stock language model on the assembled prompt, with the kept DeepStack features at the kept visual
        positions (``visual_pos_masks`` / ``deepstack_visual_embeds``, as the stock forward passes them)."""
        if not inputs.deepstack:
            return super().prefill_forward(inputs, cache, logits_to_keep)
        if inputs.visual_mask is None:
            raise ValueError("DeepStack features need the inputs' visual_mask (built by assemble_sequences)")
        visual = inputs.visual_mask & inputs.attention_mask.bool()
        output = self.model.model.language_model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            past_key_values=cache,
            use_cache=True,
            visual_pos_masks=visual,
            deepstack_visual_embeds=[level[visual] for level in inputs.deepstack],
        )
        hidden = output.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits: torch.Tensor = self.model.lm_head(hidden)
        return logits
