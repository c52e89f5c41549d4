import math

import pytest
import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, VisualLayout


@pytest.mark.parametrize(
    ("keep", "units", "expected"),
    [
        (0.25, 576, 144),
        (0.05, 576, 28),  # floor(28.8)
        (0.29, 100, 29),  # binary floating point gives 28.999...; the budget is exact
        (0.001, 576, 1),  # never below one
        (1.0, 576, 576),
        (0.5, 3, 1),
        (0.05, 24, 1),  # row strategy: floor(1.2) rows
    ],
)
def test_fraction_counts_floor_with_minimum_one(keep: float, units: int, expected: int) -> None:
    assert Budget(keep=keep).count(units, 576) == expected


def test_keep_tokens_overrides_keep_and_splits_exactly() -> None:
    budget = Budget(keep=0.9, keep_tokens=64)
    assert budget.count(576, 576) == 64
    # row strategy on a 24 x 24 grid: floor(64 / 24) = 2 rows
    assert budget.count(24, 576) == 2
    # a 4-tile layout of 144 tokens each: floor(64 * 144 / 576) = 16 per tile
    assert budget.count(144, 576) == 16


@pytest.mark.parametrize("keep", [0, -0.1, 1.0001, 2, math.nan, math.inf, -math.inf])
def test_bad_keep_names_the_value_and_the_range(keep: float) -> None:
    with pytest.raises(ConfigError, match=r"keep=.*\(0, 1\]"):
        Budget(keep=keep)


@pytest.mark.parametrize("keep", ["0.5", None, True])
def test_non_numeric_keep_is_rejected(keep: object) -> None:
    with pytest.raises(ConfigError, match="keep"):
        Budget(keep=keep)  # type: ignore[arg-type]


@pytest.mark.parametrize("tokens", [0, -3, 2.5, True])
def test_bad_keep_tokens(tokens: object) -> None:
    with pytest.raises(ConfigError, match="keep_tokens"):
        Budget(keep_tokens=tokens)  # type: ignore[arg-type]


def test_keep_tokens_above_n_is_rejected_with_the_valid_range() -> None:
    with pytest.raises(ConfigError, match=r"keep_tokens=600 exceeds the 576 .* 1 <= keep_tokens <= 576"):
        Budget(keep_tokens=600).count(576, 576)


def test_layout_grids_must_cover_the_tokens() -> None:
    with pytest.raises(ConfigError, match="cover"):
        VisualLayout(num_tokens=10, grids=((3, 3),))
    assert VisualLayout(num_tokens=9 + 8, grids=((3, 3), (2, 4))).spans() == [(0, (3, 3)), (9, (2, 4))]


@pytest.mark.parametrize(
    ("significance", "pattern"),
    [
        (torch.zeros(2, 5), "layout has 6"),
        (torch.zeros(6), r"\(batch, tokens\)"),
        (torch.zeros(1, 6, dtype=torch.long), "float"),
        (torch.tensor([[0.0, 1.0, math.nan, 0.0, 0.0, 0.0]]), "NaN or inf.*sample 0, token 2"),
        (torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, math.inf]]), "NaN or inf.*token 5"),
    ],
)
def test_significance_checks(significance: torch.Tensor, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        VisualLayout.from_grid((2, 3)).check_significance(significance)


def test_row_needs_a_grid() -> None:
    with pytest.raises(ConfigError, match="row strategy needs a patch grid"):
        VisualLayout(num_tokens=6).require_grids("row")
