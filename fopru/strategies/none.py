"""No pruning: the unpruned reference point of every sweep."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs


@dataclass(frozen=True)
class KeepAllStrategy(PruningStrategy):
    """Keep every token in its original order, whatever the budget."""

    keeps = "all"

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        return Selection(torch.arange(size, device=significance.device).expand(batch, -1).contiguous())
