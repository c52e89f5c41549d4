"""The pruning-strategy contract, the inputs a strategy may read and the selection it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid, VisualLayout
from fopru.seeding import offset_keys
from fopru.significance.attention import AttentionSummary

KeyHeads = Literal["concatenated", "mean"]
KEY_HEADS: tuple[str, ...] = ("concatenated", "mean")


@dataclass(frozen=True)
class StrategyInputs:
    """What a strategy may read besides significance, for a batch of B samples with N visual tokens each.

    Adapters fill a field only when the strategy's capability flags ask for it (computing ``projected`` costs a
    projector pass over all N tokens), except ``features``, which the pipeline always has.

    Attributes:
        features: (B, N, D) the features the selection applies to (LLaVA: vision features before the projector;
            Qwen2-VL: merged tokens, already in the language model's width).
        attention: the tapped vision layer's summary, (B, N) statistics; ``cls`` is ``None`` for encoders without
            [CLS], ``keys`` (B, N, H * h) the layer's keys where the adapter maps them onto the N tokens, else ``None``.
        projected: (B, N, D_llm) every token in the language model's input space (``needs_projected``).
        text: (B, T, D_llm) the input embeddings of the sample's prompt text (every non-image, non-padding token,
            chat template included), zero-padded on the right (``needs_text``).
        text_mask: (B, T) bool, True on real text tokens.
        sample_keys: (B,) int64, which sample each row is (:func:`fopru.seeding.sample_key` of its id), so that
            random choices are seeded per sample, not by batch order; ``None`` outside an evaluation.
        cls_features: (B, 1, D) the [CLS] token's features at the layer ``features`` come from, in their space
            (``keeps_cls``; only where the family hands it over: a single-grid tower with [CLS], as LLaVA-1.5's).
    """

    features: torch.Tensor | None = None
    attention: AttentionSummary | None = None
    projected: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    sample_keys: torch.Tensor | None = None
    cls_features: torch.Tensor | None = None

    @property
    def has_cls(self) -> bool:
        """The [CLS] token's features are at hand (``keeps_cls`` strategies then keep it as one of their tokens)."""
        return self.cls_features is not None

    def span(self, offset: int, size: int) -> StrategyInputs:
        """The inputs of tokens ``offset .. offset + size`` (one image/tile); text is per sample and stays whole."""

        def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[:, offset : offset + size]

        attention = self.attention
        if attention is not None:
            attention = replace(
                attention,
                received=attention.received[:, offset : offset + size],
                paid=attention.paid[:, offset : offset + size],
                cls=cut(attention.cls),
                keys=cut(attention.keys),
                cls_joint=cut(attention.cls_joint),
            )
        return replace(
            self,
            features=cut(self.features),
            attention=attention,
            projected=cut(self.projected),
            sample_keys=offset_keys(self.sample_keys, offset),
        )

    def require_features(self, who: str) -> torch.Tensor:
        """(B, n, D) features, or a clear error."""
        if self.features is None:
            raise ConfigError(f"the {who} strategy needs the visual features; pass StrategyInputs(features=...)")
        return self.features

    def saliency(self, who: str) -> torch.Tensor:
        """(B, n) float32 [CLS]-to-patch attention; for encoders without [CLS] (SigLIP, Qwen2-VL) the attention each
        token receives (``AttentionSummary.received``), the usual stand-in."""
        if self.attention is None:
            raise ConfigError(
                f"the {who} strategy reads the vision encoder's attention but none was tapped; the adapter must tap "
                "it (PruningPipeline.request) or StrategyInputs(attention=...) must be given"
            )
        chosen = self.attention.cls if self.attention.cls is not None else self.attention.received
        return chosen.float()

    def similarity_basis(self, who: str, heads: KeyHeads = "concatenated") -> torch.Tensor:
        """(B, n, d) what token similarity is measured on: the tapped layer's keys where available (``heads``:
        ``concatenated`` into one vector per token, or their ``mean`` over heads), else the features (Qwen2-VL's
        merged tokens have no single key)."""
        if heads not in KEY_HEADS:
            raise ConfigError(f"heads={heads!r} is not one of {list(KEY_HEADS)}")
        if self.attention is not None and self.attention.keys is not None:
            if heads == "mean":
                keys = self.attention.head_mean_keys()
                assert keys is not None
                return keys
            return self.attention.keys
        return self.require_features(who)

    def joint_saliency(self, who: str) -> torch.Tensor:
        """(B, n) float32 [CLS] attention of one softmax over the full-width logits (``AttentionSummary.cls_joint``,
        LLaVA-PruMerge's), falling back to :meth:`saliency` where the route does not provide it (no [CLS])."""
        if self.attention is not None and self.attention.cls_joint is not None:
            return self.attention.cls_joint.float()
        return self.saliency(who)

    def require_projected(self, who: str) -> torch.Tensor:
        """(B, n, D_llm) projected tokens, or a clear error."""
        if self.projected is None:
            raise ConfigError(f"the {who} strategy needs the projected visual tokens (needs_projected)")
        return self.projected

    def require_text(self, who: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D_llm) text embeddings and their (B, T) mask, or a clear error."""
        if self.text is None or self.text_mask is None:
            raise ConfigError(f"the {who} strategy needs the prompt's text embeddings (needs_text)")
        return self.text, self.text_mask


@dataclass(frozen=True)
class Selection:
    """Which visual tokens go on to the language model.

    Attributes:
        indices: (B, k) int64 indices into the N visual tokens, in the strategy's order (reorder policies change
            it). For merging strategies, each output token's representative position.
        weights: ``None`` for a pure selection (output token t is input token ``indices[:, t]``), or a (B, k, N)
            float32 matrix for merging strategies: output tokens are ``weights @ features``. Rows sum to 1 for
            averaging merges; methods whose released code sums tokens (VisionZip's contextual tokens, PruMerge)
            have rows that do not.
        counts: ``None`` when every sample keeps k tokens; else (B,) int64 tokens each sample keeps (adaptive
            strategies such as PruMerge). Columns at or past ``counts[b]`` are padding: copies of the sample's last
            kept column, so indices stay valid; consumers trim them (:meth:`sample`).
        flops: matrix-product FLOPs the strategy itself spent per sample (similarities; not the merge product
            ``weights @ features``, which depends on the feature width and is counted where it runs).
    """

    indices: torch.Tensor
    weights: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    flops: int = 0

    @property
    def kept(self) -> int:
        """Tokens per sample, the width k of ``indices``: the actual count of every sample unless ``counts`` is set
        (then the largest one). Use it, or :attr:`kept_per_sample`, not the nominal budget, for efficiency."""
        return int(self.indices.shape[1])

    @property
    def kept_per_sample(self) -> torch.Tensor:
        """(B,) int64 actual kept count of each sample."""
        if self.counts is not None:
            return self.counts
        return torch.full((self.indices.shape[0],), self.kept, dtype=torch.long, device=self.indices.device)

    def sample(self, index: int) -> Selection:
        """Sample ``index`` alone, padding trimmed: a (1, count) selection."""
        count = int(self.kept_per_sample[index])
        weights = None if self.weights is None else self.weights[index : index + 1, :count]
        return Selection(self.indices[index : index + 1, :count], weights, flops=self.flops)

    @staticmethod
    def stack(parts: list[Selection]) -> Selection:
        """One-sample selections, batched; ``counts`` is set if their widths differ (padding as documented)."""
        widths = [part.kept for part in parts]
        width = max(widths)
        has_weights = [part.weights is not None for part in parts]
        if any(has_weights) and not all(has_weights):
            raise ValueError("cannot stack merging and non-merging selections")
        indices = torch.cat([_pad_columns(part.indices, width) for part in parts])
        weights = None
        if all(has_weights):
            weights = torch.cat([_pad_columns(part.weights, width) for part in parts])  # type: ignore[arg-type]
        counts = None
        if len(set(widths)) > 1:
            counts = torch.tensor(widths, dtype=torch.long, device=indices.device)
        return Selection(indices, weights, counts, flops=max(part.flops for part in parts))

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the selection to (B, N, D) features: (B, k, D) (padding columns included)."""
        if self.weights is None:
            index = self.indices[:, :, None].expand(-1, -1, features.shape[-1])
            return features.gather(1, index)
        return torch.matmul(self.weights.to(features.dtype), features)


def _pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim 1 to ``width`` with copies of the last column."""
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    last = tensor[:, -1:].expand(-1, missing, *tensor.shape[2:])
    return torch.cat([tensor, last], dim=1)


def pad_to_counts(selection: Selection, counts: torch.Tensor) -> Selection:
    """``selection`` with the columns at or past each sample's count replaced by its last kept column."""
    width = selection.kept
    columns = torch.arange(width, device=counts.device)
    source = torch.minimum(columns[None, :], counts[:, None] - 1)  # (B, k)
    indices = selection.indices.gather(1, source)
    weights = selection.weights
    if weights is not None:
        weights = weights.gather(1, source[:, :, None].expand(-1, -1, weights.shape[2]))
    uniform = bool((counts == width).all())
    return Selection(indices, weights, None if uniform else counts, selection.flops)


class PruningStrategy(ABC):
    """Chooses the visual tokens to keep from their significance (and, for some methods, more inputs).

    ``select`` validates the inputs, splits the layout into its images/tiles, asks ``select_span`` for each with
    the budget share of that span and the inputs cut to it, and concatenates the results (indices shifted by the
    span's offset). A strategy implements ``select_span`` only:

        significance: (B, n) float32, finite, the scores of one span (higher = more significant).
        grid: that span's (rows, cols), or ``None`` for a grid-free layout (only if ``needs_grid`` is False).
        budget, num_tokens: ``budget.count(units, num_tokens)`` gives the span's share in the strategy's unit
            (tokens for rank, rows for row), where ``num_tokens`` is N of the whole layout.
        inputs: the span's :class:`StrategyInputs` (features always; the rest as the flags below ask).

    It returns indices in [0, n), distinct within a sample, int64; ties break toward the lower index so results
    are deterministic. Every sample keeps the same count unless the strategy is ``adaptive`` (then ``counts``).
    Loops over selection steps (greedy methods) are fine; loops over the batch are not needed.

    Capabilities, declared as class attributes so that adapters compute costly inputs only when asked:
        ``needs_grid``: refuses grid-free layouts.
        ``per_span``: True (default): each image/tile is its own span with its own budget share; False: the whole
            layout is one grid-free span (a method whose released code runs once over a packed multi-grid image,
            e.g. DivPrune on LLaVA-NeXT); a strategy may set it per instance.
        ``merges``: returns ``weights`` (always, also where a merge is trivial): output tokens are weighted
            combinations, which costs a (k x N) @ (N x D) product per image.
        ``averages``: a merging strategy's weight rows sum to 1 (weighted averages); False where the released code
            sums tokens (VisionZip's contextual tokens, PruMerge); set per instance.
        ``adaptive``: the kept count varies per sample (``Selection.counts``); it never exceeds the budget share.
        ``needs_attention``: reads the tapped layer's summary ([CLS] row, keys); the adapter taps the vision encoder
            even when the significance source reads no attention.
        ``needs_projected``: reads every token projected into the LLM's space (a projector pass over all N tokens).
        ``needs_text``: reads the prompt's text embeddings.
        ``keeps_cls``: keeps the [CLS] token itself as the first of its tokens where the family hands its features
            over (``StrategyInputs.cls_features``); it counts in the budget, and the selection then names the
            other tokens only. VisionZip's released code does this; set per instance.
        ``keeps``: what a span keeps of its budget share ``budget.count(size, num_tokens)``: ``"exact"``
            (default) exactly that many tokens; ``"at_most"`` no more (an even lattice, an adaptive count);
            ``"rows"`` the share counts grid rows, not tokens; ``"all"`` every token, whatever the budget.
    """

    needs_grid: bool = False
    per_span: bool = True
    merges: bool = False
    averages: bool = True
    adaptive: bool = False
    needs_attention: bool = False
    needs_projected: bool = False
    needs_text: bool = False
    keeps_cls: bool = False
    keeps: Literal["exact", "at_most", "rows", "all"] = "exact"

    @property
    def name(self) -> str:
        """The strategy's short name for messages (``RankStrategy`` -> ``rank``)."""
        return type(self).__name__.removesuffix("Strategy").lower()

    def select(
        self,
        significance: torch.Tensor,
        layout: VisualLayout,
        budget: Budget,
        inputs: StrategyInputs | None = None,
    ) -> Selection:
        """Select tokens for a batch laid out as ``layout``."""
        layout.check_significance(significance)
        if self.needs_grid:
            layout.require_grids(self.name)
        inputs = inputs or StrategyInputs()
        significance = significance.float()
        parts: list[tuple[int, int, Selection]] = []
        spans = layout.spans() if self.per_span else [(0, None)]
        for offset, grid in spans:
            size = layout.num_tokens if grid is None else grid[0] * grid[1]
            span_inputs = inputs if grid is None else inputs.span(offset, size)
            part = self.select_span(
                significance[:, offset : offset + size], grid, budget, layout.num_tokens, span_inputs
            )
            parts.append((offset, size, part))
        if len(parts) == 1:
            return parts[0][2]
        flops = sum(part.flops for _, _, part in parts)
        if any(part.counts is not None for _, _, part in parts):
            return replace(_concatenate_per_sample(parts, layout.num_tokens, significance.shape[0]), flops=flops)
        indices = torch.cat([part.indices + offset for offset, _, part in parts], dim=1)
        if all(part.weights is None for _, _, part in parts):
            return Selection(indices, flops=flops)
        return Selection(indices, _block_weights(parts, layout.num_tokens, indices.shape[1]), flops=flops)

    @abstractmethod
    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        """Selection within one image/tile; indices relative to the span."""


def _block_weights(parts: list[tuple[int, int, Selection]], num_tokens: int, width: int) -> torch.Tensor:
    """The (B, width, N) merge matrix of span selections placed side by side (pure selections as one-hot rows)."""
    first = parts[0][2].indices
    weights = torch.zeros((first.shape[0], width, num_tokens), device=first.device)
    row = 0
    for offset, size, part in parts:
        block = part.weights if part.weights is not None else _one_hot(part.indices, size)
        weights[:, row : row + part.kept, offset : offset + size] = block
        row += part.kept
    return weights


def _concatenate_per_sample(parts: list[tuple[int, int, Selection]], num_tokens: int, batch: int) -> Selection:
    """Span selections with per-sample counts: each sample's kept columns of every span, then re-padded."""
    samples = []
    for sample in range(batch):
        pieces = [(offset, size, part.sample(sample)) for offset, size, part in parts]
        indices = torch.cat([piece.indices + offset for offset, _, piece in pieces], dim=1)
        weights = None
        if any(piece.weights is not None for _, _, piece in pieces):
            weights = _block_weights(pieces, num_tokens, indices.shape[1])
        samples.append(Selection(indices, weights))
    return Selection.stack(samples)


def _one_hot(indices: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(indices, size).float()


def top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores per row, highest first, ties toward the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :count]


def cosine_similarity(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, n, n) float32 cosine similarity of (B, n, d) tokens and the product's FLOPs per sample (2 n^2 d)."""
    normalized = torch.nn.functional.normalize(tokens.float(), dim=-1)
    size, width = normalized.shape[1], normalized.shape[2]
    return torch.matmul(normalized, normalized.transpose(1, 2)), 2 * size * size * width
