"""A hand-worked example of the whole method through the public API.

A 2 x 3 patch grid (patches p0 p1 p2 / p3 p4 p5) with a [CLS] token first, so T = 7. The head-averaged attention
matrices below were written by hand; each row sums to 1. Expected values were computed on paper.
"""

import pytest
import torch

import fopru
from fopru.errors import ConfigError

# Sample 1: patches attend mostly to p1 and p3, so attention *received* varies a lot.
#          CLS   p0   p1   p2   p3   p4   p5
MEAN_1 = [
    [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # CLS
    [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # p0: pays 0.6 to patches
    [0.1, 0.1, 0.5, 0.1, 0.1, 0.0, 0.1],  # p1: 0.9
    [0.2, 0.0, 0.6, 0.0, 0.2, 0.0, 0.0],  # p2: 0.8
    [0.4, 0.0, 0.3, 0.0, 0.3, 0.0, 0.0],  # p3: 0.6
    [0.1, 0.1, 0.3, 0.1, 0.3, 0.1, 0.0],  # p4: 0.9
    [0.6, 0.0, 0.2, 0.0, 0.2, 0.0, 0.0],  # p5: 0.4
]
# s1 = column sums over patch rows / 6 = [0.3, 2.0, 0.3, 1.2, 0.2, 0.2] / 6, Var = 0.46 / 36
# s2 = row sums over patch columns / 6 = [0.6, 0.9, 0.8, 0.6, 0.9, 0.4] / 6, Var = 0.0333 / 36  -> s1 wins
S1_SAMPLE_1 = [0.05, 2.0 / 6, 0.05, 0.2, 0.2 / 6, 0.2 / 6]

# Sample 2: every patch row spreads evenly over the patches but sends a different share to [CLS], so attention
# received is constant (Var(s1) = 0) and attention *paid* decides.
CLS_SHARE = [0.4, 0.1, 0.7, 0.4, 0.1, 0.4]
MEAN_2 = [[0.5] + [0.5 / 6] * 6] + [[share] + [(1 - share) / 6] * 6 for share in CLS_SHARE]
S2_SAMPLE_2 = [(1 - share) / 6 for share in CLS_SHARE]  # [0.1, 0.15, 0.05, 0.1, 0.15, 0.1]


def two_head_attention() -> torch.Tensor:
    """(2, 2, 7, 7): each sample's two heads differ but average to the matrices above."""
    mean = torch.tensor([MEAN_1, MEAN_2], dtype=torch.float64)
    shift = torch.zeros(7, 7, dtype=torch.float64)
    shift[1, 1], shift[1, 2] = 0.05, -0.05  # moves mass between two columns of one row; rows still sum to 1
    return torch.stack([mean + shift, mean - shift], dim=1)


def test_focal_significance_by_hand() -> None:
    significance = fopru.focal_significance(two_head_attention(), has_cls=True)
    torch.testing.assert_close(significance, torch.tensor([S1_SAMPLE_1, S2_SAMPLE_2]))


def test_rank_and_row_by_hand() -> None:
    significance = fopru.focal_significance(two_head_attention())
    # rank, keep 0.5 -> k = 3. Sample 1: p1 (1/3), p3 (0.2), then p0 and p2 tie at 0.05 -> p0.
    # Sample 2: p1 and p4 (0.15), then p0, p3, p5 tie at 0.1 -> p0. Back in raster order:
    assert fopru.select_tokens(significance, (2, 3), 0.5, "rank").tolist() == [[0, 1, 3], [0, 1, 4]]
    # The strategy's own order keeps the ranking:
    assert fopru.select_tokens(significance, (2, 3), 0.5, "rank", reorder="none").tolist() == [[1, 3, 0], [1, 4, 0]]
    # row, keep 0.5 -> 1 of 2 rows. Sample 1: row sums 0.433 vs 0.267 -> row 0. Sample 2: 0.30 vs 0.35 -> row 1.
    assert fopru.select_tokens(significance, (2, 3), 0.5, "row").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_keep_tokens_overrides_keep() -> None:
    significance = fopru.focal_significance(two_head_attention())
    assert fopru.select_tokens(significance, (2, 3), 1.0, "rank", keep_tokens=2).tolist() == [[1, 3], [1, 4]]


def test_api_errors_name_the_choices() -> None:
    significance = torch.rand(1, 6)
    with pytest.raises(ConfigError, match=r"unknown strategy 'ranked'; valid strategy choices: .*rank, row"):
        fopru.select_tokens(significance, (2, 3), 0.5, "ranked")
    with pytest.raises(ConfigError, match=r"unknown reorder 'raster'; valid reorder choices: none, original"):
        fopru.select_tokens(significance, (2, 3), 0.5, reorder="raster")
    with pytest.raises(ConfigError, match="layout has 8"):
        fopru.select_tokens(significance, (2, 4), 0.5)
    with pytest.raises(ConfigError, match=r"keep=0 "):
        fopru.select_tokens(significance, (2, 3), 0)
