"""LLaVA-PruMerge and PruMerge+ (Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large
Multimodal Models", 2024; ICCV 2025).

Follows the authors' released code, github.com/42Shawn/LLaVA-PruMerge (a fork of LLaVA, Apache-2.0; its own terms
were not verified here): ``llava/model/multimodal_encoder/clip_encoder.py``, ``outlier_dectection``,
``token_prune_merge_advanced`` (PruMerge) and ``token_prune_merge_advanced_plus`` (PruMerge+, adaptive branch).
Re-expressed here, no code copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs
from fopru.strategies.lattice import centers, lattice_shape

Attention = Literal["joint", "heads"]
ATTENTIONS: tuple[str, ...] = ("joint", "heads")
Merge = Literal["sum", "mean"]
MERGES: tuple[str, ...] = ("sum", "mean")
Spatial = Literal["stride", "lattice"]
SPATIALS: tuple[str, ...] = ("stride", "lattice")


def iqr_outliers(saliency: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: the upper outliers of each row, ``> Q3 + 1.5 (Q3 - Q1)`` (quartiles interpolated linearly)."""
    quartiles = torch.quantile(saliency, torch.tensor([0.25, 0.75], device=saliency.device), dim=1)  # (2, B)
    fence = quartiles[1] + 1.5 * (quartiles[1] - quartiles[0])
    return saliency > fence[:, None]


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")


@dataclass(frozen=True)
class PruMergeStrategy(PruningStrategy):
    """Adaptive count by IQR outliers of [CLS] attention; each kept token absorbs its most similar tokens.

    1. a = the [CLS] row of the tapped layer's attention. ``attention=joint`` (default, the released code): one
       softmax over the full-width logits ``q . k / sqrt(width)`` (heads concatenated), the last encoder layer's in
       ``method=prumerge`` (``significance.layer=-1``); ``attention=heads``: the head average of the per-head
       softmaxes. Without [CLS]: the attention each token receives.
    2. Kept: the tokens with a above the upper IQR fence ``Q3 + 1.5 IQR`` of their span, in descending attention
       (ties to the lower index); at least one. The count is adaptive (``Selection.counts``); the budget share
       ``max(1, floor(keep * n))`` only caps the output count (``keep=1.0``: no cap, the released behaviour).
    3. Merge, over the tapped layer's keys (heads concatenated; features where keys are unavailable): each kept
       token p takes its ``neighbours`` most similar other tokens N(p) (cosine; any token, kept or not; ties to
       the lower index). ``merge=sum`` (default, the released code): ``y_p = x_p + sum_{j in N(p)} a_j x_j``,
       unnormalised; ``merge=mean`` (the paper's reading): ``y_p = sum_j a_j x_j / sum_j a_j`` over
       ``{p} + N(p)`` (a clamped at 0; uniform if a cluster's attention sums to 0).
    4. ``extra_token=True`` (default, the released code): one more token, ``sum_j a_j x_j`` over every token not
       kept, is appended last, at the position of the most attended of them (none if every token is kept). It
       counts within the budget cap.

    ``neighbours`` defaults to 32 (the released k), capped at n - 1. Output order, as released: kept tokens by
    descending attention, then the extra token (``method=prumerge`` keeps it: ``reorder=none``).
    """

    merges = True
    adaptive = True
    keeps = "at_most"
    needs_attention = True

    neighbours: int = 32
    attention: Attention = "joint"
    merge: Merge = "sum"
    extra_token: bool = True

    def __post_init__(self) -> None:
        neighbours = self.neighbours
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ConfigError(f"neighbours={neighbours!r} must be a whole number >= 0")
        _choice("attention", self.attention, ATTENTIONS)
        _choice("merge", self.merge, MERGES)
        if not isinstance(self.extra_token, bool):
            raise ConfigError(f"extra_token={self.extra_token!r} must be true or false")

    # The base's flag stays writable for strategies that set it in their own __init__.
    @property
    def averages(self) -> bool:  # type: ignore[override]
        """Weight rows sum to 1 only for the paper's attention-weighted mean without the extra token."""
        return self.merge == "mean" and not self.extra_token

    def kept_tokens(self, saliency: torch.Tensor, grid: Grid | None, count: int) -> list[torch.Tensor]:
        """Per sample, the (k,) kept indices in output order, before the budget cap."""
        order = torch.sort(saliency, dim=1, descending=True, stable=True).indices
        outliers = iqr_outliers(saliency).sum(dim=1).clamp_min(1).tolist()
        return [order[sample, :outliers_count] for sample, outliers_count in enumerate(outliers)]

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        size = significance.shape[1]
        saliency = inputs.joint_saliency(self.name) if self.attention == "joint" else inputs.saliency(self.name)
        count = budget.count(size, num_tokens)
        basis = torch.nn.functional.normalize(inputs.similarity_basis(self.name).float(), dim=-1)
        parts = [
            self._merge_sample(kept, saliency[sample], basis[sample], count)
            for sample, kept in enumerate(self.kept_tokens(saliency, grid, count))
        ]
        return Selection.stack(parts)

    def _merge_sample(self, kept: torch.Tensor, saliency: torch.Tensor, basis: torch.Tensor, count: int) -> Selection:
        """One sample's (1, k) selection from its ordered kept tokens, within the budget cap ``count``."""
        size = saliency.shape[0]
        room = count - 1 if self.extra_token and count > 1 else count
        kept = kept[:room]
        rest = torch.ones(size, dtype=torch.bool, device=kept.device)
        rest[kept] = False
        similarity = torch.matmul(basis[kept], basis.T)  # (k, n)
        similarity[torch.arange(kept.shape[0], device=kept.device), kept] = -torch.inf  # not its own neighbour
        neighbours = min(self.neighbours, size - 1)
        nearest = torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :neighbours]
        cluster = torch.zeros((kept.shape[0], size), device=saliency.device)
        cluster.scatter_(1, nearest, 1.0)
        if self.merge == "sum":
            weights = cluster * saliency[None, :]
            weights[torch.arange(kept.shape[0], device=kept.device), kept] = 1.0
        else:
            cluster[torch.arange(kept.shape[0], device=kept.device), kept] = 1.0
            mass = cluster * saliency.clamp_min(0)[None, :]
            total = mass.sum(dim=1, keepdim=True)
            uniform = cluster / cluster.sum(dim=1, keepdim=True)
            weights = torch.where(total > 0, mass / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)
        indices = kept
        if self.extra_token and kept.shape[0] < count and bool(rest.any()):
            left = rest.nonzero()[:, 0]
            representative = left[torch.sort(saliency[left], descending=True, stable=True).indices[0]]
            indices = torch.cat([kept, representative[None]])
            weights = torch.cat([weights, (saliency * rest)[None, :]])
        flops = 2 * kept.shape[0] * size * basis.shape[-1]
        return Selection(indices[None], weights[None], flops=flops)


