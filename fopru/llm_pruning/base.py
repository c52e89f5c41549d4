"""The in-LLM pruning contract: which visual tokens leave the language model's sequence, and after which layer.

A second insertion point beside the pre-LLM pipeline (significance -> strategy -> reorder): in-LLM methods let the
visual tokens that reached the language model through its first layers, then drop some of them at one or more
*boundaries*. A boundary at layer ``b`` ranks the visual tokens by the attention the prompt's last token pays them
(heads averaged, softmax over all keys) in layer ``b - 1`` (``ranking=own``) or, scored with layer ``b``'s own
projections of the hidden states entering it (``ranking=next``), or, for methods with their own rule, by what they
read of layer ``b - 1`` (:class:`BoundaryInputs`); layers ``b, b + 1, ...`` (and their KV cache) only see the
survivors. Methods here are pure tensor code: they get scores and masks, never a model.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from transformers import PretrainedConfig

from fopru.efficiency.flops import ranking_flops, ranking_projection_flops
from fopru.errors import ConfigError
from fopru.layout import Budget

#: A layer given as an absolute count of full layers (int >= 1) or as a fraction of the depth (float in (0, 1)).
LayerSpec = int | float


@dataclass(frozen=True)
class Drop:
    """One boundary of one sample's schedule.

    Attributes:
        layer: the first layer that no longer sees the dropped tokens (1 <= layer < depth); tokens are ranked by the
            attention of layer ``layer - 1``.
        kept: visual tokens that survive this boundary (at most the count before it; 0 withdraws all of them).
    """

    layer: int
    kept: int


def check_layer_spec(name: str, value: LayerSpec) -> LayerSpec:
    """Refuse a layer that is neither an int >= 1 nor a fraction in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be an int >= 1 or a fraction of the depth in (0, 1), got {name}={value!r}")
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"{name}={value} must be >= 1 (a count of full layers before the drop)")
    if isinstance(value, float) and not 0 < value < 1:
        raise ConfigError(
            f"{name}={value} must be a fraction of the depth in (0, 1) or a whole number of layers (e.g. 2)"
        )
    return value


def resolve_layer(name: str, value: LayerSpec, depth: int) -> int:
    """The boundary layer for a language model of ``depth`` layers: an int as given (it must leave a layer after
    it), a fraction rounded to the nearest layer and kept within [1, depth - 1], so that a fractional default fits
    any model of at least 2 layers."""
    layer = value if isinstance(value, int) else min(depth - 1, max(1, round(value * depth)))
    if not 1 <= layer < depth:
        raise ConfigError(
            f"{name}={value} puts the drop after layer {layer}, but the language model has {depth} layers: choose "
            f"1 <= {name} < {depth} (or a fraction of the depth)"
        )
    return layer


