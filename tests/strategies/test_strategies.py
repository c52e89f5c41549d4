import math
from decimal import Decimal
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fopru.components import choices, load
from fopru.errors import ConfigError
from fopru.layout import Budget, VisualLayout
from fopru.significance.attention import AttentionSummary
from fopru.strategies import PruningStrategy, RankStrategy, RowStrategy, StrategyInputs
from fopru.strategies.lattice import lattice_shape

DETERMINISTIC = [name for name in choices("strategy") if name != "random"]


def scores(batch: int, tokens: int, seed: int = 0, levels: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if levels is None:
        return torch.rand(batch, tokens, generator=generator)
    return torch.randint(0, levels, (batch, tokens), generator=generator).float()  # many ties


def inputs_for(batch: int, tokens: int, seed: int = 0) -> StrategyInputs:
    """Random inputs of every kind a strategy may ask for: features, attention with [CLS] and keys, projected
    tokens and a right-padded text of three tokens."""
    generator = torch.Generator().manual_seed(seed + 1000)
    cls = torch.softmax(3 * torch.randn(batch, tokens, generator=generator), dim=1)
    joint = torch.softmax(3 * torch.randn(batch, tokens, generator=generator), dim=1)
    keys = torch.randn(batch, tokens, 6, generator=generator)
    attention = AttentionSummary(cls, cls, cls, keys=keys, key_heads=2, cls_joint=joint)
    mask = torch.tensor([[True, True, False]]).expand(batch, -1)
    return StrategyInputs(
        features=torch.randn(batch, tokens, 5, generator=generator),
        attention=attention,
        projected=torch.randn(batch, tokens, 4, generator=generator),
        text=torch.randn(batch, 3, 4, generator=generator),
        text_mask=mask,
    )


def sample_of(inputs: StrategyInputs, sample: int) -> StrategyInputs:
    """One sample of ``inputs`` as a batch of one."""
    attention = inputs.attention
    assert attention is not None and attention.cls is not None and attention.keys is not None
    one = slice(sample, sample + 1)
    return StrategyInputs(
        features=None if inputs.features is None else inputs.features[one],
        attention=AttentionSummary(
            attention.received[one],
            attention.paid[one],
            attention.cls[one],
            keys=attention.keys[one],
            key_heads=attention.key_heads,
            cls_joint=None if attention.cls_joint is None else attention.cls_joint[one],
        ),
        projected=None if inputs.projected is None else inputs.projected[one],
        text=None if inputs.text is None else inputs.text[one],
        text_mask=None if inputs.text_mask is None else inputs.text_mask[one],
    )


grids = st.tuples(st.integers(1, 9), st.integers(1, 9))
layouts = st.lists(grids, min_size=1, max_size=3).map(
    lambda spans: VisualLayout(num_tokens=sum(r * c for r, c in spans), grids=tuple(spans))
)
keeps = st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 1.0])


def expected_count(keep: float, units: int) -> int:
    """floor(keep * units) in decimal arithmetic, as the user wrote keep, and at least 1."""
    return max(1, math.floor(Decimal(str(keep)) * units))


@pytest.mark.parametrize("name", choices("strategy"))
@given(layout=layouts, keep=keeps, batch=st.integers(1, 3), seed=st.integers(0, 99))
def test_every_registered_strategy_meets_the_contract(
    name: str, layout: VisualLayout, keep: float, batch: int, seed: int
) -> None:
    strategy = load("strategy", name, PruningStrategy)
    significance = scores(batch, layout.num_tokens, seed)
    selection = strategy.select(significance, layout, Budget(keep=keep), inputs_for(batch, layout.num_tokens, seed))
    indices = selection.indices
    assert indices.dtype == torch.int64
    assert indices.shape == (batch, selection.kept)
    assert 1 <= selection.kept <= layout.num_tokens
    assert int(indices.min()) >= 0 and int(indices.max()) < layout.num_tokens
    counts = selection.kept_per_sample.tolist()
    assert (selection.counts is not None) <= strategy.adaptive  # only adaptive strategies vary the count
    assert max(counts) == selection.kept and min(counts) >= 1
    for row, count in zip(indices, counts, strict=True):
        assert len(set(row[:count].tolist())) == count  # distinct
        assert bool((row[count:] == row[count - 1]).all())  # padding repeats the last kept column
    assert (selection.weights is not None) == strategy.merges
    if selection.weights is not None:
        assert selection.weights.shape == (batch, selection.kept, layout.num_tokens)
        assert bool((selection.weights >= 0).all())
        if strategy.averages:
            torch.testing.assert_close(selection.weights.sum(-1), torch.ones(batch, selection.kept))
        else:  # summing merges (the released VisionZip, PruMerge): every output token still draws on some input
            assert bool((selection.weights.sum(-1) > 0).all())


