"""InternVL3 (``OpenGVLab/InternVL3-{1,2,8}B-hf``): InternViT tiles plus a thumbnail, pixel shuffle, a Qwen2.5 LLM.

Without torchvision, transformers cannot construct the stock ``InternVLProcessor``: its constructor checks the
(absent) video processor's class and fails (``VIDEO_PROCESSOR_MAPPING`` has no ``_extra_content``). The image-only
processor below declares no ``video_processor`` argument, so transformers neither checks, saves nor loads one;
images are processed exactly as by the stock processor (same dynamic tiling and ``<IMG_CONTEXT>`` expansion),
videos are not supported. The image processor is always the PIL backend (``GotOcr2ImageProcessorPil``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import GotOcr2ImageProcessorPil, InternVLForConditionalGeneration, InternVLProcessor

from fopru.efficiency.flops import internvl_flops, square_size
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.base import TargetModel, check_feature_selection
from fopru.models.inputs import LanguageInputs, SampleCost, VisualGroup
from fopru.models.pruning import projector_tokens
from fopru.significance.attention import AttentionSummary
from fopru.significance.pooling import pool_merged

if TYPE_CHECKING:
    from fopru.pipeline import PruningRequest

#: How a prompt marks one image (the checkpoints' chat template writes it so); the processor expands it to
#: ``<img>``, 256 ``<IMG_CONTEXT>`` per crop, ``</img>``.
IMAGE_PROMPT = "<IMG_CONTEXT>"
#: How the budget is split across an image's crops (:class:`InternVLAdapter`).
BUDGET_SPLITS = ("per_crop", "per_image")


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """``InternVLProcessor`` without a video processor (constructible, savable and loadable without torchvision)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        # transformers derives the sub-processors from this signature: no video_processor, so none is checked.
        super().__init__(image_processor, tokenizer, None, image_seq_length, chat_template, **kwargs)


@dataclass(frozen=True)
class TileGeometry:
    """The shapes one crop (a tile or the thumbnail) goes through.

    Attributes:
        patches: (rows, cols) of a crop's patch grid (32 x 32 for 448-pixel crops of 14-pixel patches).
        merge: patches merged per side by the pixel shuffle (2 for ``downsample_ratio = 0.5``).
    """

    patches: tuple[int, int]
    merge: int

    @property
    def tokens(self) -> tuple[int, int]:
        """(rows, cols) of a crop's LLM tokens after the pixel shuffle (16 x 16)."""
        return self.patches[0] // self.merge, self.patches[1] // self.merge

    @property
    def tokens_per_crop(self) -> int:
        rows, cols = self.tokens
        return rows * cols


