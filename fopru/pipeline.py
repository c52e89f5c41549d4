"""The pruning pipeline: significance -> strategy -> reorder, built from one composed config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from fopru.components import build
from fopru.layout import Budget, VisualLayout
from fopru.reorder.base import ReorderPolicy
from fopru.significance.attention import AttentionSummary
from fopru.significance.base import SignificanceSource
from fopru.strategies.base import PruningStrategy, Selection


@dataclass(frozen=True)
class PrunedTokens:
    """What the pipeline hands back to an adapter: the ordered selection and the scores behind it."""

    selection: Selection
    significance: torch.Tensor


@dataclass(frozen=True)
class PruningPipeline:
    """One configured pruning method; adapters call :meth:`prune` between the vision encoder and the LLM."""

    significance: SignificanceSource
    strategy: PruningStrategy
    reorder: ReorderPolicy
    budget: Budget

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PruningPipeline:
        """Validate the budget and build the three components; every error is a :class:`ConfigError`."""
        budget = Budget(keep=cfg.keep, keep_tokens=cfg.keep_tokens)
        return cls(
            significance=build("significance", cfg.significance, SignificanceSource),
            strategy=build("strategy", cfg.strategy, PruningStrategy),
            reorder=build("reorder", cfg.reorder, ReorderPolicy),
            budget=budget,
        )

    def prune(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> PrunedTokens:
        """Score, select and reorder the (B, N, D) visual features of a batch laid out as ``layout``."""
        significance = self.significance.score(attention, features, layout)
        selection = self.reorder.apply(self.strategy.select(significance, layout, self.budget), significance)
        return PrunedTokens(selection, significance)
