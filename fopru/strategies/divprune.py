"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025).

Follows the authors' released code, github.com/vbdi/divprune: ``LLaVA/llava/model/llava_arch.py`` (``DivPrune``,
the greedy max-min selection, and ``prepare_inputs_labels_for_multimodal``, which runs it once over the image's
projected tokens at the LLM's input and keeps the chosen ones in sequence order). Its README states no license;
re-expressed here, no code copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, cosine_similarity

Rounding = Literal["round", "floor"]
ROUNDINGS: tuple[str, ...] = ("round", "floor")
Spans = Literal["packed", "per_grid"]
SPANS: tuple[str, ...] = ("packed", "per_grid")


@dataclass(frozen=True)
class DivPruneStrategy(PruningStrategy):
    """Greedy max-min diversity over the projected tokens (cosine distance); no attention, no significance.

    With d(i, j) = 1 - cos(v_i, v_j) over the tokens v in the language model's input space, the first token is the
    one whose nearest other token is farthest (argmax_i min_{j != i} d(i, j)); then, k - 1 times, the token whose
    distance to the nearest already selected token is largest joins. Ties go to the lower index; tokens come out in
    selection order (``method=divprune`` puts them back in sequence order, as the released code does).

    - Count: ``rounding=round`` (default, the released code) keeps ``max(1, round(keep * n))`` tokens (halves to
      even, as Python rounds); ``rounding=floor`` keeps ``max(1, floor(keep * n))``, the other strategies' rule.
    - Multi-grid layouts (LLaVA-NeXT's base image and tile grid): ``spans=packed`` (default, the released code)
      selects once over all N tokens of the image with ``keep * N`` of them; ``spans=per_grid`` gives each grid its
      own share, as the other strategies do.

    Projecting all N tokens costs a projector pass over N instead of k tokens (LLaVA; Qwen2-VL's tokens are
    already projected), which the adapters' FLOPs count.
    """

    needs_projected = True

    rounding: Rounding = "round"
    spans: Spans = "packed"

    def __post_init__(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding={self.rounding!r} is not one of {list(ROUNDINGS)}")
        if self.spans not in SPANS:
            raise ConfigError(f"spans={self.spans!r} is not one of {list(SPANS)}")

    @property
    def per_span(self) -> bool:
        """``spans=per_grid`` gives each grid its own share; ``packed`` selects once over the whole layout."""
        return self.spans == "per_grid"

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        batch, size = significance.shape
        count = budget.count(size, num_tokens)
        if self.rounding == "round":
            count = min(size, max(1, round(budget.fraction(num_tokens) * size)))
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
