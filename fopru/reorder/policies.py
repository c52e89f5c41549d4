"""Reorder policies: FoPru's original order and its ablations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.reorder.base import ReorderPolicy
from fopru.strategies.base import Selection


@dataclass(frozen=True)
class OriginalOrder(ReorderPolicy):
    """Kept tokens back in raster order (ascending index): FoPru's default."""

    def permutation(self, selection: Selection, significance: torch.Tensor) -> torch.Tensor:
        return torch.sort(selection.indices, dim=1, stable=True).indices


@dataclass(frozen=True)
class SignificanceOrder(ReorderPolicy):
    """Most significant kept token first; ties keep raster order."""

    def permutation(self, selection: Selection, significance: torch.Tensor) -> torch.Tensor:
        raster = torch.sort(selection.indices, dim=1, stable=True).indices
        scores = significance.float().gather(1, selection.indices.gather(1, raster))
        by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices
        return raster.gather(1, by_score)


@dataclass(frozen=True)
class StrategyOrder(ReorderPolicy):
    """Whatever order the strategy produced (rank: by score; row: row by row in score order)."""

    def permutation(self, selection: Selection, significance: torch.Tensor) -> torch.Tensor:
        return torch.arange(selection.kept, device=selection.indices.device).expand_as(selection.indices)
