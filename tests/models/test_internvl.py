"""What is InternVL3's own: tiling and placeholders, the per-crop budget, the pixel shuffle's blocks, the tapped layer
against the stock eager attention, refusals, and the checkpoints' crop structure on real photos. The contract every
family meets (stock equality, hand-fed equivalence, KV cache, batching, every strategy, FLOPs) is
``tests/models/test_contract.py``, with this family's hook in ``tests/models/families/tiny_internvl.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR
from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.models.internvl import IMAGE_PROMPT, InternVLAdapter
from fopru.models.tiny import internvl as fixture
from fopru.pipeline import PruningPipeline
from fopru.significance.attention import AttentionSummary
from fopru.significance.sources import FocalSignificance
from tests.models.conftest import make_image, make_pipeline

#: Crops of the fixture's example images: 64 x 64 is 2 x 2 tiles + thumbnail, 70 x 40 is 2 x 1 tiles + thumbnail.
CROPS = (5, 3)
TOKENS_PER_CROP = 16  # 8 x 8 patches of a 32-pixel crop, pixel-shuffled 2 x 2


def load_tiny(**overrides: Any) -> InternVLAdapter:
    config = OmegaConf.load(CONFIG_DIR / "model" / "tiny_internvl.yaml")
    built = instantiate(config, **overrides)
    assert isinstance(built, InternVLAdapter)
    built.load()
    return built


@pytest.fixture(scope="module")
def adapter() -> InternVLAdapter:
    return load_tiny()


def batch_of(adapter: InternVLAdapter, samples: list[int]) -> Mapping[str, torch.Tensor]:
    images = [make_image(seed, *fixture.EXAMPLE_SIZES[seed]) for seed in samples]
    return adapter.prepare(images, [fixture.EXAMPLE_PROMPTS[seed] for seed in samples])


def pipeline(strategy: str = "none", keep: float = 1.0, positions: str = "compact") -> PruningPipeline:
    return make_pipeline(strategy, keep=keep, positions=positions)  # type: ignore[arg-type]


def stock_logits(adapter: InternVLAdapter, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    mask = batch["attention_mask"]
    with torch.no_grad():
        return adapter.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits


def test_the_processor_tiles_and_expands_as_the_checkpoints_do(adapter: InternVLAdapter) -> None:
    batch = batch_of(adapter, [0, 1])
    assert adapter.crop_counts(batch) == list(CROPS)
    assert batch["pixel_values"].shape == (sum(CROPS), 3, fixture.IMAGE_SIZE, fixture.IMAGE_SIZE)
    tokenizer = adapter.processor.tokenizer
    for sample, crops in enumerate(CROPS):
        ids = batch["input_ids"][sample][batch["attention_mask"][sample].bool()].tolist()
        start, stop = ids.index(tokenizer.start_image_token_id), ids.index(tokenizer.end_image_token_id)
        assert ids[start + 1 : stop] == [adapter.model.config.image_token_id] * (crops * TOKENS_PER_CROP)


# -- 1. the budget splits per crop -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "keep", "per_crop"), [("rank", 0.25, 4), ("row", 0.5, 8), ("rank", 0.01, 1)])
def test_every_crop_keeps_its_share(adapter: InternVLAdapter, strategy: str, keep: float, per_crop: int) -> None:
    """rank keeps max(1, floor(keep * 16)) tokens of every crop (thumbnail included), row max(1, floor(keep * 4))
    whole rows of 4 tokens; each crop's rank tokens are that crop's most significant ones."""
    batch = batch_of(adapter, [0])
    built = pipeline(strategy, keep)
    generation = adapter.generate(batch, built, max_new_tokens=2)
    [kept] = generation.inputs.images
    crop_of = kept.indices // TOKENS_PER_CROP
    assert crop_of.bincount(minlength=CROPS[0]).tolist() == [per_crop] * CROPS[0]
    features, attention = adapter.encode(batch["pixel_values"], built.request)
    assert attention is not None
    scores = built.significance.score(attention, features, adapter.image_layout(1)).reshape(-1)
    for crop in range(CROPS[0]):
        inside = kept.indices[crop_of == crop] % TOKENS_PER_CROP
        if strategy == "row":
            rows = inside // 4
            assert rows.unique().numel() == per_crop // 4 and rows.bincount().max() == 4
        else:
            crop_scores = scores[crop * TOKENS_PER_CROP : (crop + 1) * TOKENS_PER_CROP]
            best = crop_scores.topk(per_crop).indices.sort().values
            assert torch.equal(inside, best)
    assert generation.inputs.visual_tokens.tolist() == [per_crop * CROPS[0]]


def test_keep_tokens_is_a_fraction_of_the_image(adapter: InternVLAdapter) -> None:
    batch = batch_of(adapter, [0])
    base = pipeline("rank")
    built = PruningPipeline(base.significance, base.strategy, base.reorder, Budget(keep_tokens=20))
    [kept] = adapter.prefill_inputs(batch, built).images
    assert kept.indices.shape[0] == 20  # 20 / 80 of every crop's 16 tokens: 4 per crop


@pytest.mark.parametrize(("strategy", "keep", "kept"), [("rank", 0.25, 20), ("row", 0.25, 5 * 4)])
def test_a_per_image_budget_keeps_the_images_best_tokens_wherever_they_lie(
    strategy: str, keep: float, kept: int
) -> None:
    """budget_split=per_image: rank keeps floor(0.25 * 80) = 20 tokens, the image's top 20 (not 4 per crop); row
    floor(0.25 * 20) = 5 whole rows of 4 of the stacked 20 x 4 grid, the rows of highest summed significance."""
    split = load_tiny(budget_split="per_image")
    batch = batch_of(split, [0])
    built = pipeline(strategy, keep)
    [image] = split.prefill_inputs(batch, built).images
    features, attention = split.encode(batch["pixel_values"], built.request)
    layout = split.image_layout(CROPS[0])
    assert layout.grids == ((4 * CROPS[0], 4),)
    scores = built.significance.score(_image_summary(attention), features.flatten(0, 1)[None], layout)[0]
    if strategy == "rank":
        expected = scores.topk(kept).indices.sort().values
    else:
        rows = scores.reshape(-1, 4).sum(dim=1).topk(kept // 4).indices.sort().values
        expected = (rows[:, None] * 4 + torch.arange(4)).flatten()
    assert torch.equal(image.indices, expected)
    per_crop = (image.indices // TOKENS_PER_CROP).bincount(minlength=CROPS[0]).tolist()
    assert sum(per_crop) == kept
    if strategy == "rank":  # on this image the crops' shares differ from the per-crop split's 4 each
        assert per_crop != [kept // CROPS[0]] * CROPS[0]


def _image_summary(attention: AttentionSummary | None) -> AttentionSummary:
    """One image's summary from all its crops' rows (the batch holds one image)."""
    assert attention is not None

    def flat(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values.flatten()[None]

    received, paid = flat(attention.received), flat(attention.paid)
    assert received is not None and paid is not None
    return AttentionSummary(received, paid, flat(attention.cls))


def test_an_unknown_budget_split_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"model.budget_split='per_tile' is not one of \['per_crop', 'per_image'\]"):
        InternVLAdapter("tiny:internvl", budget_split="per_tile")


# -- 2. features and significance against independent computations ----------------------------------------------
def shuffle_blocks(side: int, merge: int = 2) -> list[list[int]]:
    """The patches (raster index over a side x side grid) that every shuffled token (raster order) covers."""
    tokens = side // merge
    return [
        [(merge * row + dr) * side + merge * col + dc for dr in range(merge) for dc in range(merge)]
        for row in range(tokens)
        for col in range(tokens)
    ]


@pytest.mark.parametrize("feature_layer", [-1, -2])
def test_features_are_the_feature_layers_patches_shuffled_2x2(adapter: InternVLAdapter, feature_layer: int) -> None:
    """Every token holds the 4 patch features of its 2 x 2 block ([CLS] dropped), and projected they are the stock
    model's image features."""
    batch = batch_of(adapter, [1])
    model = adapter.model
    model.config.vision_feature_layer = feature_layer
    try:
        features, _ = adapter.encode(batch["pixel_values"], pipeline().request)
        with torch.no_grad():
            stock = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            hidden = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states
            projected = model.model.multi_modal_projector(features)
    finally:
        model.config.vision_feature_layer = -1
    torch.testing.assert_close(projected, stock)
    patches = hidden[feature_layer][:, 1:]
    width = patches.shape[-1]
    for token, block in enumerate(shuffle_blocks(8)):
        pieces = features[:, token].reshape(features.shape[0], 4, width)
        expected = patches[:, block]
        # The shuffle's channel order within a token is its own; the set of patches is what significance follows.
        for crop in range(features.shape[0]):
            matched = (pieces[crop][:, None] - expected[crop][None]).abs().amax(-1).argmin(-1)
            assert sorted(matched.tolist()) == [0, 1, 2, 3]
            torch.testing.assert_close(pieces[crop], expected[crop][matched])