def declared_keeps(name: str) -> str:
    """What the registered strategy declares it keeps of its budget share."""
    return load("strategy", name, PruningStrategy).keeps


TOKEN_BUDGET = [name for name in choices("strategy") if declared_keeps(name) in ("exact", "at_most")]


@pytest.mark.parametrize("name", TOKEN_BUDGET)
@given(layout=layouts, keep=keeps, seed=st.integers(0, 99))
def test_token_budget_strategies_stay_within_each_span_share(
    name: str, layout: VisualLayout, keep: float, seed: int
) -> None:
    selection = load("strategy", name, PruningStrategy).select(
        scores(2, layout.num_tokens, seed), layout, Budget(keep=keep), inputs_for(2, layout.num_tokens, seed)
    )
    share = sum(expected_count(keep, r * c) for r, c in layout.grids or ())
    if name == "divprune":  # the released count: round(keep * N) over the whole packed image
        share = max(1, round(Fraction(str(keep)) * layout.num_tokens))
    assert int(selection.kept_per_sample.max()) <= share
    if declared_keeps(name) == "exact":
        assert selection.kept_per_sample.tolist() == [share, share]


@pytest.mark.parametrize("name", [name for name in choices("strategy") if declared_keeps(name) in ("rows", "all")])
@given(layout=layouts, keep=keeps, seed=st.integers(0, 99))
def test_row_and_keep_all_strategies_keep_what_they_declare(
    name: str, layout: VisualLayout, keep: float, seed: int
) -> None:
    selection = load("strategy", name, PruningStrategy).select(
        scores(2, layout.num_tokens, seed), layout, Budget(keep=keep), inputs_for(2, layout.num_tokens, seed)
    )
    grids = layout.grids or ()
    if declared_keeps(name) == "all":
        assert selection.kept_per_sample.tolist() == [layout.num_tokens, layout.num_tokens]
    else:
        rows = sum(expected_count(keep, r) * c for r, c in grids)
        assert selection.kept_per_sample.tolist() == [rows, rows]


@pytest.mark.parametrize("name", DETERMINISTIC)
@given(layout=layouts, keep=keeps, seed=st.integers(0, 99))
def test_batch_equals_a_per_sample_loop(name: str, layout: VisualLayout, keep: float, seed: int) -> None:
    strategy = load("strategy", name, PruningStrategy)
    significance = scores(3, layout.num_tokens, seed, levels=4)
    inputs = inputs_for(3, layout.num_tokens, seed)
    batched = strategy.select(significance, layout, Budget(keep=keep), inputs)
    for sample in range(3):
        alone = strategy.select(significance[sample : sample + 1], layout, Budget(keep=keep), sample_of(inputs, sample))
        assert alone.counts is None
        assert torch.equal(batched.sample(sample).indices, alone.indices)
        if alone.weights is not None:
            torch.testing.assert_close(batched.sample(sample).weights, alone.weights)


@given(tokens=st.integers(1, 80), keep=keeps, seed=st.integers(0, 99), levels=st.sampled_from([2, 5, None]))
def test_rank_is_exact_top_k_with_ties_to_the_lower_index(
    tokens: int, keep: float, seed: int, levels: int | None
) -> None:
    significance = scores(2, tokens, seed, levels)
    selection = RankStrategy().select(significance, VisualLayout(num_tokens=tokens), Budget(keep=keep))
    k = expected_count(keep, tokens)
    assert selection.kept == k
    for row, chosen in zip(significance.tolist(), selection.indices.tolist(), strict=True):
        # Reference: sort by (-score, index) in plain Python.
        expected = sorted(range(tokens), key=lambda index: (-row[index], index))[:k]
        assert chosen == expected


@given(rows=st.integers(1, 12), cols=st.integers(1, 12), keep=keeps, seed=st.integers(0, 99))
def test_row_keeps_whole_highest_scoring_rows(rows: int, cols: int, keep: float, seed: int) -> None:
    significance = scores(2, rows * cols, seed, levels=3)
    selection = RowStrategy().select(significance, VisualLayout.from_grid((rows, cols)), Budget(keep=keep))
    kept_rows = expected_count(keep, rows)
    assert selection.kept == kept_rows * cols
    for row_scores, chosen in zip(significance.view(2, rows, cols).sum(-1).tolist(), selection.indices, strict=True):
        expected_rows = sorted(range(rows), key=lambda r: (-row_scores[r], r))[:kept_rows]
        expected = [r * cols + c for r in expected_rows for c in range(cols)]
        assert chosen.tolist() == expected


