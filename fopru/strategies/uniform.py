"""Spatially even subsampling of the grid: a position-only baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs
from fopru.strategies.lattice import centers, lattice_shape


@dataclass(frozen=True)
class UniformStrategy(PruningStrategy):
    """Keep the centre patch of each cell of an even r x c lattice with r * c <= the budget, raster order.

    The lattice keeps about the grid's aspect ratio, so the actual count can be below ``keep * n``. Without a
    grid the tokens are evenly strided along the sequence.
    """

    keeps = "at_most"

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        count = budget.count(size, num_tokens)
        if grid is None:
            indices = centers(size, count)
        else:
            rows, cols = grid
            lattice_rows, lattice_cols = lattice_shape(count, rows, cols)
            indices = (centers(rows, lattice_rows)[:, None] * cols + centers(cols, lattice_cols)).reshape(-1)
        return Selection(indices.to(significance.device).expand(batch, -1).contiguous())
