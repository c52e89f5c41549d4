import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fopru.components import choices, load
from fopru.errors import ConfigError
from fopru.layout import Budget, VisualLayout
from fopru.reorder import OriginalOrder, ReorderPolicy, SignificanceOrder, StrategyOrder
from fopru.strategies import PoolStrategy, RankStrategy, RowStrategy, Selection

LAYOUT = VisualLayout.from_grid((5, 6))


@pytest.mark.parametrize("name", choices("reorder"))
@given(seed=st.integers(0, 200), keep=st.sampled_from([0.1, 0.3, 0.5, 1.0]))
def test_every_policy_permutes_without_changing_the_kept_set(name: str, seed: int, keep: float) -> None:
    significance = torch.rand(3, 30, generator=torch.Generator().manual_seed(seed))
    selection = RankStrategy().select(significance, LAYOUT, Budget(keep=keep))
    reordered = load("reorder", name, ReorderPolicy).apply(selection, significance)
    assert reordered.kept == selection.kept
    for before, after in zip(selection.indices, reordered.indices, strict=True):
        assert sorted(before.tolist()) == sorted(after.tolist())


@given(seed=st.integers(0, 200))
def test_original_order_is_ascending(seed: int) -> None:
    significance = torch.rand(2, 30, generator=torch.Generator().manual_seed(seed))
    selection = RowStrategy().select(significance, LAYOUT, Budget(keep=0.4))
    indices = OriginalOrder().apply(selection, significance).indices
    assert torch.equal(indices, indices.sort(dim=1).values)


@given(seed=st.integers(0, 200))
def test_significance_order_is_descending_with_raster_ties(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    significance = torch.randint(0, 3, (2, 30), generator=generator).float()
    selection = RowStrategy().select(significance, LAYOUT, Budget(keep=0.5))
    indices = SignificanceOrder().apply(selection, significance).indices
    for row, chosen in zip(significance.tolist(), indices.tolist(), strict=True):
        assert chosen == sorted(chosen, key=lambda index: (-row[index], index))


def test_none_keeps_the_strategy_order() -> None:
    significance = torch.rand(2, 30)
    selection = RankStrategy().select(significance, LAYOUT, Budget(keep=0.3))
    assert torch.equal(StrategyOrder().apply(selection, significance).indices, selection.indices)


def test_merge_weights_follow_their_tokens() -> None:
    significance = torch.rand(1, 30)
    selection = PoolStrategy().select(significance, LAYOUT, Budget(keep=0.3))
    reversed_selection = Selection(selection.indices.flip(1), selection.weights.flip(1))  # type: ignore[union-attr]
    restored = OriginalOrder().apply(reversed_selection, significance)
    assert torch.equal(restored.indices, selection.indices)
    assert torch.equal(restored.weights, selection.weights)  # type: ignore[arg-type]


def test_position_modes_are_validated() -> None:
    assert OriginalOrder().positions == "auto"
    with pytest.raises(ConfigError, match=r"auto.*compact.*original"):
        OriginalOrder(positions="absolute")  # type: ignore[arg-type]
