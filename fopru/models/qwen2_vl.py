"""Qwen2-VL and Qwen2.5-VL (``Qwen/Qwen2-VL-{2,7}B-Instruct``, ``Qwen/Qwen2.5-VL-{3,7}B-Instruct``).

Both families share one adapter: a ViT without [CLS] whose patches are merged 2 x 2 into the tokens the language
model sees, and a Qwen2 language model with 3-D M-RoPE positions. Qwen2.5-VL adds windowed attention in most
vision blocks (the tower runs its tokens in window order), which its subclass handles.

Without torchvision, transformers cannot construct the stock processors: their constructor checks the (absent)
video processor's class and fails (``VIDEO_PROCESSOR_MAPPING`` has no ``_extra_content``). The image-only
processors below declare no ``video_processor`` argument, so transformers neither checks, saves nor loads one; images
are processed exactly as by the stock processor (same ``<|image_pad|>`` expansion), videos are not supported. The
image processor is always the PIL backend (``Qwen2VLImageProcessorPil``), with or without torchvision.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from fopru.efficiency.flops import qwen2_vl_flops
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.base import TargetModel
from fopru.models.inputs import LanguageInputs, SampleCost, VisualGroup
from fopru.models.tap import VisionAttentionTap
from fopru.reorder.base import Positions
from fopru.significance.attention import AttentionSummary
from fopru.significance.base import SignificanceSource
from fopru.significance.pooling import pool_merged

if TYPE_CHECKING:
    from fopru.pipeline import PruningRequest

#: How a prompt marks one image (the chat template's form); the processor expands ``<|image_pad|>``.
IMAGE_PROMPT = "<|vision_start|><|image_pad|><|vision_end|>"


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (constructible, savable and loadable without torchvision)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        # transformers derives the sub-processors from this signature: no video_processor, so none is checked.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor (see :class:`ImageOnlyQwen2VLProcessor`)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def _pooler_output(output: Any, grid_thw: torch.Tensor, merge: int) -> tuple[torch.Tensor, ...]:
    """Per-image merged embeddings from ``get_image_features``, whichever form this transformers version returns."""
    features = getattr(output, "pooler_output", output)
    if isinstance(features, torch.Tensor):
        return tuple(torch.split(features, (grid_thw.prod(-1) // merge**2).tolist()))
    return tuple(features)


class Qwen2VLAdapter(TargetModel):
    """Qwen2-VL: a ViT without [CLS] (patch 14, 2 x 2 patch merger), a Qwen2 LLM with M-RoPE.

    - Significance: the attention of one full-attention vision block, no [CLS] (``has_cls=False``; the patch rows
      sum to 1, so the focal rule picks the attention each patch receives). Every Qwen2-VL block attends over the
      whole image; the default tap is the last block (the one whose output the merger reads). ``tap_layer`` or the
      significance source's ``layer`` choose another one (0-based, negative from the end). The vision tower calls
      the attention once per image, so the tap records one summary per image.
    - Patch statistics are pooled (summed) over each 2 x 2 merge block onto the merged tokens the LLM sees. The
      image processor emits the patches of each merge block contiguously, hence ``pool_merged(order="blocks")``.
      Both ``received`` and ``paid`` are pooled; the source's variance rule then runs on the pooled values.
    - The merged visual embeddings come from the model's own ``get_image_features`` (vision tower + merger, already
      in the LLM's width). Pruning selects among these merged tokens, one image at a time (images in a batch may
      differ in size); the layout is the merged grid ``(h / merge, w / merge)`` (t = 1 for images). Merging
      strategies (pool) average merged embeddings. The projection step of :func:`prune_images` is the identity.
    - Prompt: each image is written ``<|vision_start|><|image_pad|><|vision_end|>`` (:data:`IMAGE_PROMPT`); the
      processor expands ``<|image_pad|>`` to the image's merged-token count ``prod(grid_thw) / merge**2``, and the
      shared assembler replaces those placeholders by the kept tokens. The KV cache holds text + kept tokens.
    - Positions (M-RoPE): kept tokens keep their original (t, h, w) positions and text keeps its unpruned offsets.
      The unpruned 3-D position ids come from the model's own ``get_rope_index`` (it reads the attention mask, so
      left padding is respected); the assembler drops the pruned columns. Only ``reorder.positions=original`` is
      accepted (``auto`` resolves to it): ``compact`` would renumber tokens 1-D and break M-RoPE. Decoding
      continues at the largest prompt position + 1, then + 1 per token, which is what HF's ``generate`` does for
      the unpruned model (``len(prompt) + rope_delta`` with ``rope_delta = max position + 1 - len(prompt)``).
      Pruning leaves the largest position unchanged whenever text follows the image (the text keeps its
      offsets), so decoding after pruning continues at the position the unpruned model would use.
    """

    model_class: Any = Qwen2VLForConditionalGeneration
    processor_class: Any = ImageOnlyQwen2VLProcessor
    position_modes = ("original",)
    prompt_template = f"<|im_start|>user\n{IMAGE_PROMPT}{{text}}<|im_end|>\n<|im_start|>assistant\n"

    def load_processor(self, path: str) -> Any:
        processor = self.processor_class.from_pretrained(path)
        # transformers picks the torchvision backend where torchvision is installed; pin the PIL one so that
        # every machine feeds the model the same pixels.
        if not isinstance(processor.image_processor, Qwen2VLImageProcessorPil):
            processor.image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        return processor

    #: The grid first: it has one row per image (the patches of all images are flattened into one tensor).
    vision_inputs = ("image_grid_thw", "pixel_values")

    def image_inputs(self, batch: Mapping[str, torch.Tensor], image: int) -> dict[str, torch.Tensor]:
        """The image's grid and its rows of the flattened patches."""
        patches = batch["image_grid_thw"].prod(dim=-1).tolist()
        start = sum(patches[:image])
        return {
            "image_grid_thw": batch["image_grid_thw"][image : image + 1],
            "pixel_values": batch["pixel_values"][start : start + patches[image]],
        }

    # -- the vision tower ------------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        """The vision tower (patch embedding, blocks, merger)."""
        visual: nn.Module = self.model.model.visual
        return visual

    @property
    def merge_size(self) -> int:
        """Patches merged per side (2): a merged token covers ``merge_size**2`` patches."""
        return int(self.model.config.vision_config.spatial_merge_size)

    def vision_layers(self) -> nn.ModuleList:
        blocks = self.visual.get_submodule("blocks")
        assert isinstance(blocks, nn.ModuleList)
        return blocks

    def attention_of(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule("attn")

    def default_tap_layer(self) -> int:
        return self.tap_layer if self.tap_layer is not None else len(self.vision_layers()) - 1

    def resolve_positions(self, positions: str) -> Positions:
        if positions == "compact":
            raise ConfigError(
                f"{type(self).__name__} uses 3-D M-RoPE: every kept token must keep its original (t, h, w) position, "
                "so reorder.positions must be 'original' (or 'auto'), got 'compact'"
            )
        return super().resolve_positions(positions)

    def unit_orders(self, grid_thw: torch.Tensor) -> list[torch.Tensor] | None:
        """Per image, the order in which the tapped layer sees its merge units (``merge_size**2`` patches each):
        entry p is the processor-order index of the unit at sequence position p. ``None``: processor order."""
        return None

    def _patch_summaries(
        self, tap: VisionAttentionTap, grid_thw: torch.Tensor, orders: list[torch.Tensor] | None
    ) -> list[AttentionSummary]:
        """One summary per image over its merged tokens (raster order): statistics back in processor order, pooled."""
        if len(tap.summaries) != grid_thw.shape[0]:
            raise ConfigError(
                f"the tapped vision layer ran {len(tap.summaries)} attention calls for {grid_thw.shape[0]} images; "
                "the tap needs one call per image (a full-attention layer on the non-flash path)"
            )
        unit = self.merge_size**2
        pooled = []
        for image, (part, (_, rows, cols)) in enumerate(zip(tap.summaries, grid_thw.tolist(), strict=True)):
            statistics = []
            for values in (part.received, part.paid):
                if orders is not None:
                    units = values.reshape(values.shape[0], -1, unit)
                    values = torch.empty_like(units).index_copy_(1, orders[image].to(values.device), units)
                    values = values.reshape(part.received.shape)
                statistics.append(pool_merged(values, ((rows, cols),), self.merge_size, order="blocks"))
            pooled.append(AttentionSummary(received=statistics[0], paid=statistics[1], cls=None))
        return pooled

    def encode_images(
        self, batch: Mapping[str, torch.Tensor], source: PruningRequest | SignificanceSource
    ) -> tuple[tuple[torch.Tensor, ...], list[AttentionSummary] | None]:
        """Merged embeddings (n_i, D) of every image and, if ``source`` reads attention, its pooled (1, n_i) summary.

        Both are over the image's merged tokens in raster order (the order of its ``<|image_pad|>`` placeholders).
        """
        output, summaries = self.run_vision(batch, source)
        return _pooler_output(output, batch["image_grid_thw"], self.merge_size), summaries

    def run_vision(
        self, batch: Mapping[str, torch.Tensor], source: PruningRequest | SignificanceSource
    ) -> tuple[Any, list[AttentionSummary] | None]:
        """The model's own ``get_image_features`` output on the batch's images, tapped as ``source`` asks, and the
        pooled summaries (see :meth:`encode_images`)."""
        grid_thw = batch["image_grid_thw"].to(self.device)
        if bool((grid_thw[:, 0] != 1).any()):
            raise ConfigError(
                f"{type(self).__name__} prunes still images (t = 1), got image_grid_thw={grid_thw.tolist()}"
            )
        pixel_values = batch["pixel_values"].to(self.device, self.dtype)
        with torch.no_grad(), self.phase("vision"), self.tap(source, has_cls=False) as tap:
            output = self.model.model.get_image_features(pixel_values=pixel_values, image_grid_thw=grid_thw)
        if tap is None:
            return output, None
        return output, self._patch_summaries(tap, grid_thw, self.unit_orders(grid_thw))

    def image_deepstack(self, output: Any, grid_thw: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per image, the vision output's DeepStack levels ((n_i, D) each); none for Qwen2-VL / 2.5-VL."""
        return [() for _ in range(grid_thw.shape[0])]

    # -- positions -------------------------------------------------------------------------------------------
    def unpruned_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(3, B, L) M-RoPE position ids of the processor's unpruned prompt, from the model's ``get_rope_index``."""
        input_ids = batch["input_ids"]
        arguments: dict[str, Any] = {
            "input_ids": input_ids,
            "image_grid_thw": batch["image_grid_thw"],
            "attention_mask": batch["attention_mask"],
        }
        get_rope_index = self.model.model.get_rope_index
        if "mm_token_type_ids" in inspect.signature(get_rope_index).parameters:
            token_types = batch.get("mm_token_type_ids")
            if token_types is None:  # text 0, image 1: what the processor returns beside input_ids
                token_types = (input_ids == self.model.config.image_token_id).to(torch.int)
            arguments["mm_token_type_ids"] = token_types
        positions, _ = get_rope_index(**arguments)
        return torch.as_tensor(positions)

    # -- prefill ---------------------------------------------------------------------------------------------
    def base_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.unpruned_positions(batch)

    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """One group per image (sizes differ): its merged tokens, already in the LLM's space, no [CLS]."""
        output, summaries = self.run_vision(batch, request)
        grid_thw = batch["image_grid_thw"]
        features = _pooler_output(output, grid_thw, self.merge_size)
        deepstack = self.image_deepstack(output, grid_thw)
        merge = self.merge_size
        groups = []
        for image, (embeddings, (_, rows, cols)) in enumerate(zip(features, grid_thw.tolist(), strict=True)):
            layout = VisualLayout(embeddings.shape[0], ((rows // merge, cols // merge),), has_cls=False, merge=merge)
            attention = summaries[image] if summaries is not None else None
            levels = tuple(level[None] for level in deepstack[image])
            groups.append(
                VisualGroup(embeddings[None], attention, layout, _identity, layout.num_tokens, deepstack=levels)
            )
        return groups

    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """Per sample: vision tower and merger on its images, the LLM on the kept tokens; the tap attends over each
        image's patches (before merging). The merged tokens are already projected: no projector cost for any
        strategy."""
        config = self.model.config
        width = config.vision_config.embed_dim if hasattr(config.vision_config, "embed_dim") else None
        width = width or config.vision_config.hidden_size
        grids = batch["image_grid_thw"].tolist()
        costs = []
        first = 0
        for sample, count in enumerate(inputs.images_per_sample):
            sample_grids = grids[first : first + count]
            first += count
            visual = int(inputs.visual_tokens[sample])
            base = qwen2_vl_flops(config, sample_grids, visual, int(inputs.text_tokens[sample]))
            tapped = tuple(t * h * w for t, h, w in sample_grids)
            costs.append(SampleCost(base, tapped, False, int(width)))
        return costs


def _identity(features: torch.Tensor) -> torch.Tensor:
    return features


class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: as :class:`Qwen2VLAdapter`, with windowed attention in most vision blocks.

    - Only the blocks in ``vision_config.fullatt_block_indexes`` attend over the whole image; the others attend
      within windows, so their attention says nothing about global significance. The default tap is the last
      full-attention block; a windowed block is refused (:class:`ConfigError` naming the valid layers).
    - Before the blocks the tower permutes its tokens into window order, by merge units of ``merge_size**2``
      patches (and the merger's output is permuted back). The tapped layer's statistics are therefore in window
      order; they are mapped back to the processor's order with the tower's own window index before pooling.
    """

    model_class: Any = Qwen2_5_VLForConditionalGeneration
    processor_class: Any = ImageOnlyQwen25VLProcessor

    def full_attention_layers(self) -> list[int]:
        """Indices of the vision blocks that attend over the whole image."""
        return sorted(int(index) for index in self.model.config.vision_config.fullatt_block_indexes)

    def default_tap_layer(self) -> int:
        return self.tap_layer if self.tap_layer is not None else self.full_attention_layers()[-1]

    def tap_index(self, source: PruningRequest | SignificanceSource) -> int:
        index = super().tap_index(source)
        valid = self.full_attention_layers()
        if index not in valid:
            raise ConfigError(
                f"vision layer {index} of {type(self).__name__} uses windowed attention; significance needs a "
                f"full-attention layer: one of {valid} (significance.layer or the model's tap_layer)"
            )
        return index

    def window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """The tower's window order over all images' merge units (concatenated image after image)."""
        visual: Any = self.visual
        if hasattr(visual, "get_window_index"):  # transformers releases that keep it on the tower
            window_index, _ = visual.get_window_index(grid_thw)
        else:
            from transformers.vision_utils import get_vision_window_index

            window_index, _ = get_vision_window_index(
                grid_thw,
                spatial_merge_size=visual.spatial_merge_size,
                window_size=visual.window_size,
                patch_size=visual.patch_size,
            )
        return torch.as_tensor(window_index)

    def unit_orders(self, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        window_index = self.window_index(grid_thw)
        counts: Sequence[int] = (grid_thw.prod(-1) // self.merge_size**2).tolist()
        orders = []
        offset = 0
        for count in counts:
            # Full-attention layers attend per image, and each image's units stay contiguous in window order.
            orders.append(window_index[offset : offset + count] - offset)
            offset += count
        return orders
