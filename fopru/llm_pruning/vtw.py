"""VTW, visual token withdrawal (Lin et al., "Boosting Multimodal Large Language Models with Visual Tokens
Withdrawal for Rapid Inference", AAAI 2025, arXiv 2405.05803).

Reimplemented from the paper's description; no code copied. The authors' code license was not verified offline;
cite the paper.
"""

from __future__ import annotations

from fopru.layout import Budget
from fopru.llm_pruning.base import Drop, LayerSpec, LLMPruning, check_layer_spec, resolve_layer


class VisualTokenWithdrawal(LLMPruning):
    """After layer K every visual token leaves the sequence and the KV cache; text tokens go on alone.

    The paper picks K per model by the KL divergence of the output with and without withdrawal on a few samples
    (about half the depth for LLaVA-1.5); here K is a parameter, by default half the depth. The run's ``keep``
    does not apply: the budget is set by K alone.

    Args:
        layer: K, as a count of full layers or a fraction of the depth (default 0.5).
    """

    def __init__(self, layer: LayerSpec = 0.5) -> None:
        self.layer = check_layer_spec("llm_pruning.layer", layer)

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        return (Drop(resolve_layer("llm_pruning.layer", self.layer, depth), 0),)
