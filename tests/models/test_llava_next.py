"""What is LLaVA-NeXT's own (AnyRes): the budget split between base and tiles, row newlines, tiling and unpadding of
the significance. The contract every family meets is ``tests/models/test_contract.py``, with this family's hook in
``tests/models/families/tiny_llava_next.py``."""

from collections.abc import Mapping

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, load
from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.models.inputs import KeptImage
from fopru.models.llava_next import AnyresPacking, LlavaNextAdapter
from fopru.models.tap import VisionAttentionTap
from fopru.reorder.base import ReorderPolicy
from fopru.significance.base import SignificanceSource
from fopru.significance.sources import choose_by_variance
from fopru.strategies.base import PruningStrategy
from tests.models.conftest import example_batch, make_pipeline


@pytest.fixture(scope="module")
def adapter() -> LlavaNextAdapter:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava_next.yaml"))
    assert isinstance(built, LlavaNextAdapter)
    return built.load()  # type: ignore[return-value]


def batch_of(adapter: LlavaNextAdapter, samples: list[int]) -> Mapping[str, torch.Tensor]:
    """The fixture's examples: 70 x 40 (1 x 2 tiles, width unpadded to 10 patches), 50 x 90 (2 x 1 tiles, 12 x 6)."""
    return example_batch("tiny_llava_next", adapter, samples)


@pytest.mark.parametrize(("strategy", "keep"), [("rank", 0.25), ("row", 0.5), ("pool", 0.25)])
def test_kept_rows_bring_their_newlines_as_visual_tokens(adapter: LlavaNextAdapter, strategy: str, keep: float) -> None:
    """The visual-token count the contract suite checks includes the newlines of kept rows."""
    batch = batch_of(adapter, [1])
    inputs = adapter.prefill_inputs(batch, make_pipeline(strategy, keep=keep))
    (kept,) = inputs.images
    newlines = int((kept.embeddings == adapter.model.model.image_newline).all(dim=1).sum())
    assert newlines > 0
    assert int(inputs.visual_tokens[0]) == kept.embeddings.shape[0] < kept.num_tokens


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


def test_unsupported_feature_settings_fail_clearly(adapter: LlavaNextAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter.model.config, "vision_feature_select_strategy", "full")
    with pytest.raises(ConfigError, match="vision_feature_select_strategy='default'"):
        adapter.prefill_inputs(batch_of(adapter, [0]), make_pipeline("rank", keep=0.25))
