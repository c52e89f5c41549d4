"""LLaVA-NeXT / LLaVA-1.6 (``llava-hf/llava-v1.6-{vicuna,mistral}-7b-hf``): AnyRes tiling, unpadding, image newlines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, image_size_to_num_patches

from fopru.efficiency.flops import llava_flops
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.inputs import KeptImage, LanguageInputs, SampleCost, VisualGroup
from fopru.models.llava import LlavaAdapter
from fopru.models.pruning import projector_tokens
from fopru.significance.attention import AttentionSummary

if TYPE_CHECKING:
    from fopru.pipeline import PruningRequest


@dataclass(frozen=True)
class PackedGrid:
    """Where one image's grid tokens and newlines sit in the sequence the language model sees (AnyRes packing).

    The LLaVA-NeXT-style models pack an image as: the base image's ``base`` grid in raster order, then the tiles
    arranged into one large grid (unpadded to the image's aspect ratio; LLaVA-OneVision may also downsample it),
    ``grid`` = its rows x cols, each of its rows followed by one image-newline token. The N = base rows * base cols
    + rows * cols grid tokens are the candidates for pruning, in that order (the :class:`VisualLayout` order);
    newlines are not candidates.

    Attributes:
        base: (rows, cols) of the base image's patch grid.
        grid: (rows, cols) of the packed tile grid.
        positions: (N,) int64 position of each grid token in the packed sequence.
        newlines: (rows,) int64 position of each tile-grid row's newline in the packed sequence.
        length: the packed length (grid tokens + newlines): the image's placeholder count in the prompt.
        has_cls: whether each crop's tower sequence holds a [CLS] token.
    """

    base: tuple[int, int]
    grid: tuple[int, int]
    positions: torch.Tensor
    newlines: torch.Tensor
    length: int
    has_cls: bool = True

    def layout(self) -> VisualLayout:
        """Two grids, base then packed tiles, so the budget is split between them."""
        rows, cols = self.grid
        base_tokens = self.base[0] * self.base[1]
        return VisualLayout(num_tokens=base_tokens + rows * cols, grids=(self.base, self.grid), has_cls=self.has_cls)

    def add_newlines(self, kept: KeptImage, newline: torch.Tensor) -> KeptImage:
        """``kept`` (indices into the layout's N tokens) re-indexed into the packed sequence, with newlines.

        A tile-grid row's newline is kept iff the row keeps at least one token (a merged token counts for the
        row of its representative); it follows the row's last kept token in sequence order, so with raster
        order the result is a subsequence of the packed sequence.
        """
        base_tokens = self.base[0] * self.base[1]
        order = torch.arange(kept.indices.shape[0], device=kept.indices.device)
        in_grid = kept.indices >= base_tokens
        rows = (kept.indices[in_grid] - base_tokens) // self.grid[1]
        last = torch.full((self.grid[0],), -1, dtype=torch.long, device=order.device)
        last = last.scatter_reduce(0, rows, order[in_grid], reduce="amax")
        kept_rows = (last >= 0).nonzero().flatten()
        keys = torch.cat([2 * order, 2 * last[kept_rows] + 1]).argsort()
        indices = torch.cat([self.positions.to(order.device)[kept.indices], self.newlines.to(order.device)[kept_rows]])
        newlines = newline.to(kept.embeddings)[None].expand(kept_rows.shape[0], -1)
        embeddings = torch.cat([kept.embeddings, newlines])
        return KeptImage(embeddings[keys], indices[keys], self.length, kept.pruning_flops)


def read_packing(markers: torch.Tensor, base: tuple[int, int], has_cls: bool, who: str) -> PackedGrid:
    """The :class:`PackedGrid` of a packed sequence whose ``markers`` ((length,) bool) are True at the newlines,
    checked against the base grid + rows-each-followed-by-a-newline arrangement the adapters rely on."""
    patches = base[0] * base[1]
    newlines = markers.nonzero().flatten()
    rows = newlines.shape[0]
    cols = (markers.shape[0] - patches - rows) // max(rows, 1)
    expected = patches + (cols + 1) * torch.arange(1, rows + 1) - 1
    if rows == 0 or cols < 1 or bool(markers[:patches].any()) or not torch.equal(newlines, expected):
        raise ConfigError(
            "the model's pack_image_features no longer packs an image as base grid + tile rows each followed by a "
            f"newline; this transformers version is not supported by {who}"
        )
    positions = (~markers).nonzero().flatten()
    return PackedGrid(base, (rows, cols), positions, newlines, int(markers.shape[0]), has_cls)


@dataclass(frozen=True)
class AnyresPacking(PackedGrid):
    """LLaVA-NeXT's :class:`PackedGrid`, whose every grid token is one crop patch.

    Attributes:
        sources: (N,) int64 index of each grid token among the image's crops' patches, crop-major
            (``crop * patches_per_crop + patch``); crop 0 is the base image.
    """

    sources: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


@dataclass(frozen=True)
class CropPacking:
    """One image pruned crop by crop (``PruningRequest.per_crop``), and how its crops' tokens are arranged.

    Every crop (the base image, then the tiles in row-major order over the AnyRes tile grid; padded tiles, nothing
    unpadded) is one ``crop`` grid of the layout, with its own [CLS]. The arrangement is the one VisionZip's
    released code sends on LLaVA-NeXT (``visionzip/llava_arch.py``, ``restore_image_features_sorted``): the base
    crop's tokens as the strategy emits them; the tiles' placed tokens put back on the whole tiled grid
    (``tiles[0] * crop rows`` x ``tiles[1] * crop cols``) and read in its raster order; the tiles' [CLS] tokens,
    tile by tile; the tiles' trailing summaries, tile by tile. No image newlines.

    Attributes:
        tiles: (rows, cols) of the AnyRes tile grid.
        crop: (rows, cols) of one crop's patch grid.
        has_cls: whether each crop's tower sequence holds a [CLS] token.
    """

    tiles: tuple[int, int]
    crop: tuple[int, int]
    has_cls: bool = True

    @property
    def crops(self) -> int:
        """The base image plus the tiles."""
        return 1 + self.tiles[0] * self.tiles[1]

    def layout(self) -> VisualLayout:
        """One grid per crop, so that every crop gets its own budget share (``keep`` of its patches)."""
        patches = self.crop[0] * self.crop[1]
        return VisualLayout(num_tokens=self.crops * patches, grids=(self.crop,) * self.crops, has_cls=self.has_cls)

    def arrange(self, kept: KeptImage, placeholders: int, summaries: Callable[[int], int]) -> KeptImage:
        """The crops' pruned tokens in the released arrangement, as one image filling ``placeholders``.

        ``kept`` holds, with ``leading_cls``, every crop's [CLS] first (crop order), then each crop's tokens in turn
        (indices into the layout, crop-major); each crop's last ``summaries(k)`` of its k tokens ([CLS] included)
        are summaries. The result's indices are each token's place in its crops' tower sequences (crop-major,
        [CLS] first in each crop): the arranged sequence has no packed offsets.
        """
        crops, (rows, cols) = self.crops, self.crop
        patches = rows * cols
        lead = crops if kept.leading_cls else 0
        if kept.indices.shape[0] % crops:
            raise ConfigError(
                f"a per-crop strategy must keep the same count in each of the {crops} crops, got "
                f"{kept.indices.shape[0]} tokens"
            )
        per_crop = kept.indices.shape[0] // crops
        summary = summaries(per_crop + int(kept.leading_cls))
        placed = per_crop - summary
        device = kept.indices.device
        cls_slots = torch.arange(lead, device=device)
        slots = lead + torch.arange(crops * per_crop, device=device).view(crops, per_crop)  # into kept.embeddings
        crop_of = torch.arange(crops, device=device)[:, None]
        patch = kept.indices.view(crops, per_crop) - crop_of * patches
        sequence = int(self.has_cls)
        sources = torch.cat(
            [cls_slots * (patches + sequence), (crop_of * (patches + sequence) + sequence + patch).flatten()]
        )  # each embedding's place in the crops' tower sequences
        tile = crop_of[1:] - 1
        tile_row, tile_col = tile // self.tiles[1], tile % self.tiles[1]
        grid_row = tile_row * rows + patch[1:, :placed] // cols
        grid_col = tile_col * cols + patch[1:, :placed] % cols
        on_grid = (grid_row * self.tiles[1] * cols + grid_col).flatten().argsort()
        order = torch.cat(
            [
                cls_slots[:1],
                slots[0],
                slots[1:, :placed].flatten()[on_grid],
                cls_slots[1:],
                slots[1:, placed:].flatten(),
            ]
        )
        return KeptImage(kept.embeddings[order], sources[order], placeholders, kept.pruning_flops)


def anyres_image_inputs(
    batch: Mapping[str, torch.Tensor], image: int, crop_counts: Callable[[torch.Tensor], list[int]]
) -> dict[str, torch.Tensor]:
    """Image ``image``'s part of an AnyRes batch (the vision cache's unit): its own crops (the processor pads every
    image to the batch's most crops, or concatenates them), its size, and its other per-image rows (e.g.
    ``batch_num_images``) where the batch has them."""
    image_sizes = batch["image_sizes"][image : image + 1]
    pixel_values = batch["pixel_values"]
    if pixel_values.dim() == 5:
        crops = pixel_values[image, : crop_counts(image_sizes)[0]]
    else:  # crops already concatenated over images
        counts = crop_counts(batch["image_sizes"])
        start = sum(counts[:image])
        crops = pixel_values[start : start + counts[image]]
    part = {"pixel_values": crops, "image_sizes": image_sizes}
    if "batch_num_images" in batch:
        part["batch_num_images"] = torch.as_tensor(batch["batch_num_images"])[image : image + 1]
    return part


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (AnyRes): a base image plus tiles, each a CLIP crop (24 x 24 patches + [CLS] for ViT-L/14-336).

    - Significance: the tapped vision layer (the one producing ``vision_feature_layer``'s features, [CLS] present,
      as for LLaVA-1.5) runs on all crops of all images at once; each crop's scores come from its own attention.
      Sources that decide per image (focal's variance rule) decide once over the image's base and tile tokens.
    - What the LLM sees per image, as the model packs it: the base grid in raster order, then the tiles arranged
      into one large grid, unpadded to the image's aspect ratio, with an image-newline token after every row.
      The adapter asks the model's own ``pack_image_features`` (``get_anyres_image_grid_shape``, ``unpad_image``)
      to pack a map of crop-patch indices, so significance, features and positions follow exactly the
      arrangement of the features and every token the LLM would see has a score.
    - Unpadding happens *before* pruning: the patches of the padding bands that unpadding removes never reach
      the LLM, so they are not candidates and do not count in the budget (they still act as keys and queries inside
      the vision encoder, so they shape the other patches' attention).
    - Budget: a two-grid :class:`VisualLayout` per image, the base grid and the unpadded tile grid, each getting
      its share: rank keeps ``max(1, floor(keep * n))`` of each grid's n tokens, row ``max(1, floor(keep * rows))``
      whole rows of each. The tiles are pruned as the one unpadded grid (not tile by tile), so the row strategy's
      rows are the LLM's newline rows. An absolute ``keep_tokens`` is a fraction of the image's grid tokens.
    - Newlines: the newline of a tile-grid row is kept iff that row keeps at least one token (the row strategy
      keeps exactly the newlines of its kept rows). Newlines count as visual tokens reaching the LLM.
    - Positions: ``KeptImage.indices`` index the packed sequence (grid tokens and newlines) and ``num_tokens`` is
      its length, the processor's placeholder count, so positions work as for LLaVA-1.5: ``compact`` (``auto``
      resolves to it) numbers the pruned sequence 0..L-1, ``original`` gives each kept token (newlines included)
      its unpruned packed offset.
    - Images differ in size, so in packed length and layout: each image is pruned on its own. Merging strategies
      (pool) average vision features before the projector, within each grid.
    - Per-crop strategies (:attr:`PruningStrategy.per_crop`: VisionZip, ``anyres=crops``) are pruned as their
      released code runs: one group per image whose layout is one grid per crop (the base image and every padded
      tile, nothing unpadded), each crop's [CLS] features handed over, each crop's budget share ``keep`` of its
      patches; :meth:`CropPacking.arrange` then sends the crops' tokens in the released arrangement, with no
      newlines (crops x kept-per-crop tokens in place of the prompt's placeholders). That arrangement has no
      packed offsets: positions are ``compact`` only (``original`` is refused).
    Only ``vision_feature_select_strategy="default"`` with one integer feature layer is supported.
    """

    model_class: Any = LlavaNextForConditionalGeneration
    processor_class: Any = LlavaNextProcessor
    vision_inputs = ("image_sizes", "pixel_values")  # sizes first: one row per image (crops vary in number)
    groups_images = False

    def image_inputs(self, batch: Mapping[str, torch.Tensor], image: int) -> dict[str, torch.Tensor]:
        """The image's own crops (the processor pads every image to the batch's most crops) and its size."""
        return anyres_image_inputs(batch, image, self.crop_counts)

    def visual_tokens_per_image(self) -> int | None:
        return None  # any-resolution tiling: the count depends on the image's size

    def crop_counts(self, image_sizes: torch.Tensor) -> list[int]:
        """Crops (base image + tiles) of each image, as the model counts them."""
        config = self.model.config
        return [
            int(image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size))
            for size in image_sizes
        ]

    def packing(self, crops: int, image_size: torch.Tensor) -> AnyresPacking:
        """How the model packs the patches of an image with ``crops`` crops and original (height, width) size."""
        base = self.grid()
        patches = base[0] * base[1]
        if crops < 2:
            raise ConfigError(f"an AnyRes image needs a base crop and at least one tile, got {crops} crop(s)")
        # float64 holds every index exactly; -1 marks the newlines the model inserts.
        index_map = torch.arange(crops * patches, dtype=torch.float64).reshape(crops, patches, 1)
        marker = torch.full((1,), -1.0, dtype=torch.float64)
        packed_maps, _ = self.model.model.pack_image_features(
            [index_map], image_size[None].cpu(), self.model.config.vision_feature_select_strategy, marker
        )
        sources = packed_maps[0][:, 0]
        grid = read_packing(sources < 0, base, self.image_layout().has_cls, type(self).__name__)
        if not torch.equal(sources[:patches], torch.arange(patches, dtype=torch.float64)):
            raise ConfigError(
                "the model's pack_image_features no longer puts the base image first; this transformers version is "
                f"not supported by {type(self).__name__}"
            )
        return AnyresPacking(**vars(grid), sources=sources[grid.positions].long())

    def crop_packing(self, crops: int, image_size: torch.Tensor) -> CropPacking:
        """How an image with ``crops`` crops and original (height, width) size is pruned crop by crop."""
        config = self.model.config
        rows, cols = get_anyres_image_grid_shape(
            image_size.tolist(), config.image_grid_pinpoints, config.vision_config.image_size
        )
        packing = CropPacking((int(rows), int(cols)), self.grid(), self.image_layout().has_cls)
        if packing.crops != crops:
            raise ConfigError(f"an AnyRes image of {rows} x {cols} tiles has {packing.crops} crops, got {crops}")
        return packing

    def patch_view(self, batch: Mapping[str, torch.Tensor], image: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
        return None  # base grid plus tiles: no single grid to draw on

    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """One group per image (images differ in packed layout): its crops' tokens packed as the model packs them,
        with the row newlines added after pruning."""
        pixel_values = batch["pixel_values"]
        image_sizes = batch["image_sizes"]
        counts = self.crop_counts(image_sizes)
        if pixel_values.dim() == 5:  # (images, padded crops, C, H, W), as the processor returns it
            pixel_values = torch.cat([crops[:count] for crops, count in zip(pixel_values, counts, strict=True)])
        if request.per_crop is not None:
            return self.crop_groups(pixel_values, image_sizes, counts, request)
        features, attention = self.encode(pixel_values, request, self.image_layout())
        projector: nn.Module = self.model.model.multi_modal_projector
        newline: torch.Tensor = self.model.model.image_newline
        groups: list[VisualGroup] = []
        start = 0
        for count, image_size in zip(counts, image_sizes, strict=True):
            packing = self.packing(count, image_size)
            sources = packing.sources.to(features.device)
            groups.append(
                VisualGroup(
                    features[start : start + count].flatten(0, 1)[sources][None],
                    None if attention is None else _take(attention, start, count, sources),
                    packing.layout(),
                    projector,
                    packing.length,
                    partial(packing.add_newlines, newline=newline),
                )
            )
            start += count
        return groups

    def crop_groups(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, counts: list[int], request: PruningRequest
    ) -> list[VisualGroup]:
        """One group per image for a per-crop strategy: one grid per crop (its padded patches, [CLS] handed over
        per crop where the strategy keeps it), the crops' tokens arranged afterwards (:meth:`CropPacking.arrange`)."""
        if self.resolve_positions(request.positions) != "compact":
            raise ConfigError(
                "a strategy pruning LLaVA-NeXT crop by crop (strategy.anyres=crops) sends its tokens in an "
                "arrangement with no packed offsets: reorder.positions must be 'compact' or 'auto', got "
                f"{request.positions!r} (strategy.anyres=grids keeps the packed layout)"
            )
        assert request.per_crop is not None
        layout = self.image_layout()
        sequence, attention = self.encode_sequence(pixel_values, request, layout)
        features = sequence[:, int(layout.has_cls) :]
        projector: nn.Module = self.model.model.multi_modal_projector
        groups: list[VisualGroup] = []
        start = 0
        for count, image_size in zip(counts, image_sizes, strict=True):
            packing = self.crop_packing(count, image_size)
            crops = slice(start, start + count)
            cls = sequence[crops, 0][None] if request.cls and layout.has_cls else None
            everything = torch.arange(count * layout.num_tokens, device=features.device)
            placeholders = self.packing(count, image_size).length
            groups.append(
                VisualGroup(
                    features[crops].flatten(0, 1)[None],
                    None if attention is None else _take(attention, start, count, everything),
                    packing.layout(),
                    projector,
                    placeholders,
                    partial(packing.arrange, placeholders=placeholders, summaries=request.per_crop),
                    cls_features=cls,
                )
            )
            start += count
        return groups

    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """Per sample: the vision tower and the tap on every crop (base image + tiles), the projector on the kept
        grid tokens (image newlines are not projected; all grid tokens for strategies that read projected tokens;
        pruned per crop, every token sent, [CLS] included), the LLM on the kept tokens with their newlines."""
        config = self.config_as_run(request)  # the vision layers that actually run
        layout = self.image_layout()
        image_sizes = batch["image_sizes"]
        counts = self.crop_counts(image_sizes)
        costs = []
        image = 0
        for sample in range(len(inputs.images_per_sample)):
            crops = projected = 0
            for kept in inputs.sample_images(sample):
                crops += counts[image]
                if request.per_crop is not None:  # every token sent was projected, the crops' [CLS] included
                    crop_layout = self.crop_packing(counts[image], image_sizes[image]).layout()
                    projected += projector_tokens(request, crop_layout.num_tokens, kept.count, request.cls)
                else:
                    packing = self.packing(counts[image], image_sizes[image])
                    grid_kept = int((~torch.isin(kept.indices, packing.newlines.to(kept.indices.device))).sum())
                    projected += projector_tokens(request, packing.layout().num_tokens, grid_kept)
                image += 1
            base = llava_flops(
                config,
                int(inputs.visual_tokens[sample]),
                int(inputs.text_tokens[sample]),
                images=crops,
                projector_tokens=projected,
            )
            tapped = (layout.num_tokens,) * crops
            costs.append(SampleCost(base, tapped, layout.has_cls, config.vision_config.hidden_size))
        return costs


def _take(attention: AttentionSummary, start: int, count: int, sources: torch.Tensor) -> AttentionSummary:
    """One image's (1, N) summary: its crops' rows, flattened crop-major and mapped through ``sources``."""

    def pick(scores: torch.Tensor) -> torch.Tensor:
        return scores[start : start + count].flatten()[sources.to(scores.device)][None]

    return AttentionSummary(
        received=pick(attention.received),
        paid=pick(attention.paid),
        cls=None if attention.cls is None else pick(attention.cls),
        keys=None if attention.keys is None else attention.keys[start : start + count].flatten(0, 1)[sources][None],
        key_heads=attention.key_heads,
        cls_joint=None if attention.cls_joint is None else pick(attention.cls_joint),
    )