def check_keep(name: str, value: float | None) -> float | None:
    """An optional own budget: ``None`` (use the run's) or a fraction in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{name} must be null (use the run's keep) or a fraction in (0, 1], got {name}={value!r}")
    return float(value)


def final_count(visual: int, budget: Budget, keep: float | None) -> int:
    """Visual tokens kept after the last boundary: ``max(1, floor(keep * n))`` of the ``n`` that reached the LLM,
    with the method's own ``keep`` when set, else the run's budget (``keep_tokens`` capped at ``n``)."""
    if visual == 0:
        return 0
    if keep is not None:
        budget = Budget(keep=keep)
    elif budget.keep_tokens is not None and budget.keep_tokens > visual:
        return visual
    return budget.count(visual, visual)


def rank_visual(scores: torch.Tensor, visual: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Which positions survive a boundary: every non-visual position, and each sample's ``kept`` visual positions
    with the highest score (ties toward the lower position).

    Args:
        scores: (B, L) float, higher = more attended.
        visual: (B, L) bool, the visual positions still in the sequence.
        kept: (B,) int64, visual tokens to keep per sample (at most its visual count).

    Returns:
        (B, L) bool keep mask.
    """
    masked = scores.float().masked_fill(~visual, -math.inf)
    order = masked.sort(dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return ~visual | (ranks < kept[:, None].to(ranks.device))


Ranking = Literal["own", "next"]
RANKINGS: tuple[str, ...] = ("own", "next")


@dataclass(frozen=True)
class BoundaryInputs:
    """What a method with its own selection (:attr:`LLMPruning.selects`) reads at a boundary, for B samples whose
    current sequence has L positions (left-padded).

    Attributes:
        hidden: (B, L, D) the output of layer ``layer - 1``, the stream that enters the boundary.
        query: (B, H, L, d) layer ``layer - 1``'s queries, rotated (the prefill's; no earlier cache).
        key: (B, K, L, d) its keys, rotated, not repeated over GQA groups.
        scaling: the attention's softmax scale.
        visual: (B, L) bool, the visual positions still in the sequence.
        real: (B, L) bool, False on padding.
        guide: (B, L) what :meth:`LLMPruning.prepare` returned, gathered along with the sequence, or ``None``.
        kept: (B,) int64, visual tokens each sample keeps here (the schedule's count, at most its visual count).
        number: the boundary's index in the schedule.
        norm: the language model's final norm (some methods compare normalised states).
    """

    hidden: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    scaling: float
    visual: torch.Tensor
    real: torch.Tensor
    guide: torch.Tensor | None
    kept: torch.Tensor
    number: int
    norm: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Recycled:
    """One sample's tokens added at a boundary (SparseVLM's recycling): their (R, D) states and the (R,) current
    sequence positions whose RoPE positions they take (their cluster centres). They enter the sequence right after
    the sample's last kept visual token and count as visual tokens from then on."""

    states: torch.Tensor
    centres: torch.Tensor


def trailing_text(visual: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the real non-visual positions after each sample's last visual token (the instruction)."""
    positions = torch.arange(visual.shape[1], device=visual.device)
    last = torch.where(visual, positions, -1).amax(dim=1, keepdim=True)
    return real & ~visual & (positions > last)


@dataclass(frozen=True)
class LLMPruning(ABC):
    """An in-LLM pruning method: a schedule of boundaries and how many visual tokens survive each.

    Subclasses implement :meth:`schedule`. By default ranking is shared (:func:`rank_visual` on the last token's
    attention), so a method is fully described by its boundaries and counts; the counts depend only on the number
    of visual tokens that reached the language model, which keeps FLOPs accounting analytic.
    A method with its own rule (``selects = True``) implements :meth:`select` (and, if it reads the prompt's
    input embeddings, :meth:`prepare`), and states the products it spends in :meth:`boundary_flops` /
    :meth:`prepare_flops`; it keeps exactly the schedule's count.

    A method is a small frozen dataclass whose fields are its config keys (``conf/llm_pruning/<name>.yaml`` minus
    ``_target_``: config-time numbers only), validated in ``__post_init__``; its ``repr`` is the configuration the
    log shows.
    """

    #: False only for the no-op method: the language model then runs its stock forward.
    active: ClassVar[bool] = True
    #: True for methods with their own selection rule (:meth:`select`) instead of the last token's attention.
    selects: ClassVar[bool] = False

    @property
    def ranking(self) -> Ranking:
        """How a boundary ranks the visual tokens: ``own``, the last query's attention in the layer before it
        (FastV); ``next``, the last query scored with the next layer's projections of the current hidden states
        (PyramidDrop)."""
        return "own"

    @property
    def renumber(self) -> bool:
        """Whether 1-D positions are renumbered 0..L-1 over the survivors after each boundary, decode positions
        shifted down by the tokens dropped before each layer (PyramidDrop); M-RoPE positions are never renumbered."""
        return False

    def prepare(self, inputs_embeds: torch.Tensor, visual: torch.Tensor, real: torch.Tensor) -> torch.Tensor | None:
        """A (B, L) tensor computed once from the prompt's (B, L, D) input embeddings, before the first layer, and
        handed to every boundary as :attr:`BoundaryInputs.guide`; ``None`` (the default) when not needed."""
        return None

    def select(self, inputs: BoundaryInputs) -> torch.Tensor:
        """(B, L) bool keep mask at a boundary: every non-visual position and ``inputs.kept`` visual ones."""
        raise NotImplementedError(f"{type(self).__name__} ranks by the shared last-token attention")

    def select_and_recycle(self, inputs: BoundaryInputs) -> tuple[torch.Tensor, list[Recycled] | None]:
        """:meth:`select`, and per sample the tokens to add after the kept visual tokens (``None``: none)."""
        return self.select(inputs), None

    def prepare_flops(self, text_config: PretrainedConfig, visual: int, trailing: int) -> int:
        """Products :meth:`prepare` spends on a sample with ``visual`` visual and ``trailing`` instruction tokens."""
        return 0

    def boundary_flops(self, text_config: PretrainedConfig, number: int, keys: int, visual: int, trailing: int) -> int:
        """Products the ranking at boundary ``number`` spends on a sample whose layer before it holds ``keys`` prompt
        tokens, ``visual`` of them visual and ``trailing`` instruction tokens after the image. Default: the last
        query against every key (:func:`fopru.efficiency.flops.ranking_flops`), plus the next layer's q, k and v
        projections of the current hidden states where the ranking uses them (``ranking=next``)."""
        flops = ranking_flops(text_config, keys)
        if self.ranking == "next":
            flops += ranking_projection_flops(text_config, keys)
        return flops

    @abstractmethod
    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        """The boundaries of a sample whose prompt brought ``visual`` visual tokens to a ``depth``-layer language
        model: layers strictly increasing in [1, depth), counts non-increasing."""

    def visual_per_layer(self, visual: int, depth: int, budget: Budget) -> tuple[int, ...]:
        """Visual tokens each of the ``depth`` layers (and its KV cache) holds."""
        counts = [visual] * depth
        for drop in self.schedule(visual, depth, budget):
            counts[drop.layer :] = [drop.kept] * (depth - drop.layer)
        return tuple(counts)

    def boundaries(self, depth: int, budget: Budget) -> tuple[int, ...]:
        """The boundary layers (the same for every sample)."""
        return tuple(drop.layer for drop in self.schedule(1, depth, budget))


def resolve_boundaries(name: str, values: Sequence[LayerSpec], depth: int) -> tuple[int, ...]:
    """Several boundaries for ``depth`` layers, strictly increasing. Fractions that round to the same layer on a
    shallow model merge into one boundary (fewer stages); given ints must already increase strictly."""
    layers: list[int] = []
    for value in values:
        layer = resolve_layer(name, value, depth)
        if layers and layer == layers[-1] and isinstance(value, float):
            continue
        if layers and layer <= layers[-1]:
            raise ConfigError(
                f"{name}={list(values)} resolve to layers {[*layers, layer]} for a {depth}-layer language model; "
                "boundaries must be strictly increasing"
            )
        layers.append(layer)
    return tuple(layers)
