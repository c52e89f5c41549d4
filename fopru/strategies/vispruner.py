"""VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", ICCV 2025).

Follows the authors' released code, github.com/Theia-4869/VisPruner (Apache-2.0): ``llava/model/llava_arch.py``
(``encode_images``: important tokens, then iterative matching and pruning of duplicates) and
``llava/model/multimodal_encoder/clip_encoder.py`` (``feature_select``: the [CLS] row of the feature layer's
attention). Re-expressed here, no code copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, cosine_similarity, top_indices


@dataclass(frozen=True)
class VisPrunerStrategy(PruningStrategy):
    """Important tokens by [CLS] attention, then diverse tokens from the rest by iterative duplicate removal.

    Of a span's budget k, ``floor(important * k)`` tokens are *important*: the highest [CLS]-to-patch attention
    (without [CLS]: the attention each token receives). The rest, the *residual* in descending attention, is thinned
    to the remaining ``k - important`` *diverse* tokens in rounds: the residual is dealt alternately into two halves
    (positions 0, 2, 4, ... and 1, 3, 5, ... of its current order); each token of the first half scores its highest
    cosine similarity to the second half, and the ``min(step, excess)`` highest scorers (near-duplicates; ties to
    the earlier one) leave. The residual the next round splits is then rebuilt, as the released code does: the
    surviving first-half tokens in descending score order (ties in their current order), followed by the whole
    second half in its order (``rebuild=True``). ``rebuild=False`` keeps the survivors in their interleaved order
    instead (the paper's text describes no reordering). Similarity is between the features the projector reads.

    ``important`` defaults to 0.5 and ``step``, tokens removed per round, to 8 (both the released defaults). Output:
    important tokens by descending attention, then diverse ones in their final order (``method=vispruner`` puts
    them back in raster order, as the released code's index mask does).
    """

    needs_attention = True

    important: float = 0.5
    step: int = 8
    rebuild: bool = True

    def __post_init__(self) -> None:
        important, step = self.important, self.step
        if isinstance(important, bool) or not isinstance(important, int | float) or not 0 <= important <= 1:
            raise ConfigError(f"important={important!r} must be the important share of the budget, in [0, 1]")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"step={step!r} must be a whole number >= 1 (tokens removed per round)")
        if not isinstance(self.rebuild, bool):
            raise ConfigError(f"rebuild={self.rebuild!r} must be true or false")
        object.__setattr__(self, "important", float(important))

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
            ranked_first = top_indices(scores, first.shape[1])  # first-half slots by descending score
            if self.rebuild:
                positions = torch.cat([first.gather(1, ranked_first[:, remove:]), second], dim=1)
            else:
                leaving = ranked_first[:, :remove] * 2  # position within ``positions`` of each leaving token
                stays = torch.ones_like(positions, dtype=torch.bool)
                stays[torch.arange(batch, device=stays.device)[:, None], leaving] = False
                positions = positions[stays].view(batch, -1)
        diverse = residual.gather(1, positions)
        return Selection(torch.cat([important, diverse], dim=1), flops=flops)
