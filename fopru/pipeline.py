"""The pruning pipeline: significance -> strategy -> reorder, built from one composed config."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from omegaconf import DictConfig

from fopru.components import build
from fopru.layout import Budget, VisualLayout
from fopru.llm_pruning.base import LLMPruning
from fopru.llm_pruning.none import NoLLMPruning
from fopru.reorder.base import ReorderPolicy
from fopru.significance.attention import AttentionReduction, AttentionSummary
from fopru.significance.base import SignificanceSource
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs


@dataclass(frozen=True)
class PrunedTokens:
    """What the pipeline hands back to an adapter: the ordered selection and the scores behind it.

    ``cls_first``: the [CLS] token (``StrategyInputs.cls_features``) goes ahead of the selection's tokens
    (a ``keeps_cls`` strategy given the [CLS] features); reorder policies order the selection only.
    """

    selection: Selection
    significance: torch.Tensor
    cls_first: bool = False


@dataclass(frozen=True)
class PruningRequest:
    """What a configured pipeline needs from the adapter, stated once so that adapters never read its parts.

    Attributes:
        layer: the vision layer to tap (0-based, negative from the end); ``None``: the family's default.
        reduction: how the tapped layer's attention is summarised; ``None``: no tap (nothing reads attention).
        projected: the strategy reads every token projected into the LLM's space (a projector pass over all N).
        merges: the strategy returns merged tokens (weighted combinations), which it projects after merging.
        text: the strategy reads the prompt's text embeddings.
        cls: the strategy keeps the [CLS] token itself (``keeps_cls``): hand over its features where the layout has one.
        positions: the reorder policy's position mode (``compact``, ``original`` or ``auto``).
    """

    layer: int | None
    reduction: AttentionReduction | None
    projected: bool
    merges: bool
    text: bool
    positions: str
    cls: bool = False


@dataclass(frozen=True)
class PruningPipeline:
    """One configured pruning method; adapters call :meth:`prune` between the vision encoder and the LLM.

    ``llm_pruning`` is the in-LLM method applied inside the language model after it (default: none); it reads
    the same ``budget`` unless it has its own ``keep``.
    """

    significance: SignificanceSource
    strategy: PruningStrategy
    reorder: ReorderPolicy
    budget: Budget
    llm_pruning: LLMPruning = field(default_factory=NoLLMPruning)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PruningPipeline:
        """Validate the budget and build the three components; every error is a :class:`ConfigError`."""
        budget = Budget(keep=cfg.keep, keep_tokens=cfg.keep_tokens)
        return cls(
            significance=build("significance", cfg.significance, SignificanceSource),
            strategy=build("strategy", cfg.strategy, PruningStrategy),
            reorder=build("reorder", cfg.reorder, ReorderPolicy),
            budget=budget,
            llm_pruning=build("llm_pruning", cfg.llm_pruning, LLMPruning) if "llm_pruning" in cfg else NoLLMPruning(),
        )

    @property
    def request(self) -> PruningRequest:
        """What the adapter must hand over. The tap is the significance source's layer and reduction; when only
        the strategy reads attention (``strategy.needs_attention`` with e.g. ``significance=norm``), the family's
        default layer with probabilities, [CLS] dropped after the softmax."""
        layer, reduction = self.significance.layer, self.significance.reduction
        if reduction is None and self.strategy.needs_attention:
            layer, reduction = None, AttentionReduction()
        return PruningRequest(
            layer=layer,
            reduction=reduction,
            projected=self.strategy.needs_projected,
            merges=self.strategy.merges,
            text=self.strategy.needs_text,
            positions=self.reorder.positions,
            cls=self.strategy.keeps_cls,
        )

    def prune(
        self,
        attention: AttentionSummary | None,
        features: torch.Tensor,
        layout: VisualLayout,
        inputs: StrategyInputs | None = None,
    ) -> PrunedTokens:
        """Score, select and reorder the (B, N, D) visual features of a batch laid out as ``layout``.

        ``inputs`` carries what the strategy's flags ask for beyond the features and the attention (projected
        tokens, text embeddings, the rows' sample keys); features and attention are filled in here.
        """
        inputs = inputs or StrategyInputs()
        significance = self.significance.score_rows(attention, features, layout, inputs.sample_keys)
        inputs = replace(inputs, features=features, attention=attention)
        selection = self.strategy.select(significance, layout, self.budget, inputs)
        if selection.counts is None:
            ordered = replace(self.reorder.apply(selection, significance), flops=selection.flops)
        else:  # padding must stay behind each sample's kept tokens: reorder sample by sample
            ordered = replace(
                Selection.stack(
                    [
                        self.reorder.apply(selection.sample(index), significance[index : index + 1])
                        for index in range(significance.shape[0])
                    ]
                ),
                flops=selection.flops,
            )
        return PrunedTokens(ordered, significance, cls_first=self.strategy.keeps_cls and inputs.has_cls)
