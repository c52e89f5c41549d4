"""PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025, arXiv 2410.17247).

Reimplemented from the paper's description; no code copied. The authors' code (Cooperx521/PyramidDrop, built on
LLaVA, Apache-2.0) states no license of its own in its README; its documented defaults (boundaries after layers
8, 16, 24 of 32, kept ratios 0.5, 0.25, 0.125) are the ones used here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning.base import (
    Drop,
    LayerSpec,
    LLMPruning,
    check_keep,
    check_layer_spec,
    final_count,
    resolve_boundaries,
)


class PyramidDrop(LLMPruning):
    """Stages of the language model; at the end of each but the last, keep a share lambda of the visual tokens left.

    The paper splits LLaVA-1.5's 32 layers into 4 equal stages (boundaries after layers 8, 16, 24) with
    lambda = 0.5, ranking at each boundary by the attention of the last instruction token (the prompt's last
    token) to the remaining visual tokens in the stage's last layer. Defaults follow it, with the boundaries as
    fractions of the depth (1/4, 1/2, 3/4) so they carry over to other depths; on a language model too shallow for
    them, fractions that round to the same layer merge (a 3-layer model gets boundaries 1 and 2).

    Budget: with ``ratio`` null, lambda comes from the keep budget so that the last stage holds exactly the budget's
    count ``k = max(1, floor(keep * n))`` of the ``n`` visual tokens: stage j keeps ``floor(n * (k/n)^(j/S))`` with
    S boundaries (keep = 0.125 with 3 boundaries gives the paper's lambda = 0.5). With ``ratio`` set, each boundary
    keeps ``max(1, floor(ratio * previous))`` and the budget is not used.

    Args:
        layers: the boundaries, each an int (layers before it) or a fraction of the depth; strictly increasing.
        ratio: lambda in (0, 1], or null to derive it from the budget.
        keep: the method's own budget (a fraction) instead of the run's; null uses the run's.
    """

    def __init__(
        self, layers: Sequence[LayerSpec] = (0.25, 0.5, 0.75), ratio: float | None = None, keep: float | None = None
    ) -> None:
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ConfigError(f"llm_pruning.layers must be a non-empty list of layers, got {layers!r}")
        self.layers = tuple(check_layer_spec("llm_pruning.layers", value) for value in layers)
        self.ratio = check_keep("llm_pruning.ratio", ratio)
        self.keep = check_keep("llm_pruning.keep", keep)

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
