"""The functional API: FoPru on plain tensors, no Hydra and no model needed."""

from __future__ import annotations

import torch

from fopru.components import load
from fopru.layout import Budget, Grid, VisualLayout
from fopru.reorder.base import ReorderPolicy
from fopru.significance.attention import summarize_attention
from fopru.significance.sources import choose_by_variance
from fopru.strategies.base import PruningStrategy


def focal_significance(attn: torch.Tensor, has_cls: bool = True) -> torch.Tensor:
    """FoPru's focal significance from one layer's attention probabilities.

    Args:
        attn: (B, H, T, T) softmax attention of the tapped vision layer; T = N + 1 with [CLS] first when
            ``has_cls``, else T = N.
        has_cls: whether position 0 is a [CLS] token (dropped from rows and columns after head averaging).

    Returns:
        (B, N) float32: per image, attention received (s1) if its variance exceeds that of attention paid (s2),
        else s2.
    """
    summary = summarize_attention(attn, has_cls=has_cls)
    return choose_by_variance(summary.received, summary.paid)


def select_tokens(
    significance: torch.Tensor,
    grid: Grid,
    keep: float,
    strategy: str = "rank",
    reorder: str = "original",
    *,
    keep_tokens: int | None = None,
) -> torch.Tensor:
    """Indices of the visual tokens to keep.

    Args:
        significance: (B, N) float scores, higher = keep.
        grid: (rows, cols) of the patch grid, rows * cols == N.
        keep: kept fraction in (0, 1]; rank keeps max(1, floor(keep * N)) tokens, row max(1, floor(keep * rows))
            whole rows.
        strategy: a name from ``conf/strategy/`` (rank, row, random, uniform, pool, none). For ``pool`` the
            indices are each pooled token's centre patch.
        reorder: a name from ``conf/reorder/`` (original, significance, none).
        keep_tokens: an absolute count that overrides ``keep``.

    Returns:
        (B, k) int64 indices into N, ordered by ``reorder``.
    """
    budget = Budget(keep=keep, keep_tokens=keep_tokens)
    selector = load("strategy", strategy, PruningStrategy)
    policy = load("reorder", reorder, ReorderPolicy)
    layout = VisualLayout.from_grid(grid)
    selection = selector.select(significance, layout, budget)
    return policy.apply(selection, significance).indices
