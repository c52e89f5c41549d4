"""The tokens nearest the image centre: a position-only baseline that needs no significance at all."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, top_indices


@dataclass(frozen=True)
class CentreStrategy(PruningStrategy):
    """Keep the ``max(1, floor(keep * n))`` patches whose centres lie nearest the grid's centre (Euclidean distance
    in patch units), nearest first, ties toward the lower raster index; significance is ignored.

    Photographs and benchmark images tend to put their subject in the middle, so this is the floor a method must
    beat to show that it reads the image rather than the usual framing. Without a grid the middle of the sequence
    is kept.
    """

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        count = budget.count(size, num_tokens)
        rows, cols = grid if grid is not None else (1, size)
        row = torch.arange(rows, dtype=torch.float64)[:, None].expand(rows, cols)
        col = torch.arange(cols, dtype=torch.float64)[None, :].expand(rows, cols)
        # Squared distances of patch centres (i + 0.5) to the grid centre (rows / 2): exact in float64 for any grid.
        distance = (row + 0.5 - rows / 2) ** 2 + (col + 0.5 - cols / 2) ** 2
        nearest = top_indices(-distance.reshape(1, -1), count)
        return Selection(nearest.to(significance.device).expand(batch, -1).contiguous())
