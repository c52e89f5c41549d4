"""What is LLaVA-OneVision's own: its packing (tiles, unpadding, ``anyres_max_9`` resampling) and significance
against hand-worked arrangements and an independent attention recomputation, the [CLS] stand-in, its refusals, and
the real checkpoint's structure (SigLIP 384/14, the real grid pinpoints) on real photos (no download). The adapter
contract (stock equality, hand-fed logits, KV length, batching, every strategy and source, FLOPs; ``significance=cls``
refused) runs in ``tests/models/test_contract.py`` through ``tests/models/families/tiny_llava_onevision.py``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
)

from fopru.components import CONFIG_DIR
from fopru.errors import ConfigError
from fopru.models.llava_onevision import ImageOnlyLlavaOnevisionProcessor, LlavaOnevisionAdapter
from fopru.models.word_tokenizer import word_tokenizer
from fopru.pipeline import PruningPipeline
from fopru.significance.sources import FocalSignificance
from fopru.strategies.base import StrategyInputs
from tests.models.conftest import example_batch, make_pipeline

NAME = "tiny_llava_onevision"
# Hand-worked packings of the fixture's two examples (fopru/models/tiny/llava_onevision.py), 6 x 6 patches per crop:
# 70 x 40: 48 x 96 pinpoint, 1 x 2 tiles (6 x 12), unpadded to columns 1..10 (int(70 * 6 / 40) = 10 wide);
# 200 x 150: 192 x 192 pinpoint, 4 x 4 tiles (24 x 24), unpadded to rows 3..20 (int(150 * 24 / 200) = 18 high),
# then 432 patches > 1.1**2 * 9 * 36, r = sqrt(432 / 324): resampled to (int(18 // r), int(24 // r)) = 15 x 20.
PACKINGS = {
    0: {"crops": 3, "tiles": (1, 2), "rows": slice(0, 6), "cols": slice(1, 11), "grid": (6, 10), "length": 102},
    1: {"crops": 17, "tiles": (4, 4), "rows": slice(3, 21), "cols": slice(0, 24), "grid": (15, 20), "length": 351},
}


@pytest.fixture(scope="module")
def adapter() -> LlavaOnevisionAdapter:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / f"{NAME}.yaml"))
    assert isinstance(built, LlavaOnevisionAdapter)
    built.load()
    return built


def batch_of(adapter: LlavaOnevisionAdapter, samples: list[int]) -> Mapping[str, torch.Tensor]:
    return example_batch(NAME, adapter, samples)


def stock_logits(adapter: LlavaOnevisionAdapter, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    mask = batch["attention_mask"]
    with torch.no_grad():
        return adapter.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits


def stock_packed(adapter: LlavaOnevisionAdapter, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The stock model's packed image features (grid tokens and newlines), one (length, D) tensor per image."""
    with torch.no_grad():
        output: Any = adapter.model.model.get_image_features(
            batch["pixel_values"], batch["image_sizes"], batch_num_images=batch["batch_num_images"]
        )
    return list(output.pooler_output)


def bilinear_weights(source: int, target: int) -> torch.Tensor:
    """(target, source) weights of a bilinear resize with ``align_corners=False``, written out: output i samples the
    input at x = (i + 0.5) * source / target - 0.5 (clamped at 0), blending floor(x) and floor(x) + 1."""
    weights = torch.zeros(target, source, dtype=torch.float64)
    for index in range(target):
        x = max((index + 0.5) * source / target - 0.5, 0.0)
        low = min(int(x), source - 1)
        high = min(low + 1, source - 1)
        weights[index, low] += 1 - (x - low)
        weights[index, high] += x - low
    return weights


def arrange_by_hand(
    per_crop: torch.Tensor, side: int, tiles: tuple[int, int], rows: slice, cols: slice, grid: tuple[int, int]
) -> torch.Tensor:
    """(N, C) what the LLM's grid tokens hold for (crops, side * side, C) per-crop values: the base crop, then the
    tiles (raster order) laid out as one grid, cut to ``rows`` x ``cols`` and bilinearly resized to ``grid``."""
    channels = per_crop.shape[-1]
    tile_rows, tile_cols = tiles
    full = per_crop[1:].double().reshape(tile_rows, tile_cols, side, side, channels)
    full = full.permute(0, 2, 1, 3, 4).reshape(tile_rows * side, tile_cols * side, channels)[rows, cols]
    resized = torch.einsum(
        "ia,jb,abc->ijc", bilinear_weights(full.shape[0], grid[0]), bilinear_weights(full.shape[1], grid[1]), full
    )
    return torch.cat([per_crop[0].double(), resized.reshape(-1, channels)])