def test_row_on_a_layout_without_grid_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="row strategy needs a patch grid"):
        RowStrategy().select(torch.rand(1, 6), VisualLayout(num_tokens=6), Budget(keep=0.5))


def test_tiles_get_their_own_budget_share_and_offsets() -> None:
    layout = VisualLayout(num_tokens=4 + 6, grids=((2, 2), (2, 3)))
    significance = torch.tensor([[0.0, 9.0, 1.0, 2.0, 5.0, 0.0, 0.0, 0.0, 7.0, 6.0]])
    rank = RankStrategy().select(significance, layout, Budget(keep=0.5))
    assert rank.indices.tolist() == [[1, 3, 8, 9, 4]]  # 2 of tile one, 3 of tile two (offset 4)
    row = RowStrategy().select(significance, layout, Budget(keep=0.5))
    assert row.indices.tolist() == [[0, 1, 7, 8, 9]]  # one row of each tile


def test_random_strategy_is_seeded() -> None:
    layout = VisualLayout.from_grid((6, 6))
    significance = torch.rand(2, 36)
    first = load("strategy", "random", PruningStrategy).select(significance, layout, Budget(keep=0.25))
    second = load("strategy", "random", PruningStrategy).select(significance, layout, Budget(keep=0.25))
    assert torch.equal(first.indices, second.indices)
    assert first.kept == 9


def test_uniform_takes_an_even_lattice() -> None:
    selection = load("strategy", "uniform", PruningStrategy).select(
        torch.rand(1, 36), VisualLayout.from_grid((6, 6)), Budget(keep=0.25)
    )
    # 9 tokens: a 3 x 3 lattice at the centres of 2 x 2 cells: rows and columns 1, 3, 5.
    assert selection.indices.tolist() == [[r * 6 + c for r in (1, 3, 5) for c in (1, 3, 5)]]


def test_centre_keeps_the_patches_nearest_the_middle() -> None:
    centre = load("strategy", "centre", PruningStrategy)
    square = VisualLayout.from_grid((4, 4))
    # 4 x 4: the middle is the corner shared by patches 5, 6, 9, 10 (squared distance 0.5 each); next come the
    # eight at 2.5 (1, 2, 4, 7, 8, 11, 13, 14), ties toward the lower index; the corners (4.5) come last.
    for significance in (torch.rand(2, 16), torch.arange(16.0).expand(2, -1)):  # significance is ignored
        assert centre.select(significance, square, Budget(keep=0.25)).indices.tolist() == [[5, 6, 9, 10]] * 2
        assert centre.select(significance, square, Budget(keep=0.5)).indices.tolist() == [[5, 6, 9, 10, 1, 2, 4, 7]] * 2
    # 3 x 5: the middle is patch 7 (row 1, column 2); then 2, 6, 8, 12 at distance 1.
    wide = centre.select(torch.rand(1, 15), VisualLayout.from_grid((3, 5)), Budget(keep=1.0, keep_tokens=3))
    assert wide.indices.tolist() == [[7, 2, 6]]
    # Without a grid: the middle of the sequence.
    assert centre.select(torch.rand(1, 5), VisualLayout(5), Budget(keep=0.2)).indices.tolist() == [[2]]


def test_pool_averages_bins() -> None:
    selection = load("strategy", "pool", PruningStrategy).select(
        torch.rand(1, 16), VisualLayout.from_grid((4, 4)), Budget(keep=0.25)
    )
    features = torch.arange(16.0).view(1, 16, 1)
    pooled = selection.gather(features)
    # 2 x 2 lattice over a 4 x 4 grid: means of the four 2 x 2 quadrants.
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


@given(count=st.integers(1, 600), rows=st.integers(1, 30), cols=st.integers(1, 30))
def test_lattice_fits_the_budget_and_the_grid(count: int, rows: int, cols: int) -> None:
    lattice_rows, lattice_cols = lattice_shape(count, rows, cols)
    assert 1 <= lattice_rows <= rows and 1 <= lattice_cols <= cols
    assert lattice_rows * lattice_cols <= count
