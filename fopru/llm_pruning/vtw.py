"""VTW, visual token withdrawal (Lin et al., "Boosting Multimodal Large Language Models with Visual Tokens
Withdrawal for Rapid Inference", AAAI 2025, arXiv 2405.05803).

Follows the authors' released code, github.com/lzhxmu/VTW: ``llava/model/language_model/VTW.py`` (visual tokens
leave the sequence before the decoder layer of index K, prefill only) and its ``README.md`` (``--use_vtw --k=15``
for LLaVA-1.5-7B, the released ``k = 15`` default). Re-expressed here, no code copied.
"""

from __future__ import annotations

from dataclasses import dataclass

from fopru.layout import Budget
from fopru.llm_pruning.base import Drop, LayerSpec, LLMPruning, check_layer_spec, resolve_layer


@dataclass(frozen=True)
class VisualTokenWithdrawal(LLMPruning):
    """After layer K every visual token leaves the sequence and the KV cache; text tokens go on alone.

    The paper picks K per model by the KL divergence of the output with and without withdrawal on a few samples;
    the released code and its README run LLaVA-1.5-7B with K = 15 of its 32 layers (the first 15 layers see the
    visual tokens). The default here is that K as a fraction of the depth, 15 / 32 = 0.46875, so it applies to any
    depth (exactly 15 on a 32-layer model). The run's ``keep`` does not apply: the budget is set by K alone.

    Args:
        layer: K, as a count of full layers or a fraction of the depth (default 15 / 32).
    """

    layer: LayerSpec = 0.46875

    def __post_init__(self) -> None:
        check_layer_spec("llm_pruning.layer", self.layer)

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        return (Drop(resolve_layer("llm_pruning.layer", self.layer, depth), 0),)