@dataclass(frozen=True)
class PruMergePlusStrategy(PruMergeStrategy):
    """PruMerge+: the IQR outliers plus spatially spread samples, then PruMerge's merge.

    With m outliers of n tokens, ``spatial=stride`` (default, the released adaptive branch) adds the tokens at
    ``0, s, 2s, ...`` below ``n - 1`` (1-D, raster order) that are not outliers, with ``s = int(int(1 / (m / n)) / 3)``
    (at least 1): the count stays adaptive and grows as the outliers get fewer. ``spatial=lattice`` fills the
    budget share k instead with an even 2-D lattice of ``k - m`` tokens of the span's grid (the ``uniform``
    strategy's lattice; strided without a grid), the count then at most k. Order: outliers by descending
    attention, then the added tokens in raster order, then (``extra_token``) the token aggregating the rest. The
    paper's PruMerge+ keeps about a quarter of the tokens.
    """

    spatial: Spatial = "stride"

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("spatial", self.spatial, SPATIALS)

    def kept_tokens(self, saliency: torch.Tensor, grid: Grid | None, count: int) -> list[torch.Tensor]:
        size = saliency.shape[1]
        rows: list[torch.Tensor] = []
        for chosen in super().kept_tokens(saliency, grid, count):  # the samples' added tokens depend on m
            if self.spatial == "stride":
                step = max(1, int(int(1 / (chosen.shape[0] / size)) / 3))
                added = torch.arange(0, size - 1, step, device=chosen.device)
            else:
                chosen = chosen[:count]
                spare = count - chosen.shape[0]
                added = _lattice(size, grid, spare).to(chosen.device) if spare > 0 else chosen[:0]
            rows.append(torch.cat([chosen, added[~torch.isin(added, chosen)]]))
        return rows


def _lattice(size: int, grid: Grid | None, count: int) -> torch.Tensor:
    """An even sub-lattice of at most ``count`` tokens, raster order (strided along the sequence without a grid)."""
    if grid is None:
        return centers(size, count)
    rows, cols = grid
    lattice_rows, lattice_cols = lattice_shape(count, rows, cols)
    return (centers(rows, lattice_rows)[:, None] * cols + centers(cols, lattice_cols)).reshape(-1)
