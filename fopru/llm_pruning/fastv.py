"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, arXiv 2403.06764).

Reimplemented from the paper's description; no code copied. The authors' code (pkunlp-icler/FastV) is not
reproduced here and its license was not verified offline; cite the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from fopru.layout import Budget
from fopru.llm_pruning.base import Drop, LayerSpec, LLMPruning, check_keep, check_layer_spec, final_count, resolve_layer


@dataclass(frozen=True)
class FastV(LLMPruning):
    """After layer K, keep the visual tokens the last token attends to most; the rest leave the sequence.

    The ranking reads layer K's attention (0-based index ``K - 1``), last query row, heads averaged; layers K, K+1,
    ... and their KV cache hold the survivors only. The paper's R (dropped share) is ``1 - keep``.

    Args:
        layer: K, the number of layers that see all visual tokens (paper: 2), or a fraction of the depth.
        keep: the fraction of the visual tokens that reached the language model kept after layer K (paper: R = 50%,
            i.e. 0.5); ``None`` takes the run's budget (``keep`` / ``keep_tokens``), so a keep sweep compares FastV
            at the same visual count in the layers after K as a pre-LLM method at that count everywhere.
    """

    layer: LayerSpec = 2
    keep: float | None = None

    def __post_init__(self) -> None:
        check_layer_spec("llm_pruning.layer", self.layer)
        object.__setattr__(self, "keep", check_keep("llm_pruning.keep", self.keep))

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        layer = resolve_layer("llm_pruning.layer", self.layer, depth)
        return (Drop(layer, final_count(visual, budget, self.keep)),)
