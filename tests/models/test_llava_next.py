"""The LLaVA-NeXT (AnyRes) adapter on a tiny seeded random model, against stock transformers (no download)."""

from collections.abc import Mapping

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, choices, load
from fopru.efficiency import counted_flops
from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.models.inputs import Generation, KeptImage
from fopru.models.llava_next import AnyresPacking, LlavaNextAdapter
from fopru.models.tap import VisionAttentionTap
from fopru.reorder.base import ReorderPolicy
from fopru.significance.base import SignificanceSource
from fopru.significance.sources import choose_by_variance
from fopru.strategies.base import PruningStrategy
from tests.models.conftest import make_image, make_pipeline

PROMPTS = ("USER: <image> what is the shape in this image ? ASSISTANT:", "<image> color ?")
# (height, width): a wide image (1 x 2 tiles, width unpadded to 10 patches), a tall one (2 x 1 tiles, 12 x 6 grid).
SIZES = ((40, 70), (90, 50))
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def adapter() -> LlavaNextAdapter:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava_next.yaml"))
    assert isinstance(built, LlavaNextAdapter)
    return built.load()  # type: ignore[return-value]


def batch_of(adapter: LlavaNextAdapter, samples: list[int]) -> Mapping[str, torch.Tensor]:
    images = [make_image(sample, width=SIZES[sample][1], height=SIZES[sample][0]) for sample in samples]
    return adapter.prepare(images, [PROMPTS[sample] for sample in samples])