# -- 1. the packing, hand-worked -------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", [0, 1])
def test_packing_matches_the_hand_worked_arrangement(adapter: LlavaOnevisionAdapter, sample: int) -> None:
    batch = batch_of(adapter, [sample])
    expected = PACKINGS[sample]
    assert adapter.crop_counts(batch["image_sizes"]) == [expected["crops"]]
    packing = adapter.packing(expected["crops"], batch["image_sizes"][0])
    rows, cols = expected["grid"]
    assert (packing.base, packing.grid, packing.length) == ((6, 6), (rows, cols), expected["length"])
    assert packing.length == int((batch["input_ids"] == adapter.model.config.image_token_id).sum())
    assert packing.newlines.tolist() == [36 + (cols + 1) * row + cols for row in range(rows)]
    assert packing.layout().grids == ((6, 6), (rows, cols)) and not packing.layout().has_cls
    # The newlines of the stock features sit where the packing says, and hold the model's newline embedding.
    (packed,) = stock_packed(adapter, batch)
    assert bool((packed[packing.newlines] == adapter.model.model.image_newline).all())


# -- 2. significance: the tapped layer and its resampling, against independent computations --------------------
def received_by_hand(adapter: LlavaOnevisionAdapter, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """(crops, patches) head-averaged attention each patch receives at vision layer ``layer``, recomputed from the
    layer's input with the attention module's own projections and an explicit softmax (no [CLS] to drop)."""
    attention: Any = adapter.attention_of(adapter.vision_layers()[layer])
    captured: dict[str, torch.Tensor] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    hook = attention.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        adapter.model.model.vision_tower(pixel_values)
    hook.remove()
    hidden = captured["hidden"]
    crops, tokens, _ = hidden.shape
    query = attention.q_proj(hidden).view(crops, tokens, attention.num_heads, -1).transpose(1, 2)
    key = attention.k_proj(hidden).view(crops, tokens, attention.num_heads, -1).transpose(1, 2)
    probabilities = torch.softmax(query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5, dim=-1)
    return probabilities.mean(dim=1).mean(dim=1)


def test_the_default_tap_is_the_layer_whose_output_the_projector_reads(adapter: LlavaOnevisionAdapter) -> None:
    batch = batch_of(adapter, [0])
    pixel_values = batch["pixel_values"][0]
    tapped = adapter.tap_index(make_pipeline("rank", keep=0.25).request)
    assert tapped == len(adapter.vision_layers()) - 1 == 3
    outputs: list[torch.Tensor] = []
    hook = adapter.vision_layers()[tapped].register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        vision = adapter.model.model.vision_tower(pixel_values, output_hidden_states=True)
    hook.remove()
    output = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    torch.testing.assert_close(output, vision.hidden_states[adapter.model.config.vision_feature_layer])


@pytest.mark.parametrize(("sample", "layer"), [(0, None), (1, None), (1, 1)], ids=["unpadded", "resampled", "layer1"])
def test_significance_is_the_tapped_attention_packed_like_the_features(
    adapter: LlavaOnevisionAdapter, sample: int, layer: int | None
) -> None:
    batch = batch_of(adapter, [sample])
    expected = PACKINGS[sample]
    pixel_values = batch["pixel_values"][0, : expected["crops"]]
    rank = make_pipeline("rank", keep=0.25)
    request = PruningPipeline(FocalSignificance(layer=layer), rank.strategy, rank.reorder, rank.budget).request
    assert adapter.tap_index(request) == (3 if layer is None else layer)
    (group,) = adapter.visual_groups(batch, request)
    assert group.attention is not None and group.attention.cls is None and group.attention.cls_joint is None
    shape = (expected["tiles"], expected["rows"], expected["cols"], expected["grid"])
    by_hand = received_by_hand(adapter, pixel_values, adapter.tap_index(request))
    received = arrange_by_hand(by_hand[..., None], 6, *shape)[:, 0]
    torch.testing.assert_close(group.attention.received[0].double(), received, rtol=1e-4, atol=1e-6)
    # No [CLS]: every patch row sums to 1, so paid is 1/36 everywhere, before and after resampling.
    torch.testing.assert_close(group.attention.paid, torch.full_like(group.attention.paid, 1 / 36))
    # The same hand-worked arrangement of the projected crop features gives the stock features' grid tokens.
    with torch.no_grad():
        hidden = adapter.model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1]
        projected = adapter.model.model.multi_modal_projector(hidden)
    (packed,) = stock_packed(adapter, batch)
    grid_tokens = packed[adapter.packing(expected["crops"], batch["image_sizes"][0]).positions]
    torch.testing.assert_close(grid_tokens.double(), arrange_by_hand(projected, 6, *shape), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(group.features[0], grid_tokens, rtol=0, atol=0)


def test_without_cls_the_saliency_falls_back_to_received(adapter: LlavaOnevisionAdapter) -> None:
    batch = batch_of(adapter, [1])
    (group,) = adapter.visual_groups(batch, make_pipeline("rank", keep=0.25).request)
    assert group.attention is not None
    inputs = StrategyInputs(features=group.features, attention=group.attention)
    assert torch.equal(inputs.saliency("visionzip"), group.attention.received)
    assert torch.equal(inputs.joint_saliency("prumerge"), group.attention.received)


@pytest.mark.parametrize(("strategy", "keep"), [("rank", 0.25), ("row", 0.5), ("pool", 0.25)])
def test_budget_per_grid_newlines_and_kv_cache_length(
    adapter: LlavaOnevisionAdapter, strategy: str, keep: float
) -> None:
    batch = batch_of(adapter, [1])
    generation = adapter.generate(batch, make_pipeline(strategy, keep=keep), max_new_tokens=2)
    (kept,) = generation.inputs.images
    packing = adapter.packing(17, batch["image_sizes"][0])
    newline_at = torch.isin(kept.indices, packing.newlines)
    grid = kept.indices[~newline_at]
    base, tiles = int((grid < 36).sum()), int((grid >= 36).sum())
    if strategy == "row":  # floor(0.5 * 6) base rows of 6, floor(0.5 * 15) tile rows of 20, one newline each
        assert (base, tiles, int(newline_at.sum())) == (3 * 6, 7 * 20, 7)
    elif strategy == "rank":  # floor(0.25 * 36) base tokens, floor(0.25 * 300) tile tokens
        assert (base, tiles) == (9, 75)
    else:  # pool: merged tokens of both grids
        assert 0 < base < 36 and 0 < tiles < 300
    tile_rows = {(index - 36) // 21 for index in grid.tolist() if index >= 36}  # 20 tokens + 1 newline per row
    assert {(index - 36) // 21 for index in kept.indices[newline_at].tolist()} == tile_rows
    assert bool((kept.embeddings[newline_at] == adapter.model.model.image_newline).all())
    text = int((batch["input_ids"] != adapter.model.config.image_token_id).sum())
    assert int(generation.inputs.visual_tokens[0]) == kept.embeddings.shape[0] < kept.num_tokens
    assert generation.prompt_cache_length == text + kept.embeddings.shape[0]


# -- 3. refusals -------------------------------------------------------------------------------------------------
def test_unsupported_inputs_and_feature_settings_fail_clearly(
    adapter: LlavaOnevisionAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = dict(batch_of(adapter, [0, 1]))
    batch["batch_num_images"] = torch.tensor([2])
    with pytest.raises(ConfigError, match=r"one AnyRes-tiled image per sample, got batch_num_images=\[2\]"):
        adapter.prefill_inputs(batch, make_pipeline("rank", keep=0.25))
    monkeypatch.setattr(adapter.model.config, "vision_feature_select_strategy", "default")
    with pytest.raises(ConfigError, match=r"vision_feature_select_strategy='full'.*got 'default'"):
        adapter.prefill_inputs(batch_of(adapter, [0]), make_pipeline("rank", keep=0.25))


# -- 4. the real checkpoint's structure, small widths, real photos ---------------------------------------------
@pytest.fixture(scope="module")
def real_structure() -> LlavaOnevisionAdapter:
    return real_structure_adapter()


def real_structure_adapter() -> LlavaOnevisionAdapter:
    """llava-onevision-qwen2-*-ov-hf's structure at small widths. From transformers' conversion script
    (``convert_llava_onevision_weights_to_hf.py``): SigLIP image_size 384, patch_size 14, no pooling head (26 layers,
    here 2), ``num_image_tokens=729``, ``vision_feature_select_strategy="full"``; from ``LlavaOnevisionConfig``'s
    defaults (documented as llava-hf/llava-onevision-qwen2-7b-ov-hf's): ``vision_feature_layer=-1``,
    ``vision_aspect_ratio="anyres_max_9"``, the 36 grid pinpoints 384..2304 px; the image processor's defaults
    (``LlavaOnevisionImageProcessorPil``: 384 x 384 crops, the same pinpoints)."""
    tokenizer = word_tokenizer(["<image>", "<video>"])
    vision = {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32}
    vision |= {"num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 384, "patch_size": 14}
    text = {"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64}
    text |= {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    text |= {"max_position_embeddings": 16384, "pad_token_id": tokenizer.pad_token_id}
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=int(tokenizer.convert_tokens_to_ids("<image>")),  # type: ignore[arg-type]
        video_token_index=int(tokenizer.convert_tokens_to_ids("<video>")),  # type: ignore[arg-type]
    )
    assert (config.vision_feature_layer, config.vision_aspect_ratio) == (-1, "anyres_max_9")
    assert len(config.image_grid_pinpoints) == 36
    torch.manual_seed(0)
    built = LlavaOnevisionAdapter("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    built._model = LlavaOnevisionForConditionalGeneration(config).eval()
    built._processor = ImageOnlyLlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
    )
    return built


def real_photos() -> dict[str, Any]:
    data = pytest.importorskip("skimage.data", reason="scikit-image (a dev dependency) provides the real photos")
    from PIL import Image

    photos = {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}
    # Enlarged 3x, a real photo's tile grid exceeds anyres_max_9 and is resampled.
    photos["coffee_x3"] = photos["coffee"].resize((1800, 1200), Image.Resampling.BICUBIC)
    return photos


# Each photo's (height x width) -> pinpoint tiles, the unpadded rows and columns of the tile grid (27 patches per tile
# side) and the packed tile grid, worked out by hand from the pinpoints (select_best_resolution's rule: the largest
# effective resolution, then the least waste), unpadding (the kept side int(...) patches long, the rest split evenly
# as padding) and the anyres_max_9 rule.
REAL_GRIDS = {
    # 512 x 512 -> 768 x 768 (2 x 2 tiles), nothing to unpad.
    "astronaut": ((2, 2), slice(0, 54), slice(0, 54), (54, 54)),
    # 400 x 600 -> 768 x 768; int(400 * 54 / 600) = 36 rows kept, 9 cut above and below.
    "coffee": ((2, 2), slice(9, 45), slice(0, 54), (36, 54)),
    # 300 x 451 -> 384 x 768 (1 x 2 tiles); int(451 * 27 / 300) = 40 columns, padding (54 - 40) // 2 = 7 each side.
    "chelsea": ((1, 2), slice(0, 27), slice(7, 47), (27, 40)),
    # 427 x 640 -> 768 x 768; int(427 * 54 / 640) = 36 rows.
    "rocket": ((2, 2), slice(9, 45), slice(0, 54), (36, 54)),
    # 1200 x 1800 -> 1536 x 1920 (4 x 5 tiles, 108 x 135); int(1200 * 135 / 1800) = 90 rows; 90 * 135 > 1.1**2 *
    # 9 * 729, r = sqrt(90 * 135 / (9 * 729)) = 1.36: resampled to int(90 // r) x int(135 // r) = 66 x 99.
    "coffee_x3": ((4, 5), slice(9, 99), slice(0, 135), (66, 99)),
}


def test_real_structure_packs_real_photos_as_the_stock_model(real_structure: LlavaOnevisionAdapter) -> None:
    adapter = real_structure
    for name, photo in real_photos().items():
        batch = adapter.prepare([photo], ["USER: <image>\nwhat is in this image ? ASSISTANT:"])
        tiles, rows, cols, grid = REAL_GRIDS[name]
        crops = 1 + tiles[0] * tiles[1]
        assert adapter.crop_counts(batch["image_sizes"]) == [crops], name
        packing = adapter.packing(crops, batch["image_sizes"][0])
        assert (packing.base, packing.grid) == ((27, 27), grid), name
        assert packing.length == int((batch["input_ids"] == adapter.model.config.image_token_id).sum())
        request = make_pipeline("rank", keep=0.25).request
        (group,) = adapter.visual_groups(batch, request)
        assert group.attention is not None
        # The stock features, and the tap's per-crop statistics on the same vision run.
        with adapter.tap(request, has_cls=False) as tap:
            (packed,) = stock_packed(adapter, batch)
        assert tap is not None
        torch.testing.assert_close(group.features[0], packed[packing.positions], rtol=0, atol=0)
        # Significance: the per-crop statistics through the hand-worked tiling, unpadding and resampling.
        expected = arrange_by_hand(tap.summary().received[..., None], 27, tiles, rows, cols, grid)[:, 0]
        torch.testing.assert_close(group.attention.received[0].double(), expected, rtol=1e-4, atol=1e-9)
    ratio = math.sqrt(90 * 135 / (9 * 729))
    assert REAL_GRIDS["coffee_x3"][3] == (int(90 // ratio), int(135 // ratio))


def test_real_structure_keep_all_logits_equal_stock(real_structure: LlavaOnevisionAdapter) -> None:
    photo = real_photos()["chelsea"]
    batch = real_structure.prepare([photo], ["USER: <image>\nwhat is in this image ? ASSISTANT:"])
    inputs = real_structure.prefill_inputs(batch, make_pipeline("none", keep=1.0))
    torch.testing.assert_close(real_structure.prefill_logits(inputs), stock_logits(real_structure, batch))
