"""Significance sources: FoPru's focal rule and the ablation/baseline criteria beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.seeding import row_uniform
from fopru.significance.attention import AttentionReduction, AttentionSummary, ClsDrop, Scores
from fopru.significance.base import SignificanceSource

Direction = Literal["auto", "received", "paid"]
DIRECTIONS: tuple[str, ...] = ("auto", "received", "paid")


def choose_by_variance(received: torch.Tensor, paid: torch.Tensor) -> torch.Tensor:
    """FoPru's rule, per sample: ``received`` (s1) if Var(s1) > Var(s2), else ``paid`` (s2)."""
    use_received = received.var(dim=1, unbiased=False) > paid.var(dim=1, unbiased=False)
    return torch.where(use_received[:, None], received, paid)


@dataclass(frozen=True)
class AttentionSignificance(SignificanceSource):
    """Shared fields of the sources that read the tapped attention: how it is reduced and which layer is tapped."""

    scores: Scores = "probabilities"
    cls_drop: ClsDrop = "after_softmax"
    layer: int | None = None

    def __post_init__(self) -> None:
        # A bad scores or cls_drop fails here, at construction, rather than at the first tap.
        self.reduction  # noqa: B018

    @cached_property
    def reduction(self) -> AttentionReduction:
        """The :class:`AttentionReduction` of ``scores`` and ``cls_drop`` (one object per source)."""
        return AttentionReduction(scores=self.scores, cls_drop=self.cls_drop)


@dataclass(frozen=True)
class FocalSignificance(AttentionSignificance):
    """FoPru's focal significance: attention received (s1) or paid (s2) by each patch, chosen by variance.

    ``direction="auto"`` applies the variance rule per image; ``received``/``paid`` fix one side. Without [CLS]
    (SigLIP) patch rows sum to 1, s2 is constant and the rule picks s1.
    """

    direction: Direction = "auto"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction={self.direction!r} is not one of {list(DIRECTIONS)}")
        super().__post_init__()

    def score(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
        attention = self._require_attention(attention)
        if self.direction == "received":
            return attention.received
        if self.direction == "paid":
            return attention.paid
        return choose_by_variance(attention.received, attention.paid)


@dataclass(frozen=True)
class ClsSignificance(AttentionSignificance):
    """[CLS]-to-patch attention of the tapped layer, head-averaged (FasterVLM; VisionZip sums heads, same order)."""

    def score(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
        attention = self._require_attention(attention)
        if attention.cls is None:
            raise ConfigError(
                "significance=cls needs a vision encoder with a [CLS] token, but this model has none "
                "(e.g. SigLIP in Qwen2-VL); choose focal, received, paid, norm, uniform or random"
            )
        return attention.cls


@dataclass(frozen=True)
class NormSignificance(SignificanceSource):
    """L2 norm of each visual feature: cheap and attention-free."""

    def score(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
        return torch.linalg.vector_norm(features.float(), dim=-1)


@dataclass(frozen=True)
class UniformSignificance(SignificanceSource):
    """All tokens equal, so a strategy acts on position alone (ties break toward the lower index)."""

    def score(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
        return features.new_zeros(features.shape[:2], dtype=torch.float32)


@dataclass(frozen=True)
class RandomSignificance(SignificanceSource):
    """Seeded uniform noise. Given sample keys (:meth:`score_rows`, as in every evaluation) each sample's scores
    depend only on ``seed`` and the sample (:mod:`fopru.seeding`); through :meth:`score`, a fixed seed and call
    sequence reproduce the same scores."""

    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "generator", torch.Generator().manual_seed(self.seed))

    def score(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
        return self.score_rows(attention, features, layout, None)

    def score_rows(
        self,
        attention: AttentionSummary | None,
        features: torch.Tensor,
        layout: VisualLayout,
        sample_keys: torch.Tensor | None,
    ) -> torch.Tensor:
        rows, tokens = features.shape[:2]
        return row_uniform((rows, tokens), self.seed, sample_keys, self.generator, "significance").to(features.device)
