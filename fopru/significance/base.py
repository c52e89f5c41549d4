"""The significance-source contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fopru.layout import VisualLayout
from fopru.significance.attention import AttentionReduction, AttentionSummary


@dataclass(frozen=True)
class SignificanceSource(ABC):
    """Scores every visual token of a sample; higher means more worth keeping.

    A source is a small frozen dataclass whose fields are its config keys (``conf/significance/<name>.yaml`` minus
    ``_target_``), validated in ``__post_init__``; its ``repr`` is the configuration the log shows.

    A source that reads attention has a ``reduction`` (how the tapped layer's attention is reduced, derived from
    its fields) and a ``layer`` (which vision-encoder layer to tap; ``None`` means the layer whose output the model
    uses as visual features). The adapter taps that layer and hands over an :class:`AttentionSummary`. Sources
    whose ``reduction`` is ``None`` never cause a tap.

    ``score`` receives:
        attention: the tapped layer's summary, tensors (B, N) in float32, or ``None`` if ``reduction`` is ``None``.
        features: (B, N, D) visual features of the N tokens (no [CLS]), any float dtype.
        layout: the token layout (grids, [CLS], merge factor).
    and returns a (B, N) float32 tensor, finite, on the features' device. It must not depend on the order of
    samples in the batch. The pipeline calls :meth:`score_rows`, which also hands over one key per row (the sample
    it belongs to, :mod:`fopru.seeding`); sources that draw noise override it to seed each row from its key.
    """

    @property
    def reduction(self) -> AttentionReduction | None:
        """How the tapped layer's attention is reduced; ``None``: the source reads no attention."""
        return None

    @property
    def layer(self) -> int | None:
        """The vision-encoder layer to tap; ``None``: the layer producing the model's visual features."""
        return None

    @abstractmethod
    def score(self, attention: AttentionSummary | None, features: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
        """(B, N) float32 significance."""

    def score_rows(
        self,
        attention: AttentionSummary | None,
        features: torch.Tensor,
        layout: VisualLayout,
        sample_keys: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`score` with ``sample_keys``, (B,) int64 one key per row or ``None``; only sources that draw noise
        read them."""
        return self.score(attention, features, layout)

    def _require_attention(self, attention: AttentionSummary | None) -> AttentionSummary:
        if attention is None:
            raise ValueError(f"{type(self).__name__} reads attention but was given none; the adapter must tap it")
        return attention
