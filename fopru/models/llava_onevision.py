"""LLaVA-OneVision (``llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf``): SigLIP without [CLS], AnyRes tiles with
unpadding and ``anyres_max_9`` downsampling, image newlines, a Qwen2 LLM.

Without torchvision, transformers cannot construct the stock ``LlavaOnevisionProcessor``: its constructor checks
the (absent) video processor's class. :class:`ImageOnlyLlavaOnevisionProcessor` declares no ``video_processor``
argument, so transformers neither checks, saves nor loads one; images are processed exactly as by the stock
processor (same ``<image>`` expansion), videos are not supported. The image processor is always the PIL backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from fopru.efficiency.flops import llava_flops
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.base import check_feature_selection
from fopru.models.inputs import LanguageInputs, SampleCost, VisualGroup
from fopru.models.llava import LlavaAdapter
from fopru.models.llava_next import PackedGrid, anyres_image_inputs, read_packing
from fopru.significance.attention import AttentionSummary

if TYPE_CHECKING:
    from fopru.pipeline import PruningRequest


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without a video processor (constructible, savable and loadable without
    torchvision)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ) -> None:
        # transformers derives the sub-processors and the saved settings from this signature: no video_processor,
        # so none is checked; the named settings are saved with the processor and read back.
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


class LlavaOnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision: SigLIP-so400m/14-384 (27 x 27 patches per crop, no [CLS]), AnyRes tiles, a 2-layer MLP
    projector, a Qwen2 LLM (1-D RoPE).

    - Significance: the attention of the vision layer producing ``vision_feature_layer``'s features (``-1``: the
      last of the tower's 26 layers, the one whose output the projector reads), run on all crops (base image and
      tiles) of all images at once; each crop's statistics come from its own attention. ``tap_layer`` or the
      significance source's ``layer`` choose another one. SigLIP has no [CLS]: patch rows sum to 1, so focal's
      variance rule picks the attention received; strategies that read [CLS] attention (FasterVLM-style saliency,
      PruMerge's joint softmax) fall back to the attention each token receives, as for Qwen2-VL, and
      ``significance=cls`` is refused with a clear message.
    - What the LLM sees per image, as the model packs it: the base grid (27 x 27) in raster order, then the tiles
      arranged into one large grid, unpadded to the image's aspect ratio and, when that grid holds more than
      1.1**2 * 9 crops' worth of patches (``vision_aspect_ratio="anyres_max_9"``), bilinearly downsampled by the
      model to ``(int(rows // r), int(cols // r))`` with ``r = sqrt(rows * cols / (9 * 27**2))``; an
      image-newline token follows every row of that grid.
    - The model projects every crop patch *before* packing (the downsampling blends projected features), so the
      candidates are the packed, projected tokens the LLM would receive: the adapter runs the projector on all
      crop patches and the model's own ``pack_image_features`` on them (bit-identical to the stock features), and
      prunes among its grid tokens (the projection step of pruning is the identity). Every token the LLM would see
      has a score: the per-crop statistics (``received``, ``paid``, and the keys similarity-based strategies read)
      are packed by the same ``pack_image_features`` as extra channels, so tiling, unpadding and downsampling
      apply to them exactly as to the features. Bilinear resampling is linear and acts on each channel alone, so a
      downsampled token's statistic is the same bilinear blend (weights summing to 1) of its source patches'
      statistics as its feature is of their features; without downsampling it is the patch's own statistic.
    - Unpadding happens before pruning: padding bands never reach the LLM, so they are not candidates and do not
      count in the budget (they still act as keys and queries inside the vision encoder).
    - Budget, newlines and positions as for LLaVA-NeXT (:class:`~fopru.models.llava_next.LlavaNextAdapter`): a
      two-grid :class:`VisualLayout` per image (base grid, packed tile grid), each getting its share; a tile row's
      newline is kept iff the row keeps a token; ``KeptImage.indices`` index the packed sequence, so ``compact``
      (``auto``) and ``original`` positions work as for LLaVA-1.5. Merging strategies (pool) average projected
      tokens within each grid. ``norm`` significance reads the projected tokens' norms.
    Only ``vision_feature_select_strategy="full"`` (SigLIP has no [CLS] to drop) with one integer feature layer,
    and one image per sample (the model does not tile the images of a multi-image sample), are supported.
    """

    model_class: Any = LlavaOnevisionForConditionalGeneration
    vision_inputs = ("image_sizes", "pixel_values", "batch_num_images")  # sizes first: one row per image
    groups_images = False
    processor_class: Any = ImageOnlyLlavaOnevisionProcessor

    def load_processor(self, path: str) -> Any:
        processor = self.processor_class.from_pretrained(path)
        # transformers picks the torchvision backend where torchvision is installed; pin the PIL one so that
        # every machine feeds the model the same pixels.
        if not isinstance(processor.image_processor, LlavaOnevisionImageProcessorPil):
            processor.image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(path)
        return processor

    def visual_tokens_per_image(self) -> int | None:
        return None  # any-resolution tiling: the count depends on the image's size

    def patch_view(self, batch: Mapping[str, torch.Tensor], image: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
        return None  # base grid plus tiles: no single grid to draw on

    def check_features(self) -> None:
        """Refuse feature settings the adapter does not handle: [CLS]-dropping selection, several feature layers."""
        check_feature_selection(self.model.config, "full", type(self).__name__, " (SigLIP has no [CLS])")

    def image_layout(self) -> VisualLayout:
        """One crop's tokens: its patch grid, no [CLS] (SigLIP)."""
        return VisualLayout.from_grid(self.grid(), has_cls=False)

    def crop_counts(self, image_sizes: torch.Tensor) -> list[int]:
        """Crops (base image + tiles) of each image, as the model counts them."""
        config = self.model.config
        return [
            int(image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size))
            for size in image_sizes
        ]

    def pack(self, crops: torch.Tensor, image_size: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
        """(length, C): one image's (crops, patches, C) per-crop values packed by the model's own
        ``pack_image_features`` (tiles arranged, unpadded, downsampled, ``newline`` after every tile row)."""
        packed, _ = self.model.model.pack_image_features(
            [crops],
            image_size[None].cpu(),
            image_newline=newline,
            vision_aspect_ratio=self.model.config.vision_aspect_ratio,
        )
        result: torch.Tensor = packed[0]
        return result

    def packing(self, crops: int, image_size: torch.Tensor) -> PackedGrid:
        """How the model packs an image with ``crops`` crops and original (height, width) size."""
        base = self.grid()
        if crops < 2:
            raise ConfigError(f"an AnyRes image needs a base crop and at least one tile, got {crops} crop(s)")
        # Zeros stay zeros through resampling; the newlines the model inserts carry 1.
        markers = torch.zeros((crops, base[0] * base[1], 1), dtype=torch.float64)
        packed = self.pack(markers, image_size, torch.ones(1, dtype=torch.float64))
        return read_packing(packed[:, 0] > 0.5, base, False, type(self).__name__)

    def resample(
        self, attention: AttentionSummary, crops: slice, image_size: torch.Tensor, packing: PackedGrid
    ) -> AttentionSummary:
        """One image's (1, N) summary over its packed grid tokens: its crops' statistics (and keys) packed as
        extra channels by :meth:`pack`, so that they are tiled, unpadded and resampled exactly as the features."""
        channels = [attention.received[crops, :, None], attention.paid[crops, :, None]]
        if attention.keys is not None:
            channels.append(attention.keys[crops])
        values = torch.cat([channel.float() for channel in channels], dim=-1)
        packed = self.pack(values, image_size, values.new_zeros(values.shape[-1]))
        grid = packed[packing.positions.to(packed.device)][None]
        return AttentionSummary(
            received=grid[..., 0],
            paid=grid[..., 1],
            cls=None,
            keys=grid[..., 2:] if attention.keys is not None else None,
            key_heads=attention.key_heads,
        )

    def image_inputs(self, batch: Mapping[str, torch.Tensor], image: int) -> dict[str, torch.Tensor]:
        """The image's own crops, its size and its image count, as for LLaVA-NeXT."""
        return anyres_image_inputs(batch, image, self.crop_counts)

    def check_single_images(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Refuse samples with several images: the model encodes those without tiles, one base crop each."""
        per_sample = batch.get("batch_num_images")
        if per_sample is not None and bool((torch.as_tensor(per_sample) != 1).any()):
            raise ConfigError(
                f"{type(self).__name__} prunes one AnyRes-tiled image per sample, got batch_num_images="
                f"{torch.as_tensor(per_sample).tolist()}; the model does not tile the images of a multi-image sample"
            )

    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """One group per image (images differ in packed layout): its packed, projected grid tokens, with the row
        newlines added after pruning."""
        self.check_single_images(batch)
        pixel_values = batch["pixel_values"]
        image_sizes = batch["image_sizes"]
        counts = self.crop_counts(image_sizes)
        if pixel_values.dim() == 5:  # (images, padded crops, C, H, W), as the processor returns it
            pixel_values = torch.cat([crops[:count] for crops, count in zip(pixel_values, counts, strict=True)])
        features, attention = self.encode(pixel_values, request, self.image_layout())
        with self.phase("vision"):
            projected = self.model.model.multi_modal_projector(features)
        newline: torch.Tensor = self.model.model.image_newline
        groups: list[VisualGroup] = []
        start = 0
        for count, image_size in zip(counts, image_sizes, strict=True):
            crops = slice(start, start + count)
            packing = self.packing(count, image_size)
            tokens = self.pack(projected[crops], image_size, newline)[packing.positions.to(projected.device)]
            groups.append(
                VisualGroup(
                    tokens[None],
                    None if attention is None else self.resample(attention, crops, image_size, packing),
                    packing.layout(),
                    _identity,
                    packing.length,
                    partial(packing.add_newlines, newline=newline),
                )
            )
            start += count
        return groups

    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """Per sample: the vision tower, the tap and the projector on every crop patch (the model projects before
        packing), the LLM on the kept tokens with their newlines. Packing and resampling are not matrix products."""
        config = self.model.config
        patches = self.image_layout().num_tokens
        counts = self.crop_counts(batch["image_sizes"])
        costs = []
        first = 0
        for sample, images in enumerate(inputs.images_per_sample):
            crops = sum(counts[first : first + images])
            first += images
            base = llava_flops(
                config,
                int(inputs.visual_tokens[sample]),
                int(inputs.text_tokens[sample]),
                images=crops,
                projector_tokens=crops * patches,
            )
            costs.append(SampleCost(base, (patches,) * crops, False, int(config.vision_config.hidden_size)))
        return costs


def _identity(features: torch.Tensor) -> torch.Tensor:
    return features
