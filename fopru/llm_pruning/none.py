"""No in-LLM pruning: the language model runs its stock forward (the default)."""

from __future__ import annotations

from dataclasses import dataclass

from fopru.layout import Budget
from fopru.llm_pruning.base import Drop, LLMPruning


@dataclass(frozen=True)
class NoLLMPruning(LLMPruning):
    """Every layer sees every visual token that reached the language model."""

    active = False

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        return ()
