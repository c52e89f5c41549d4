"""The pruning-strategy contract and the selection it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fopru.layout import Budget, Grid, VisualLayout


@dataclass(frozen=True)
class Selection:
    """Which visual tokens go on to the language model.

    Attributes:
        indices: (B, k) int64 indices into the N visual tokens, in the strategy's order (reorder policies change
            it). For merging strategies, each output token's representative position.
        weights: ``None`` for a pure selection (output token t is input token ``indices[:, t]``), or a (B, k, N)
            float32 matrix whose rows sum to 1 for merging strategies: output tokens are ``weights @ features``.
    """

    indices: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def kept(self) -> int:
        """Actual number of visual tokens kept per sample: use it, not the nominal budget, for efficiency."""
        return int(self.indices.shape[1])

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the selection to (B, N, D) features: (B, k, D)."""
        if self.weights is None:
            index = self.indices[:, :, None].expand(-1, -1, features.shape[-1])
            return features.gather(1, index)
        return torch.matmul(self.weights.to(features.dtype), features)


class PruningStrategy(ABC):
    """Chooses the visual tokens to keep from their significance.

    ``select`` validates the inputs, splits the layout into its images/tiles, asks ``select_span`` for each with
    the budget share of that span, and concatenates the results (indices shifted by the span's offset). A
    strategy implements ``select_span`` only:

        significance: (B, n) float32, finite, the scores of one span (higher = more significant).
        grid: that span's (rows, cols), or ``None`` for a grid-free layout (only if ``needs_grid`` is False).
        budget, num_tokens: ``budget.count(units, num_tokens)`` gives the span's share in the strategy's unit
            (tokens for rank, rows for row), where ``num_tokens`` is N of the whole layout.

    It returns indices in [0, n), distinct within a sample, int64, the same count for every sample; ties in
    significance break toward the lower index so results are deterministic. No Python loops over tokens.

    Capabilities: ``needs_grid`` (refuses grid-free layouts), ``merges`` (returns ``weights``: output tokens are
    weighted averages, which costs a (k x N) @ (N x D) product per image).
    """

    needs_grid: bool = False
    merges: bool = False

    def select(self, significance: torch.Tensor, layout: VisualLayout, budget: Budget) -> Selection:
        """Select tokens for a batch laid out as ``layout``."""
        layout.check_significance(significance)
        if self.needs_grid:
            layout.require_grids(type(self).__name__.removesuffix("Strategy").lower())
        significance = significance.float()
        spans = layout.spans()
        parts: list[tuple[int, int, Selection]] = []
        for offset, grid in spans:
            size = layout.num_tokens if grid is None else grid[0] * grid[1]
            part = self.select_span(significance[:, offset : offset + size], grid, budget, layout.num_tokens)
            parts.append((offset, size, part))
        if len(parts) == 1:
            return parts[0][2]
        indices = torch.cat([part.indices + offset for offset, _, part in parts], dim=1)
        if all(part.weights is None for _, _, part in parts):
            return Selection(indices)
        batch = significance.shape[0]
        weights = significance.new_zeros((batch, indices.shape[1], layout.num_tokens))
        row = 0
        for offset, size, part in parts:
            block = part.weights if part.weights is not None else _one_hot(part.indices, size)
            weights[:, row : row + part.kept, offset : offset + size] = block
            row += part.kept
        return Selection(indices, weights)

    @abstractmethod
    def select_span(self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int) -> Selection:
        """Selection within one image/tile; indices relative to the span."""


def _one_hot(indices: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(indices, size).float()


def top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores per row, highest first, ties toward the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :count]