def eager_attention(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Every vision layer's (C, H, T, T) attention probabilities from the stock eager kernel."""
    eager = load_tiny(attn_implementation="eager")
    with torch.no_grad():
        output = eager.model.model.vision_tower(batch["pixel_values"], output_attentions=True)
    return tuple(output.attentions)


@pytest.mark.parametrize("layer", [None, 1])
def test_tapped_significance_equals_the_eager_attention_pooled_per_block(
    adapter: InternVLAdapter, layer: int | None
) -> None:
    """vision_feature_layer = -1: the default tap is the last vision layer. Every crop's [CLS] row and the attention
    patches receive (softmax over [CLS] + patches, [CLS] dropped after it, heads averaged) are summed over each
    pixel-shuffle block."""
    batch = batch_of(adapter, [0, 1])
    source = FocalSignificance(layer=layer)
    tapped = adapter.tap_index(source)
    assert tapped == (len(adapter.vision_layers()) - 1 if layer is None else layer)
    _, summary = adapter.encode(batch["pixel_values"], source)  # type: ignore[arg-type]
    assert summary is not None
    attention = eager_attention(batch)[tapped].double().mean(dim=1)  # (C, T, T)
    patches = attention[:, 1:, 1:]
    received, paid, cls_row = patches.mean(dim=1), patches.mean(dim=2), attention[:, 0, 1:]
    for name, values in (("received", received), ("paid", paid), ("cls", cls_row)):
        expected = torch.stack([values[:, block].sum(dim=1) for block in shuffle_blocks(8)], dim=1)
        torch.testing.assert_close(getattr(summary, name), expected.float(), msg=name)
    assert summary.keys is None and summary.cls_joint is not None


@pytest.mark.parametrize(("feature_layer", "expected"), [(-1, 3), (-2, 2), (2, 1)])
def test_without_a_tap_layer_the_layer_producing_the_features_is_tapped(feature_layer: int, expected: int) -> None:
    """hidden_states[f] (the embeddings first) is the output of layers[f] for f < 0, of layers[f - 1] for f >= 1:
    the tapped attention is that layer's eager attention."""
    built = load_tiny(tap_layer=None)
    built.model.config.vision_feature_layer = feature_layer
    batch = batch_of(built, [1])
    source = FocalSignificance()
    assert built.tap_index(source) == expected
    _, summary = built.encode(batch["pixel_values"], source)  # type: ignore[arg-type]
    assert summary is not None
    attention = eager_attention(batch)[expected].mean(dim=1)
    received = attention[:, 1:, 1:].mean(dim=1)
    pooled = torch.stack([received[:, block].sum(dim=1) for block in shuffle_blocks(8)], dim=1)
    torch.testing.assert_close(summary.received, pooled)
    built.model.config.vision_feature_layer = 0
    with pytest.raises(ConfigError, match="vision_feature_layer=0"):
        built.tap_index(source)


def test_image_groups_follow_their_crops(adapter: InternVLAdapter) -> None:
    batch = batch_of(adapter, [0, 1])
    built = pipeline("rank", 0.25)
    groups = adapter.visual_groups(batch, built.request)
    features, attention = adapter.encode(batch["pixel_values"], built.request)
    assert attention is not None
    first = 0
    for group, crops in zip(groups, CROPS, strict=True):
        assert group.layout.grids == ((4, 4),) * crops and group.layout.has_cls
        assert torch.equal(group.features[0], features[first : first + crops].flatten(0, 1))
        assert group.attention is not None
        assert torch.equal(group.attention.received[0], attention.received[first : first + crops].flatten())
        first += crops


# -- 3. refusals ---------------------------------------------------------------------------------------------------
def test_unsupported_feature_settings_are_refused(adapter: InternVLAdapter) -> None:
    batch = batch_of(adapter, [0])
    adapter.model.config.vision_feature_select_strategy = "full"
    try:
        with pytest.raises(ConfigError, match=r"vision_feature_select_strategy='default'.*'full'"):
            adapter.prefill_inputs(batch, pipeline("rank", 0.25))
    finally:
        adapter.model.config.vision_feature_select_strategy = "default"


def test_a_batch_whose_prompts_do_not_match_its_crops_is_refused(adapter: InternVLAdapter) -> None:
    batch = dict(batch_of(adapter, [0]))
    batch["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(ConfigError, match=r"hold 5 crops' placeholders but pixel_values has 4 crops"):
        adapter.prefill_inputs(batch, pipeline("rank", 0.25))


# -- 4. the checkpoints' structure, fed real photos through the real processor -------------------------------------
def photos() -> dict[str, Any]:
    """Real photos of several aspect ratios (scikit-image's sample data), as PIL images."""
    data = pytest.importorskip("skimage.data", reason="the real-structure check reads scikit-image's sample photos")
    from PIL import Image

    return {
        "astronaut": Image.fromarray(data.astronaut()),  # 512 x 512
        "chelsea": Image.fromarray(data.chelsea()),  # 451 x 300 (width x height)
        "rocket_tall": Image.fromarray(data.rocket()).transpose(Image.Transpose.ROTATE_90),  # 427 x 640
        "coffee_strip": Image.fromarray(data.coffee()[:150]),  # 600 x 150
    }


#: Crops of each photo, worked out by hand from the tiling rule (of the (cols, rows) grids with 1 to 12 tiles, the
#: one whose aspect ratio is closest to the image's; on a tie the grid with more tiles while the image's area is
#: above half of theirs), plus the thumbnail when there is more than one tile.
REAL_CROPS = {
    "astronaut": 1,  # 1:1 -> 1 x 1 (2 x 2 ties, but 512^2 < 0.5 * 4 * 448^2): one crop, no thumbnail
    "chelsea": 7,  # 1.503 -> 3 x 2 (ratio 1.5) + thumbnail
    "rocket_tall": 7,  # 0.667 -> 2 x 3 + thumbnail
    "coffee_strip": 5,  # 4.0 -> 4 x 1 + thumbnail
}


@pytest.fixture(scope="module")
def real() -> InternVLAdapter:
    built = InternVLAdapter("tiny:internvl_real", tap_layer=None)
    built.load()
    return built


def real_batch(adapter: InternVLAdapter, names: list[str]) -> Mapping[str, torch.Tensor]:
    images = photos()
    prompts = [f"USER : {IMAGE_PROMPT} what is in this image ? ASSISTANT :", f"{IMAGE_PROMPT} color ?"]
    return adapter.prepare([images[name] for name in names], prompts[: len(names)])


def test_real_structure_tiles_photos_as_the_checkpoints(real: InternVLAdapter) -> None:
    vision = real.model.config.vision_config
    assert (tuple(vision.image_size), tuple(vision.patch_size), real.model.config.downsample_ratio) == (
        (448, 448),
        (14, 14),
        0.5,
    )
    assert real.geometry().patches == (32, 32) and real.geometry().tokens == (16, 16)
    assert real.default_tap_layer() == -1 and real.tap_index(FocalSignificance()) == len(real.vision_layers()) - 1
    names = list(REAL_CROPS)
    batch = real_batch(real, names[:2])
    counts = [real.crop_counts(real_batch(real, [name]))[0] for name in names]
    assert counts == [REAL_CROPS[name] for name in names]
    assert real.crop_counts(batch) == counts[:2]
    assert batch["pixel_values"].shape[1:] == (3, 448, 448)


def test_real_structure_keep_all_equals_stock_and_rank_keeps_a_quarter_of_every_crop(real: InternVLAdapter) -> None:
    names = ["coffee_strip", "astronaut"]  # 5 crops and 1: different lengths, left padding
    batch = real_batch(real, names)
    real_mask = batch["attention_mask"].bool()
    inputs = real.prefill_inputs(batch, pipeline())
    torch.testing.assert_close(real.prefill_logits(inputs)[real_mask], stock_logits(real, batch)[real_mask])
    generation = real.generate(batch, pipeline("rank", 0.25), max_new_tokens=2)
    text = ((batch["input_ids"] != real.model.config.image_token_id) & real_mask).sum(dim=1)
    for sample, name in enumerate(names):
        kept = generation.inputs.images[sample]
        assert kept.num_tokens == 256 * REAL_CROPS[name]
        assert (kept.indices // 256).bincount().tolist() == [64] * REAL_CROPS[name]
        assert int(generation.inputs.visual_tokens[sample]) == 64 * REAL_CROPS[name]
    assert (generation.inputs.attention_mask.sum(dim=1) == text + generation.inputs.visual_tokens).all()


def test_real_structure_significance_is_the_last_layers_attention_pooled(real: InternVLAdapter) -> None:
    batch = real_batch(real, ["coffee_strip"])
    _, summary = real.encode(batch["pixel_values"], FocalSignificance())  # type: ignore[arg-type]
    assert summary is not None and summary.received.shape == (REAL_CROPS["coffee_strip"], 256)
    eager = InternVLAdapter("tiny:internvl_real", attn_implementation="eager", tap_layer=None).load()
    with torch.no_grad():
        attention = eager.model.model.vision_tower(batch["pixel_values"], output_attentions=True).attentions[-1]
    attention = attention.mean(dim=1)
    received, cls_row = attention[:, 1:, 1:].mean(dim=1), attention[:, 0, 1:]
    blocks = shuffle_blocks(32)
    torch.testing.assert_close(summary.received, torch.stack([received[:, b].sum(dim=1) for b in blocks], dim=1))
    torch.testing.assert_close(summary.cls, torch.stack([cls_row[:, b].sum(dim=1) for b in blocks], dim=1))
