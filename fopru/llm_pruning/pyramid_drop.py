"""PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025, arXiv 2410.17247).

Follows the authors' released code, github.com/Cooperx521/PyramidDrop (built on LLaVA, Apache-2.0):
``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward``: a boundary after every stage, decode positions shifted by
the dropped count; ``pdrop_rank_drop``: ranking with the next layer's projections, positions renumbered). Its
documented defaults (boundaries after layers 8, 16, 24 of 32, kept ratios 0.5, 0.25, 0.125) are the ones used here.
Re-expressed here, no code copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning.base import (
    RANKINGS,
    Drop,
    LayerSpec,
    LLMPruning,
    Ranking,
    check_keep,
    check_layer_spec,
    final_count,
    resolve_boundaries,
)


@dataclass(frozen=True)
class PyramidDrop(LLMPruning):
    """Stages of the language model; at the end of each but the last, keep a share lambda of the visual tokens left.

    The paper splits LLaVA-1.5's 32 layers into 4 equal stages (boundaries after layers 8, 16, 24) with
    lambda = 0.5, ranking at each boundary by the attention of the last instruction token (the prompt's last
    token) to the remaining visual tokens. Defaults follow it, with the boundaries as fractions of the depth (1/4,
    1/2, 3/4) so they carry over to other depths; on a language model too shallow for them, fractions that round to
    the same layer merge (a 3-layer model gets boundaries 1 and 2).

    As the released code does (both defaults; the other values are the paper-text reading, also FastV's way):

    - ``ranking=next``: the boundary before layer b scores the tokens with layer b's own input norm, q/k
      projections and rotary embedding applied to the hidden states entering it (the next stage's first layer),
      softmax over all keys, heads averaged; ``own``: the last query's attention in layer b - 1 as it runs.
    - ``renumber=True``: after every boundary the survivors' positions are renumbered 0..L'-1 and later decode
      steps' positions shift down by the tokens dropped so far; ``False`` keeps every token's position. (1-D RoPE
      only; M-RoPE positions always stay.)

    Budget: with ``ratio`` null, lambda comes from the keep budget so that the last stage holds exactly the budget's
    count ``k = max(1, floor(keep * n))`` of the ``n`` visual tokens: stage j keeps ``floor(n * (k/n)^(j/S))`` with
    S boundaries (keep = 0.125 with 3 boundaries gives the paper's lambda = 0.5). With ``ratio`` set, each boundary
    keeps ``max(1, floor(ratio * previous))`` and the budget is not used.

    Args:
        layers: the boundaries, each an int (layers before it) or a fraction of the depth; strictly increasing.
        ratio: lambda in (0, 1], or null to derive it from the budget.
        keep: the method's own budget (a fraction) instead of the run's; null uses the run's.
        ranking: ``next`` (released code) or ``own``.
        renumber: renumber positions after each boundary (released code) or keep them.
    """

    layers: tuple[LayerSpec, ...] = (0.25, 0.5, 0.75)
    ratio: float | None = None
    keep: float | None = None
    ranking: Ranking = "next"
    renumber: bool = True

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ConfigError(f"llm_pruning.layers must be a non-empty list of layers, got {layers!r}")
        object.__setattr__(self, "layers", tuple(check_layer_spec("llm_pruning.layers", value) for value in layers))
        object.__setattr__(self, "ratio", check_keep("llm_pruning.ratio", self.ratio))
        object.__setattr__(self, "keep", check_keep("llm_pruning.keep", self.keep))
        if self.ranking not in RANKINGS:
            raise ConfigError(f"llm_pruning.ranking={self.ranking!r} is not one of {list(RANKINGS)}")
        if not isinstance(self.renumber, bool):
            raise ConfigError(f"llm_pruning.renumber={self.renumber!r} must be true or false")

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        layers = resolve_boundaries("llm_pruning.layers", self.layers, depth)
        stages = len(layers)
        counts: list[int] = []
        if self.ratio is not None:
            previous = visual
            for _ in layers:
                previous = min(previous, max(1, math.floor(self.ratio * previous + 1e-9))) if previous else 0
                counts.append(previous)
        else:
            last = final_count(visual, budget, self.keep)
            share = last / visual if visual else 0.0
            # The small epsilon keeps exact powers (0.25 ** (1/2) = 0.5) from flooring one token short.
            counts = [max(last, math.floor(visual * share ** (stage / stages) + 1e-9)) for stage in range(1, stages)]
            counts.append(last)
        return tuple(Drop(layer, count) for layer, count in zip(layers, counts, strict=True))