class InternVLAdapter(TargetModel):
    """InternVL3: InternViT-300M (448-pixel crops, patch 14, [CLS]), pixel shuffle 0.5, an MLP projector, Qwen2.5.

    - Crops: the processor resizes each image to the tile grid (columns x rows of 448-pixel tiles, at most
      ``max_patches``, 12 for the checkpoints) whose aspect ratio is closest to the image's, cuts it into tiles in
      raster order and, when there are several, appends a thumbnail (the whole image at 448 pixels). Every crop
      runs through the vision tower on its own (one sequence of [CLS] + 32 x 32 patches each).
    - Tokens: the features of ``vision_feature_layer`` (-1 for InternVL3: the last layer's output), [CLS] dropped
      (``vision_feature_select_strategy = "default"``), are pixel-shuffled (``downsample_ratio = 0.5``): each 2 x 2
      block of patches becomes one token of 4x the width, in raster order over the crop's 16 x 16 token grid, then
      projected. The prompt holds ``<img>``, 256 ``<IMG_CONTEXT>`` per crop (tiles first, thumbnail last),
      ``</img>``; the N = 256 * crops context tokens are the candidates, in that order.
    - Significance: the attention of the vision layer producing the features (the last, 23 of 24, for -1), tapped
      on every crop at once; ``tap_layer`` or the source's ``layer`` choose another. [CLS] is present in every
      crop's sequence: sources reading [CLS] attention (``cls``, the baselines' saliency) read the [CLS] of the
      crop the patch belongs to. Patch statistics (``received``, ``paid``, ``cls``, PruMerge's ``cls_joint``) are
      summed over each 2 x 2 pixel-shuffle block, as for Qwen2-VL's merger; keys are not mapped (a shuffled token
      has no single key), so similarity-based strategies measure it on the shuffled features. No [CLS] features are
      handed over (``VisualGroup.cls_features``): every crop has its own, at the tower's width rather than the
      shuffled tokens' 4x width the projector reads, so VisionZip's ``keep_cls`` keeps patches only, as on LLaVA-NeXT.
    - Budget: the family's natural unit is the crop. An image is one layout with one 16 x 16 grid per crop
      (tiles, then thumbnail), so the budget splits per crop in proportion to its tokens: rank keeps
      ``max(1, floor(keep * 256))`` of every crop, row ``max(1, floor(keep * 16))`` rows of every crop, as
      LLaVA-NeXT splits between its base image and tiles. The thumbnail, the only view of the whole image, always
      keeps its share. ``keep_tokens`` is a fraction of the image's N tokens. ``budget_split="per_image"`` pools
      the budget over the whole image instead: its crops are stacked into one (16 * crops) x 16 grid (the same
      token order), so rank keeps the image's ``max(1, floor(keep * N))`` most significant tokens wherever they
      lie, row whole rows of the stack, and a crop may keep nothing.
    - Pruning happens on the shuffled features before the projector (per token, so selection commutes with it);
      merging strategies average shuffled features. Images differ in crop count: each is pruned on its own.
    - Positions (1-D RoPE): ``compact`` (``auto`` resolves to it) or ``original``, as for LLaVA.
    Only ``vision_feature_select_strategy="default"`` with one integer feature layer is supported.

    Args (besides :class:`TargetModel`'s):
        budget_split: ``per_crop`` (default: every tile and the thumbnail keep their share) or ``per_image`` (one
            budget over the image's stacked crops).
    """

    model_class: Any = InternVLForConditionalGeneration
    # The crops of an image are counted from its prompt's <IMG_CONTEXT> run, not from the pixel rows: the vision
    # cache, which splits a batch by image from its vision inputs alone, does not apply.
    caches_vision = False
    processor_class: Any = ImageOnlyInternVLProcessor
    prompt_template = f"<|im_start|>user\n{IMAGE_PROMPT}\n{{text}}<|im_end|>\n<|im_start|>assistant\n"

    def __init__(
        self,
        checkpoint: str,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        device: str = "cpu",
        tap_layer: int | None = None,
        budget_split: str = "per_crop",
    ) -> None:
        super().__init__(checkpoint, dtype, attn_implementation, device, tap_layer)
        if budget_split not in BUDGET_SPLITS:
            raise ConfigError(f"model.budget_split={budget_split!r} is not one of {list(BUDGET_SPLITS)}")
        self.budget_split = budget_split

    def load_processor(self, path: str) -> Any:
        processor = self.processor_class.from_pretrained(path)
        # transformers picks the torchvision backend where torchvision is installed; pin the PIL one so that
        # every machine feeds the model the same pixels.
        if not isinstance(processor.image_processor, GotOcr2ImageProcessorPil):
            processor.image_processor = GotOcr2ImageProcessorPil.from_pretrained(path)
        return processor

    # -- the vision tower ------------------------------------------------------------------------------------
    def vision_layers(self) -> nn.ModuleList:
        layers = self.model.model.vision_tower.encoder.layer
        assert isinstance(layers, nn.ModuleList)
        return layers

    def attention_of(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule("attention")

    def default_tap_layer(self) -> int:
        if self.tap_layer is not None:
            return self.tap_layer
        feature_layer = int(self.model.config.vision_feature_layer)
        if feature_layer == 0:
            raise ConfigError(
                "vision_feature_layer=0 reads the patch embeddings, which no attention layer produces; set "
                "model.tap_layer to the vision layer significance should come from"
            )
        # hidden_states[f] is the output of layers[f] for f < 0, of layers[f - 1] for f >= 1.
        return feature_layer if feature_layer < 0 else feature_layer - 1

    def check_features(self) -> None:
        """Refuse feature settings the adapter does not handle: [CLS] kept, or several feature layers."""
        check_feature_selection(self.model.config, "default", type(self).__name__)

    def geometry(self) -> TileGeometry:
        """A crop's patch grid and the pixel shuffle's merge factor, from the checkpoint's config."""
        config = self.config()
        vision = config.vision_config
        image, patch = square_size("image_size", vision.image_size), square_size("patch_size", vision.patch_size)
        ratio = float(config.downsample_ratio)
        merge = round(1 / ratio)
        side = image // patch
        if not math.isclose(merge * ratio, 1.0) or side % merge:
            raise ConfigError(
                f"downsample_ratio={ratio} must be 1 / m for a whole m dividing the {side} x {side} patch grid"
            )
        return TileGeometry((side, side), merge)

    def crop_counts(self, batch: Mapping[str, torch.Tensor]) -> list[int]:
        """Crops (tiles plus thumbnail) of every image of a prepared batch, in batch order, read from the prompt:
        each image's ``<IMG_CONTEXT>`` run holds 256 tokens per crop."""
        image_token = int(self.model.config.image_token_id)
        per_crop = self.geometry().tokens_per_crop
        counts: list[int] = []
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            is_image = (ids[mask.bool()] == image_token).to(torch.int8)
            edges = torch.diff(is_image, prepend=is_image.new_zeros(1), append=is_image.new_zeros(1))
            starts, stops = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
            for length in (stops - starts).tolist():
                if length % per_crop:
                    raise ConfigError(
                        f"an image has {length} {IMAGE_PROMPT} placeholders, not a multiple of the {per_crop} tokens "
                        "per crop; prepare batches with the adapter's processor"
                    )
                counts.append(length // per_crop)
        crops = int(batch["pixel_values"].shape[0])
        if sum(counts) != crops:
            raise ConfigError(f"the prompts hold {sum(counts)} crops' placeholders but pixel_values has {crops} crops")
        return counts

    def encode(
        self, pixel_values: torch.Tensor, request: PruningRequest
    ) -> tuple[torch.Tensor, AttentionSummary | None]:
        """(C, n, 4 D_vision) pixel-shuffled features of every crop (raster order over its token grid, before the
        projector) and the tap's summary over the same n tokens (patch statistics summed per 2 x 2 block)."""
        self.check_features()
        config = self.model.config
        layer = int(config.vision_feature_layer)
        geometry = self.geometry()
        with self.phase("vision"), self.tap(request, has_cls=True) as tap:
            vision = self.model.model.vision_tower(
                pixel_values.to(self.device, self.dtype), output_hidden_states=layer != -1
            )
        hidden = vision.last_hidden_state if layer == -1 else vision.hidden_states[layer]
        crops = hidden.shape[0]
        patches = hidden[:, 1:].reshape(crops, *geometry.patches, -1)
        shuffled = self.model.model.pixel_shuffle(patches, scale_factor=float(config.downsample_ratio))
        features = shuffled.reshape(crops, geometry.tokens_per_crop, -1)
        if tap is None:
            return features, None
        return features, _pooled(tap.summary(), geometry)

    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """One group per image (images differ in crop count): its crops' tokens, tiles then thumbnail, one grid per
        crop, projected by the MLP projector."""
        counts = self.crop_counts(batch)
        features, attention = self.encode(batch["pixel_values"], request)
        projector: nn.Module = self.model.model.multi_modal_projector
        groups: list[VisualGroup] = []
        start = 0
        for count in counts:
            part = slice(start, start + count)
            layout = self.image_layout(count)
            summary = None if attention is None else _crops(attention, part)
            groups.append(
                VisualGroup(features[part].flatten(0, 1)[None], summary, layout, projector, layout.num_tokens)
            )
            start += count
        return groups

    def image_layout(self, crops: int) -> VisualLayout:
        """An image of ``crops`` crops: one token grid per crop, so the budget splits per crop; with
        ``budget_split="per_image"`` the crops stacked into one grid (crop-major raster order is unchanged)."""
        geometry = self.geometry()
        rows, cols = geometry.tokens
        grids = ((rows * crops, cols),) if self.budget_split == "per_image" else ((rows, cols),) * crops
        return VisualLayout(geometry.tokens_per_crop * crops, grids, has_cls=True, merge=geometry.merge)

    # -- costs -----------------------------------------------------------------------------------------------
    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """Per sample: the vision tower and the tap on every crop of its images, the projector on the kept tokens
        (on all N for strategies that read projected tokens), the LLM on the kept tokens."""
        config = self.model.config
        geometry = self.geometry()
        counts = self.crop_counts(batch)
        patches = geometry.patches[0] * geometry.patches[1]
        costs = []
        image = 0
        for sample in range(len(inputs.images_per_sample)):
            kept = inputs.sample_images(sample)
            crops = sum(counts[image : image + len(kept)])
            image += len(kept)
            projected = sum(projector_tokens(request, one.num_tokens, len(one.indices)) for one in kept)
            breakdown = internvl_flops(
                config, crops, int(inputs.visual_tokens[sample]), int(inputs.text_tokens[sample]), projected
            )
            costs.append(SampleCost(breakdown, (patches,) * crops, True, int(config.vision_config.hidden_size)))
        return costs


def _pooled(summary: AttentionSummary, geometry: TileGeometry) -> AttentionSummary:
    """Every crop's patch statistics summed over each pixel-shuffle block: (C, tokens per crop), raster order."""

    def pool(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else pool_merged(values, (geometry.patches,), geometry.merge)

    received, paid = pool(summary.received), pool(summary.paid)
    assert received is not None and paid is not None
    return AttentionSummary(received=received, paid=paid, cls=pool(summary.cls), cls_joint=pool(summary.cls_joint))


def _crops(summary: AttentionSummary, part: slice) -> AttentionSummary:
    """One image's (1, N) summary: its crops' rows, flattened crop-major."""

    def take(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values[part].flatten()[None]

    received, paid = take(summary.received), take(summary.paid)
    assert received is not None and paid is not None
    return AttentionSummary(received=received, paid=paid, cls=take(summary.cls), cls_joint=take(summary.cls_joint))
