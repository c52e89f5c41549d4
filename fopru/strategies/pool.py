"""Average pooling of the grid down to the budget: a merging, position-only baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs
from fopru.strategies.lattice import bin_edges, lattice_shape


@dataclass(frozen=True)
class PoolStrategy(PruningStrategy):
    """Average-pool the grid into an r x c lattice (r * c <= the budget) with adaptive-pooling bins.

    Output tokens are bin means (``Selection.weights``); each one's position is the centre patch of its bin.
    Without a grid, the sequence is pooled in 1-D.
    """

    merges = True
    keeps = "at_most"

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        count = budget.count(size, num_tokens)
        rows, cols = grid if grid is not None else (1, size)
        lattice_rows, lattice_cols = (1, count) if grid is None else lattice_shape(count, rows, cols)
        row_bins = _bin_matrix(rows, lattice_rows)  # (r, rows)
        col_bins = _bin_matrix(cols, lattice_cols)  # (c, cols)
        weights = torch.einsum("ia,jb->ijab", row_bins, col_bins).reshape(lattice_rows * lattice_cols, size)
        weights = weights / weights.sum(dim=1, keepdim=True)
        row_centers = _bin_centers(rows, lattice_rows)
        col_centers = _bin_centers(cols, lattice_cols)
        indices = (row_centers[:, None] * cols + col_centers).reshape(-1)
        device = significance.device
        return Selection(
            indices.to(device).expand(batch, -1).contiguous(),
            weights.to(device).expand(batch, -1, -1).contiguous(),
        )


def _bin_matrix(size: int, parts: int) -> torch.Tensor:
    starts, stops = bin_edges(size, parts)
    positions = torch.arange(size)
    return ((positions >= torch.tensor(starts)[:, None]) & (positions < torch.tensor(stops)[:, None])).float()


def _bin_centers(size: int, parts: int) -> torch.Tensor:
    starts, stops = bin_edges(size, parts)
    return (torch.tensor(starts) + torch.tensor(stops) - 1) // 2