def stock_logits(adapter: LlavaNextAdapter, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    mask = batch["attention_mask"]
    with torch.no_grad():
        return adapter.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits


@pytest.mark.parametrize("samples", [[0], [0, 1]])
def test_no_pruning_equals_stock_logits_and_generation(adapter: LlavaNextAdapter, samples: list[int]) -> None:
    batch = batch_of(adapter, samples)
    keep_all = make_pipeline("none", keep=1.0)
    inputs = adapter.prefill_inputs(batch, keep_all)
    assert torch.equal(inputs.attention_mask, batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(adapter.prefill_logits(inputs)[real], stock_logits(adapter, batch)[real])
    with torch.no_grad():
        stock = adapter.model.generate(**batch, do_sample=False, max_new_tokens=NEW_TOKENS)
    ours = adapter.generate(batch, keep_all, max_new_tokens=NEW_TOKENS)
    assert torch.equal(ours.tokens, stock[:, batch["input_ids"].shape[1] :])


def hand_assembled_logits(
    adapter: LlavaNextAdapter, batch: Mapping[str, torch.Tensor], kept: KeptImage, positions: str
) -> torch.Tensor:
    """One sample, one image: stock packed features at the reported indices between the text embeddings."""
    model = adapter.model
    with torch.no_grad():
        packed = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output[0]
        ids = batch["input_ids"][0]
        placeholders = (ids == model.config.image_token_id).nonzero().flatten()
        start, count = int(placeholders[0]), placeholders.shape[0]
        assert count == packed.shape[0] == kept.num_tokens
        text = model.get_input_embeddings()(ids)
        embeds = torch.cat([text[:start], packed[kept.indices], text[start + count :]])
        after = text.shape[0] - start - count
        if positions != "original":  # compact, which auto resolves to for LLaVA-NeXT
            position_ids = torch.arange(embeds.shape[0])
        else:
            position_ids = torch.cat([torch.arange(start), start + kept.indices, start + count + torch.arange(after)])
        return model(inputs_embeds=embeds[None], position_ids=position_ids[None]).logits[0]


@pytest.mark.parametrize(("strategy", "keep"), [("rank", 0.25), ("row", 0.5)])
@pytest.mark.parametrize("positions", ["compact", "original", "auto"])
def test_pruned_logits_equal_stock_features_placed_by_hand(
    adapter: LlavaNextAdapter, strategy: str, keep: float, positions: str
) -> None:
    batch = batch_of(adapter, [0])
    method = make_pipeline(strategy, keep=keep, positions=positions)  # type: ignore[arg-type]
    inputs = adapter.prefill_inputs(batch, method)
    (kept,) = inputs.images
    assert 0 < kept.indices.shape[0] < kept.num_tokens
    assert bool((kept.indices.diff() > 0).all())  # original order: a subsequence of the packed sequence
    expected = hand_assembled_logits(adapter, batch, kept, positions)
    torch.testing.assert_close(adapter.prefill_logits(inputs)[0], expected)


@pytest.mark.parametrize(("strategy", "keep"), [("rank", 0.25), ("row", 0.5), ("pool", 0.25)])
def test_visual_token_count_and_kv_cache_length(adapter: LlavaNextAdapter, strategy: str, keep: float) -> None:
    batch = batch_of(adapter, [1])
    generation = adapter.generate(batch, make_pipeline(strategy, keep=keep), max_new_tokens=2)
    (kept,) = generation.inputs.images
    text = int((batch["input_ids"] != adapter.model.config.image_token_id).sum())
    newlines = int((kept.embeddings == adapter.model.model.image_newline).all(dim=1).sum())
    assert newlines > 0
    assert int(generation.inputs.visual_tokens[0]) == kept.embeddings.shape[0] < kept.num_tokens
    assert int(generation.inputs.attention_mask.sum()) == text + kept.embeddings.shape[0]
    assert generation.prompt_cache_length == text + kept.embeddings.shape[0]


@pytest.mark.parametrize(("strategy", "keep"), [("rank", 0.25), ("row", 0.5)])
def test_pruned_batch_generates_as_each_sample_alone(adapter: LlavaNextAdapter, strategy: str, keep: float) -> None:
    method = make_pipeline(strategy, keep=keep)
    together = adapter.generate(batch_of(adapter, [0, 1]), method, max_new_tokens=NEW_TOKENS)
    pad = adapter.processor.tokenizer.pad_token_id
    for sample in (0, 1):
        alone = adapter.generate(batch_of(adapter, [sample]), method, max_new_tokens=NEW_TOKENS)
        length = alone.tokens.shape[1]
        assert torch.equal(together.tokens[sample, :length], alone.tokens[0])
        assert bool((together.tokens[sample, length:] == pad).all())
        assert int(together.inputs.visual_tokens[sample]) == int(alone.inputs.visual_tokens[0])


def test_budget_split_and_newline_rule_by_hand() -> None:
    # Base grid 2 x 2 (packed 0..3), unpadded tile grid 4 x 2: row r at 4 + 3r, 5 + 3r, its newline at 6 + 3r.
    packing = AnyresPacking(
        base=(2, 2),
        grid=(4, 2),
        positions=torch.tensor([0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 13, 14]),
        sources=torch.arange(12),
        newlines=torch.tensor([6, 9, 12, 15]),
        length=16,
    )
    layout = packing.layout()
    assert layout.grids == ((2, 2), (4, 2)) and layout.num_tokens == 12
    # Base rows score 1, 5; tile rows 3, 0, 4, 2: row keep=0.5 keeps 1 base row and 2 tile rows.
    significance = torch.tensor([[0.5, 0.5, 2.5, 2.5, 1.5, 1.5, 0.0, 0.0, 2.0, 2.0, 1.0, 1.0]])
    row = load("strategy", "row", PruningStrategy)
    original = load("reorder", "original", ReorderPolicy)
    selection = original.apply(row.select(significance, layout, Budget(keep=0.5)), significance)
    assert selection.indices.tolist() == [[2, 3, 4, 5, 8, 9]]
    embeddings = torch.arange(6.0)[:, None].expand(-1, 3)
    newline = torch.full((3,), -1.0)
    kept = packing.add_newlines(KeptImage(embeddings, selection.indices[0], 12), newline)
    assert kept.indices.tolist() == [2, 3, 4, 5, 6, 10, 11, 12]
    assert kept.embeddings[:, 0].tolist() == [0, 1, 2, 3, -1, 4, 5, -1]
    assert kept.num_tokens == 16
    # rank keep=0.25: max(1, floor(0.25 * 4)) = 1 base token, floor(0.25 * 8) = 2 tile tokens (both of tile row 2).
    rank = load("strategy", "rank", PruningStrategy)
    assert original.apply(rank.select(significance, layout, Budget(keep=0.25)), significance).indices.tolist() == [
        [2, 8, 9]
    ]
    # Any order: a newline follows the last token of its row in sequence order; rows without tokens lose theirs.
    shuffled = packing.add_newlines(KeptImage(embeddings[:4], torch.tensor([8, 2, 4, 9]), 12), newline)
    assert shuffled.indices.tolist() == [10, 2, 4, 6, 11, 12]


@pytest.mark.parametrize(("strategy", "keep", "rows"), [("row", 0.5, (3, 3)), ("rank", 0.25, None)])
def test_real_packing_keeps_the_newlines_of_kept_rows(
    adapter: LlavaNextAdapter, strategy: str, keep: float, rows: tuple[int, int] | None
) -> None:
    batch = batch_of(adapter, [0])
    packing = adapter.packing(3, batch["image_sizes"][0])
    assert (packing.base, packing.grid, packing.length) == ((6, 6), (6, 10), 102)
    (kept,) = adapter.prefill_inputs(batch, make_pipeline(strategy, keep=keep)).images
    indices = kept.indices.tolist()
    newlines = [index for index in indices if index in packing.newlines.tolist()]
    tile_rows = {(index - 36) // 11 for index in indices if index >= 36}  # 10 tokens + 1 newline per packed row
    assert {(index - 36) // 11 for index in newlines} == tile_rows
    newline_rows = kept.embeddings[[indices.index(index) for index in newlines]]
    assert bool((newline_rows == adapter.model.model.image_newline).all())
    base = [index for index in indices if index < 36]
    grid = [index for index in indices if index >= 36 and index not in newlines]
    if rows is None:  # rank: floor(0.25 * 36) = 9 base tokens, floor(0.25 * 60) = 15 tile tokens
        assert (len(base), len(grid)) == (9, 15)
    else:  # row: floor(0.5 * 6) = 3 whole rows of each grid
        assert (len(base), len(grid), len(newlines)) == (rows[0] * 6, rows[1] * 10, rows[1])
        assert len({index // 6 for index in base}) == rows[0] and len(tile_rows) == rows[1]


def test_significance_follows_tiling_and_unpadding(adapter: LlavaNextAdapter) -> None:
    batch = batch_of(adapter, [0])  # 40 x 70: base + 1 x 2 tiles, a 6 x 12 tile grid unpadded to columns 1..10
    focal = load("significance", "focal", SignificanceSource)
    assert focal.reduction is not None
    with (
        torch.no_grad(),
        VisionAttentionTap(adapter.attention_of(adapter.vision_layers()[-2]), focal.reduction, True) as tap,
    ):
        adapter.model.model.vision_tower(batch["pixel_values"][0, :3])
    per_crop = tap.summary()  # (3 crops, 36 patches)
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(1, 11), indexing="ij")
    crop, patch = 1 + cols // 6, rows * 6 + cols % 6

    def arrange(scores: torch.Tensor) -> torch.Tensor:
        return torch.cat([scores[0], scores[crop, patch].flatten()])[None]

    significance = choose_by_variance(arrange(per_crop.received), arrange(per_crop.paid))[0]
    base = significance[:36].topk(9).indices  # floor(0.25 * 36)
    tiles = significance[36:].topk(15).indices  # floor(0.25 * 60), packed at 36 + 11 * row + col
    expected = sorted([*base.tolist(), *(36 + 11 * (tiles // 10) + tiles % 10).tolist()])
    (kept,) = adapter.prefill_inputs(batch, make_pipeline("rank", keep=0.25)).images
    assert [index for index in kept.indices.tolist() if (index - 36) % 11 != 10 or index < 36] == expected


@pytest.mark.parametrize("strategy", choices("strategy"))
@pytest.mark.parametrize("significance", ["focal", "cls", "norm", "random"])
def test_every_strategy_and_source_runs_batched(adapter: LlavaNextAdapter, strategy: str, significance: str) -> None:
    method = make_pipeline(strategy, keep=0.25, significance=significance, positions="auto")
    generation = adapter.generate(batch_of(adapter, [0, 1]), method, max_new_tokens=2)
    assert generation.tokens.shape[0] == 2
    kept = [image.embeddings.shape[0] for image in generation.inputs.images]
    assert generation.inputs.visual_tokens.tolist() == kept
    assert all(2 <= count <= image.num_tokens for count, image in zip(kept, generation.inputs.images, strict=True))


def test_unsupported_feature_settings_fail_clearly(adapter: LlavaNextAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter.model.config, "vision_feature_select_strategy", "full")
    with pytest.raises(ConfigError, match="vision_feature_select_strategy='default'"):
        adapter.prefill_inputs(batch_of(adapter, [0]), make_pipeline("rank", keep=0.25))


#: The significance each strategy's FLOPs check pairs with (default focal).
FLOPS_SIGNIFICANCE = {"rank": "cls", "pool": "norm", "divprune": "norm", "prumerge": "uniform"}
FLOPS_SIGNIFICANCE |= {"prumerge_plus": "cls", "adafv": "norm", "uniform": "uniform"}


@pytest.mark.parametrize("sample", [0, 1])
@pytest.mark.parametrize("strategy", choices("strategy"))
def test_analytic_flops_equal_a_counted_pruned_generation(
    adapter: LlavaNextAdapter, strategy: str, sample: int
) -> None:
    """Per request (B=1; a padded batch also computes its padding): both images, of different crop counts."""
    significance = FLOPS_SIGNIFICANCE.get(strategy, "focal")
    batch = batch_of(adapter, [sample])
    pipeline = make_pipeline(strategy, keep=0.25, significance=significance)
    generations: list[Generation] = []
    counted = counted_flops(lambda: generations.append(adapter.generate(batch, pipeline, max_new_tokens=2)))
    [breakdown] = adapter.flops(batch, generations[0].inputs, pipeline)
    assert breakdown.total(generations[0].tokens.shape[1]) == counted
