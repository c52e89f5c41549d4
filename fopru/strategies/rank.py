"""FoPru's rank strategy: global top-k by significance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, top_indices


@dataclass(frozen=True)
class RankStrategy(PruningStrategy):
    """Keep the ``max(1, floor(keep * n))`` most significant tokens of each span, most significant first."""

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        return Selection(top_indices(significance, budget.count(significance.shape[1], num_tokens)))
