"""LLaVA-PruMerge and PruMerge+ (Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large
Multimodal Models", 2024; ICCV 2025).

Reimplemented from the paper's description; the original code (github.com/42Shawn/LLaVA-PruMerge) is a fork of
LLaVA (Apache-2.0); its own license terms were not verified here.
"""

from __future__ import annotations

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, cosine_similarity, pad_to_counts
from fopru.strategies.lattice import centers, lattice_shape


def iqr_outliers(saliency: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: the upper outliers of each row, ``> Q3 + 1.5 (Q3 - Q1)`` (quartiles interpolated linearly)."""
    quartiles = torch.quantile(saliency, torch.tensor([0.25, 0.75], device=saliency.device), dim=1)  # (2, B)
    fence = quartiles[1] + 1.5 * (quartiles[1] - quartiles[0])
    return saliency > fence[:, None]


class PruMergeStrategy(PruningStrategy):
    """Adaptive count by IQR outliers of [CLS] attention; each kept token absorbs its most similar neighbours.

    1. a = [CLS]-to-patch attention of the tapped layer (without [CLS]: the attention each token receives).
    2. Kept: the tokens with a above the upper IQR fence ``Q3 + 1.5 IQR`` of their span, most attended first; at
       least 1, at most the budget share ``max(1, floor(keep * n))`` (the most attended ones). The paper has no
       budget: ``keep=1.0`` gives its adaptive count; a smaller keep only caps it. The count differs per image
       (``Selection.counts``) and is what the results report.
    3. Merge: each kept token p is replaced by the a-weighted mean of itself and its ``neighbours`` most similar
       other tokens (cosine similarity of the tapped layer's keys, features where keys are unavailable; any token,
       kept or not, ties to the lower index): ``y_p = sum_j a_j x_j / sum_j a_j`` over that cluster, with a clamped
       at 0 (uniform weights if a cluster's attention sums to 0, e.g. with ``scores=logits``).
    ``neighbours`` defaults to 32 (the paper's k), capped at n - 1.
    """

    merges = True
    adaptive = True
    needs_attention = True

    def __init__(self, neighbours: int = 32) -> None:
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ConfigError(f"neighbours={neighbours!r} must be a whole number >= 0")
        self.neighbours = neighbours

    def kept_tokens(self, saliency: torch.Tensor, grid: Grid | None, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) kept indices, most attended first, padded, and their (B,) counts, k <= ``count``."""
        order = torch.sort(saliency, dim=1, descending=True, stable=True).indices[:, :count]
        counts = iqr_outliers(saliency).sum(dim=1).clamp(1, count)
        return order, counts

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        saliency = inputs.saliency(self.name)
        kept, counts = self.kept_tokens(saliency, grid, budget.count(size, num_tokens))
        kept = kept[:, : int(counts.max())]
        similarity, flops = cosine_similarity(inputs.similarity_basis(self.name))
        neighbours = min(self.neighbours, size - 1)
        kept_similarity = similarity.gather(1, kept[:, :, None].expand(-1, -1, size))  # (B, k, n)
        # Each kept token's own column is excluded from its neighbours, then added back as the cluster's centre.
        kept_similarity = kept_similarity.scatter(2, kept[:, :, None], -torch.inf)
        nearest = torch.sort(kept_similarity, dim=2, descending=True, stable=True).indices[:, :, :neighbours]
        cluster = torch.zeros((batch, kept.shape[1], size), device=saliency.device)
        cluster.scatter_(2, nearest, 1.0)
        cluster.scatter_(2, kept[:, :, None], 1.0)
        mass = cluster * saliency.clamp_min(0)[:, None, :]
        total = mass.sum(dim=2, keepdim=True)
        uniform = cluster / cluster.sum(dim=2, keepdim=True)
        weights = torch.where(total > 0, mass / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)
        return pad_to_counts(Selection(kept, weights, flops=flops), counts)


class PruMergePlusStrategy(PruMergeStrategy):
    """PruMerge+: the IQR outliers plus spatially uniform samples, then PruMerge's merge.

    The kept set is the outliers (at most the budget share k) together with an even lattice of
    ``k - outliers`` tokens (the ``uniform`` strategy's lattice of the span's grid; evenly strided without a grid),
    so the count never exceeds k and falls below it where the lattice hits outliers. The paper's PruMerge+ keeps
    about a quarter of the tokens: ``keep=0.25``. Order: outliers by descending attention, then the added lattice
    tokens in raster order.
    """

    def kept_tokens(self, saliency: torch.Tensor, grid: Grid | None, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        order, outliers = super().kept_tokens(saliency, grid, count)
        size = saliency.shape[1]
        rows: list[torch.Tensor] = []
        for sample in range(saliency.shape[0]):  # the lattice's size depends on the sample's outlier count
            chosen = order[sample, : int(outliers[sample])]
            spare = count - chosen.shape[0]
            if spare > 0:
                lattice = _lattice(size, grid, spare).to(chosen.device)
                chosen = torch.cat([chosen, lattice[~torch.isin(lattice, chosen)]])
            rows.append(chosen)
        counts = torch.tensor([row.shape[0] for row in rows], dtype=torch.long, device=saliency.device)
        width = int(counts.max())
        padded = torch.stack([torch.cat([row, row[-1:].expand(width - row.shape[0])]) for row in rows])
        return padded, counts


def _lattice(size: int, grid: Grid | None, count: int) -> torch.Tensor:
    """An even sub-lattice of at most ``count`` tokens, raster order (strided along the sequence without a grid)."""
    if grid is None:
        return centers(size, count)
    rows, cols = grid
    lattice_rows, lattice_cols = lattice_shape(count, rows, cols)
    return (centers(rows, lattice_rows)[:, None] * cols + centers(cols, lattice_cols)).reshape(-1)
