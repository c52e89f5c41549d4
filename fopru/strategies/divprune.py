"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025).

Reimplemented from the paper's description; the original code (github.com/vbdi/divprune) states no license in
its README (check the repository before reusing any of it).
"""

from __future__ import annotations

import torch

from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, cosine_similarity


class DivPruneStrategy(PruningStrategy):
    """Greedy max-min diversity over the projected tokens (cosine distance); no attention, no significance.

    With d(i, j) = 1 - cos(v_i, v_j) over the tokens v in the language model's input space, the first token is the
    one whose nearest other token is farthest (argmax_i min_{j != i} d(i, j)); then, k - 1 times, the token whose
    distance to the nearest already selected token is largest joins. Ties go to the lower index. k =
    ``max(1, floor(keep * n))`` per span; tokens come out in selection order.

    Projecting all N tokens costs a projector pass over N instead of k tokens (LLaVA; Qwen2-VL's tokens are
    already projected), which the adapters' FLOPs count.
    """

    needs_projected = True

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        count = budget.count(size, num_tokens)
        similarity, flops = cosine_similarity(inputs.require_projected(self.name))
        distance = 1 - similarity
        eye = torch.eye(size, dtype=torch.bool, device=distance.device)
        nearest = distance.masked_fill(eye, torch.inf).amin(dim=2)  # (B, n); inf when n == 1
        chosen = [_first_argmax(nearest)]
        to_selected = distance.gather(2, chosen[0][:, None, None].expand(-1, size, 1))[:, :, 0]
        taken = torch.zeros((batch, size), dtype=torch.bool, device=distance.device)
        rows = torch.arange(batch, device=distance.device)
        taken[rows, chosen[0]] = True
        for _ in range(count - 1):
            pick = _first_argmax(to_selected.masked_fill(taken, -torch.inf))
            chosen.append(pick)
            taken[rows, pick] = True
            to_selected = torch.minimum(to_selected, distance[rows, :, pick])
        return Selection(torch.stack(chosen, dim=1), flops=flops)


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's maximum, the lowest index among ties."""
    return torch.sort(values, dim=1, descending=True, stable=True).indices[:, 0]
