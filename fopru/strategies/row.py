"""FoPru's row strategy: whole image rows, ranked by summed significance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, top_indices


@dataclass(frozen=True)
class RowStrategy(PruningStrategy):
    """Keep the ``max(1, floor(keep * rows))`` rows with the highest summed significance, whole.

    Rows come out in descending score, each row left to right. The kept count is a multiple of the row width,
    so it differs from ``keep * N``: read it from ``Selection.kept``.
    """

    needs_grid = True
    keeps = "rows"

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        assert grid is not None  # guaranteed by needs_grid
        rows, cols = grid
        batch = significance.shape[0]
        row_scores = significance.reshape(batch, rows, cols).sum(dim=2)
        kept_rows = top_indices(row_scores, budget.count(rows, num_tokens))
        columns = torch.arange(cols, device=significance.device)
        return Selection((kept_rows[:, :, None] * cols + columns).reshape(batch, -1))
