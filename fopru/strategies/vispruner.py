"""VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", ICCV 2025).

Reimplemented from the paper's description; the original code (github.com/Theia-4869/VisPruner) is Apache-2.0
licensed.
"""

from __future__ import annotations

import math

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, cosine_similarity, top_indices


class VisPrunerStrategy(PruningStrategy):
    """Important tokens by [CLS] attention, then diverse tokens from the rest by iterative duplicate removal.

    Of a span's budget k, ``floor(important * k)`` tokens are *important*: the highest [CLS]-to-patch attention
    (without [CLS]: the attention each token receives). The rest, in descending attention, are thinned to the
    remaining ``k - important`` *diverse* tokens in rounds: the candidates are dealt alternately into two halves
    (positions 0, 2, 4, ... and 1, 3, 5, ... of the current order); each token of the first half scores its highest
    cosine similarity to the second half; the ``min(step, excess)`` highest scorers (near-duplicates; ties to the
    earlier one) leave, the others keep their order. Similarity is between the features (the vision features the
    projector reads), as in the paper.

    ``important`` defaults to 0.5 (the paper studies the split; choose per study); ``step``, tokens removed per
    round, to 8. Output: important tokens by descending attention, then diverse ones in their final order.
    """

    needs_attention = True

    def __init__(self, important: float = 0.5, step: int = 8) -> None:
        if isinstance(important, bool) or not isinstance(important, int | float) or not 0 <= important <= 1:
            raise ConfigError(f"important={important!r} must be the important share of the budget, in [0, 1]")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"step={step!r} must be a whole number >= 1 (tokens removed per round)")
        self.important = float(important)
        self.step = step

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        size = significance.shape[1]
        count = budget.count(size, num_tokens)
        important_count = math.floor(self.important * count)
        ranked = top_indices(inputs.saliency(self.name), size)
        important, residual = ranked[:, :important_count], ranked[:, important_count:]
        diverse_count = count - important_count
        if diverse_count == 0 or residual.shape[1] == diverse_count:
            return Selection(torch.cat([important, residual[:, :diverse_count]], dim=1))
        features = inputs.require_features(self.name)
        residual_features = features.gather(1, residual[:, :, None].expand(-1, -1, features.shape[-1]))
        similarity, flops = cosine_similarity(residual_features)  # over residual positions
        batch = residual.shape[0]
        positions = torch.arange(residual.shape[1], device=residual.device).expand(batch, -1)
        while positions.shape[1] > diverse_count:
            remove = min(self.step, positions.shape[1] - diverse_count)
            first, second = positions[:, 0::2], positions[:, 1::2]
            remove = min(remove, first.shape[1])
            pairs = similarity.gather(1, first[:, :, None].expand(-1, -1, similarity.shape[2]))
            scores = pairs.gather(2, second[:, None, :].expand(-1, first.shape[1], -1)).amax(dim=2)
            leaving = top_indices(scores, remove) * 2  # position within ``positions`` of each leaving token
            stays = torch.ones_like(positions, dtype=torch.bool)
            stays[torch.arange(batch, device=stays.device)[:, None], leaving] = False
            positions = positions[stays].view(batch, -1)
        diverse = residual.gather(1, positions)
        return Selection(torch.cat([important, diverse], dim=1), flops=flops)
