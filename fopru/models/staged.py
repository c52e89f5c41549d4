"""The language model run layer by layer, so that in-LLM pruning can drop visual tokens between layers.

transformers' decoder forward runs every layer on one sequence. In-LLM methods (:mod:`fopru.llm_pruning`) need
the sequence to shrink after some layers, with each later layer's KV cache holding only the survivors. This module
drives the model's own modules (its decoder layers, rotary embedding, final norm, lm_head and
``create_causal_mask``) over *segments* of layers: every segment has its own left-padded 2-D attention mask, sized
against its first layer's cache, so layers keep different cache lengths through prefill and decode. Nothing of
the layers' forward code is copied; with no boundary the result equals the stock forward (tested).

The ranking scores at a boundary come from :class:`LastQueryAttention`: like the vision tap
(:mod:`fopru.models.tap`), it swaps one attention module's kernel for a function registered through transformers'
AttentionInterface that runs the module's own kernel (SDPA, FlashAttention or eager) unchanged and, next to it,
multiplies only the last query by the keys. No layer falls back to eager attention. Methods with their own rule
(DART, SparseVLM) get that layer's rotated queries and keys from :class:`QueryKeyProbe` (the same way) and its
output, and choose the survivors themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from fopru.errors import ConfigError
from fopru.llm_pruning.base import RANKINGS, BoundaryInputs, Drop, LLMPruning, Ranking, Recycled, rank_visual
from fopru.models.tap import AttentionProbe, ProbeRecorded


class LastQueryAttention(AttentionProbe):
    """Context manager recording, for one attention module, the attention of the last query over all keys.

    :attr:`rows` is (B, L) float32: the softmax probabilities of the last position's query against every key
    (GQA key heads shared as the module shares them), masked as the module's own mask masks them, averaged over
    heads. It equals the last row of eager attention's ``output_attentions`` weights, head-averaged. Only the
    (B, H, 1, L) score block is formed.
    """

    implementation = "fopru_last_query"

    def __init__(self, attention: nn.Module) -> None:
        super().__init__(attention)
        self.rows: torch.Tensor | None = None

    def reset(self) -> None:
        self.rows = None

    def record(
        self, query: torch.Tensor, key: torch.Tensor, scaling: float | None, attention_mask: torch.Tensor | None
    ) -> None:
        """(B, H, q, d) queries and (B, K, L, d) keys of one call: keep the last query's head-averaged row."""
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        with torch.no_grad():
            last = query[:, :, -1:]
            keys = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            scores = torch.matmul(last, keys.transpose(-1, -2)).float() * scaling  # (B, H, 1, L)
            if attention_mask is not None:
                row = attention_mask[:, :, -1:, : keys.shape[-2]]
                # SDPA masks are boolean (True = attend), eager ones additive.
                scores = scores.masked_fill(~row, -torch.inf) if row.dtype == torch.bool else scores + row.float()
            self.rows = scores.softmax(dim=-1).mean(dim=1)[:, 0]


class NextLayerScores(LastQueryAttention):
    """The last query's head-averaged attention row as a decoder layer *would* compute it on given hidden states,
    without running it: :meth:`score` calls the layer's input norm and attention module (its q, k, v projections
    and rotary embedding, whatever the family), records the scores and stops before the kernel, so the layer's
    cache and output are untouched. PyramidDrop's released code ranks this way, with the next stage's first layer.
    """

    implementation = "fopru_next_layer_scores"
    runs_kernel = False

    def score(self, layer: nn.Module, hidden: torch.Tensor, mask: Any, rotary: Any) -> torch.Tensor:
        """(B, L) scores of the last position of (B, L, D) ``hidden`` under ``layer``'s projections."""
        with self, contextlib.suppress(ProbeRecorded):
            self.attention(
                hidden_states=layer.get_submodule("input_layernorm")(hidden),
                attention_mask=mask,
                position_embeddings=rotary,
            )  # no cache given: the layer's cache stays as it is
        assert self.rows is not None
        return self.rows


class QueryKeyProbe(AttentionProbe):
    """Context manager keeping one attention call's rotated (B, H, L, d) queries, (B, K, L, d) keys and scale, for
    methods with their own selection rule (:attr:`~fopru.llm_pruning.base.LLMPruning.selects`)."""

    implementation = "fopru_query_key"

    def __init__(self, attention: nn.Module) -> None:
        super().__init__(attention)
        self.query: torch.Tensor | None = None
        self.key: torch.Tensor | None = None
        self.scaling = 1.0

    def reset(self) -> None:
        self.query = self.key = None

    def record(
        self, query: torch.Tensor, key: torch.Tensor, scaling: float | None, attention_mask: torch.Tensor | None
    ) -> None:
        self.query, self.key = query.detach(), key.detach()
        self.scaling = query.shape[-1] ** -0.5 if scaling is None else float(scaling)


@dataclass
class Segment:
    """Consecutive layers ``start <= i < stop`` that hold the same tokens.

    Attributes:
        start, stop: the layer range.
        attention_mask: (B, L_s) int64, the segment's left-padded 2-D mask over its cached tokens; decode steps
            append a column.
        prompt_index: (B, L_s) int64, each cached prompt position's index in the prefill sequence (-1 on padding).
        shift: (B,) int64 subtracted from decode positions in this segment (renumbered prefill positions), or None.
    """

    start: int
    stop: int
    attention_mask: torch.Tensor
    prompt_index: torch.Tensor
    shift: torch.Tensor | None = None


@dataclass(frozen=True)
class _Stream:
    """The left-padded sequence between two segments: (B, L, D) states, (P, B, L) positions, (B, L) masks of the
    present and the visual tokens, the method's guide and each token's prompt index (-1 where none)."""

    hidden: torch.Tensor
    positions: torch.Tensor
    present: torch.Tensor
    visual: torch.Tensor
    guide: torch.Tensor | None
    prompt_index: torch.Tensor

    def with_recycled(self, recycled: Sequence[Recycled], centre_positions: Sequence[torch.Tensor]) -> _Stream:
        """The stream with each sample's recycled tokens right after its last present visual token (visual, no
        prompt index, at their centres' positions), left-padded again."""
        batch, length, width = self.hidden.shape
        most = max(len(part.centres) for part in recycled)
        extra = self.hidden.new_zeros((batch, most, width))
        extra_positions = self.positions.new_zeros((self.positions.shape[0], batch, most))
        rows = []
        for sample, part in enumerate(recycled):
            count = len(part.centres)
            extra[sample, :count] = part.states.to(self.hidden.dtype)
            extra_positions[:, sample, :count] = centre_positions[sample]
            present = self.present[sample].nonzero().flatten()
            visual = (self.visual[sample] & self.present[sample]).nonzero().flatten()
            split = int(visual.max()) + 1 if visual.numel() else length
            added = torch.arange(length, length + count, device=present.device)
            rows.append(torch.cat([present[present < split], added, present[present >= split]]))
        total = max(len(row) for row in rows)
        index = torch.zeros((batch, total), dtype=torch.long, device=self.hidden.device)
        present = torch.zeros((batch, total), dtype=torch.bool, device=self.hidden.device)
        for sample, row in enumerate(rows):
            index[sample, total - len(row) :] = row
            present[sample, total - len(row) :] = True
        hidden = torch.cat([self.hidden, extra], dim=1).gather(1, index[..., None].expand(-1, -1, width))
        positions = torch.cat([self.positions, extra_positions], dim=2)
        positions = positions.gather(2, index[None].expand(positions.shape[0], -1, -1))
        ones = self.visual.new_ones((batch, most))
        visual = torch.cat([self.visual, ones], dim=1).gather(1, index) & present
        guide = None
        if self.guide is not None:
            guide = torch.cat([self.guide, self.guide.new_zeros((batch, most))], dim=1).gather(1, index) & present
        prompt_index = torch.cat([self.prompt_index, self.prompt_index.new_full((batch, most), -1)], dim=1)
        prompt_index = prompt_index.gather(1, index).masked_fill(~present, -1)
        return _Stream(hidden, positions, present, visual, guide, prompt_index)


@dataclass(frozen=True)
class StagedDecoder:
    """A causal language model seen as its parts: the decoder (layers, rotary embedding, norm, config) and lm_head.

    Works for every Llama-style decoder of transformers whose layers are called as
    ``layer(hidden, attention_mask=..., position_embeddings=..., past_key_values=..., use_cache=...)`` with one
    ``self_attn`` module each (Llama, Mistral, Qwen2, Qwen2-VL and Qwen2.5-VL text models). Positions are (P, B, L):
    P = 1 for 1-D RoPE, 3 for M-RoPE.
    """

    decoder: Any  # the transformers decoder module: its submodules are looked up by name, untyped
    lm_head: nn.Module

    def __post_init__(self) -> None:
        types = getattr(self.decoder.config, "layer_types", None) or []
        if any(kind != "full_attention" for kind in types):
            raise ConfigError(
                f"in-LLM pruning supports full-attention language models only; this one has layer types {set(types)}"
            )

    @property
    def layers(self) -> nn.ModuleList:
        layers = self.decoder.get_submodule("layers")
        assert isinstance(layers, nn.ModuleList)
        return layers

    @property
    def depth(self) -> int:
        return len(self.layers)

    def _rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
        return self.decoder.rotary_emb(hidden, positions[0] if positions.shape[0] == 1 else positions)

    def _run(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        rotary: Any,
        cache: DynamicCache,
        start: int,
        stop: int,
        deepstack: Sequence[torch.Tensor] = (),
        prompt_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layers ``start <= i < stop``, which hold the same tokens; the mask is sized against layer ``start``.

        ``deepstack`` (prefill only): per level i, (B, L, D) features over the prefill sequence added to layer i's
        output; ``prompt_index`` (B, L_s) says which prefill position each present token is (-1: none)."""
        mask = create_causal_mask(
            config=self.decoder.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=cache,
            layer_idx=start,
        )
        for index in range(start, stop):
            hidden = self.layers[index](
                hidden, attention_mask=mask, position_embeddings=rotary, past_key_values=cache, use_cache=True
            )
            if index < len(deepstack) and prompt_index is not None:
                hidden = _add_at_prompt_positions(hidden, deepstack[index], prompt_index)
        return hidden

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm_head(self.decoder.norm(hidden[:, -1:]))
        return logits

    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        visual_mask: torch.Tensor,
        schedules: Sequence[Sequence[Drop]],
        cache: DynamicCache,
        ranking: Ranking = "own",
        renumber: bool = False,
        method: LLMPruning | None = None,
        deepstack: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, list[Segment]]:
        """Run the prompt, dropping visual tokens at every boundary; returns last-position logits and segments.

        Args:
            inputs_embeds: (B, L, D) the left-padded prompt.
            attention_mask: (B, L) 0 on padding.
            position_ids: (P, B, L).
            visual_mask: (B, L) bool, the visual positions.
            schedules: one schedule per sample, all with the same boundary layers (counts may differ).
            cache: an empty cache; layer i ends up holding the tokens of the segment containing i.
            ranking: ``own``: a boundary at layer b ranks by the last query's attention in layer b - 1 (recorded as
                it runs); ``next``: by the scores layer b's own projections give the hidden states entering it
                (:class:`NextLayerScores`).
            renumber: after every boundary, 1-D positions become 0..L'-1 over the survivors (left padding kept at
                0) and later decode steps shift down by the tokens dropped (``Segment.shift``); ignored for M-RoPE.
            method: the in-LLM method; one with its own selection rule (``selects``) chooses the survivors from
                layer ``b - 1``'s output, queries and keys, else the last token's attention ranks them.
            deepstack: Qwen3-VL's DeepStack levels, (B, L, D) each (zero off the visual tokens): level i is added
                to layer i's output at the tokens still present there, so a token dropped at an earlier boundary
                takes none and recycled tokens take none.
        """
        if ranking not in RANKINGS:
            raise ConfigError(f"ranking={ranking!r} is not one of {list(RANKINGS)}")
        batch = inputs_embeds.shape[0]
        if len(schedules) != batch:
            raise ValueError(f"{len(schedules)} schedules for a batch of {batch}")
        boundaries = [drop.layer for drop in schedules[0]]
        if any([drop.layer for drop in schedule] != boundaries for schedule in schedules):
            raise ValueError("every sample's schedule must have the same boundary layers")
        device = inputs_embeds.device
        real = attention_mask.bool()
        index = torch.arange(attention_mask.shape[1], device=device).expand(batch, -1).masked_fill(~real, -1)
        segment = Segment(0, self.depth, attention_mask, index)
        visual = visual_mask & real
        own_rule = method is not None and method.selects
        guide = method.prepare(inputs_embeds, visual, real) if method is not None and own_rule else None
        hidden, positions = inputs_embeds, position_ids
        segments: list[Segment] = []
        for number, layer in enumerate(boundaries):
            segment.stop = layer
            kept = torch.tensor([schedule[number].kept for schedule in schedules], device=device)
            kept = torch.minimum(kept, visual.sum(dim=1))
            rotary = self._rotary(hidden, positions)
            mask = segment.attention_mask
            hidden = self._run(hidden, mask, rotary, cache, segment.start, layer - 1, deepstack, segment.prompt_index)
            ranked = (kept > 0) & (kept < visual.sum(dim=1))  # some but not all survive: a rule must choose
            ranks = bool(ranked.any())
            recycled: list[Recycled] | None = None
            if ranks and own_rule:
                assert method is not None
                with QueryKeyProbe(self.layers[layer - 1].get_submodule("self_attn")) as recorder:
                    hidden = self._run(hidden, mask, rotary, cache, layer - 1, layer, deepstack, segment.prompt_index)
                assert recorder.query is not None and recorder.key is not None
                state = BoundaryInputs(
                    hidden=hidden,
                    query=recorder.query,
                    key=recorder.key,
                    scaling=recorder.scaling,
                    visual=visual,
                    real=mask.bool(),
                    guide=guide,
                    kept=kept,
                    number=number,
                    norm=self.decoder.norm,
                )
                # Samples keeping all or none of their visual tokens need no rule (the method may skip them).
                trivial = rank_visual(torch.zeros(visual.shape, device=device), visual, kept)
                chosen, recycled = method.select_and_recycle(state)
                keep = torch.where(ranked[:, None], chosen, trivial)
            elif ranks and ranking == "own":
                with LastQueryAttention(self.layers[layer - 1].get_submodule("self_attn")) as probe:
                    hidden = self._run(hidden, mask, rotary, cache, layer - 1, layer, deepstack, segment.prompt_index)
                assert probe.rows is not None
                keep = rank_visual(probe.rows, visual, kept)
            elif ranks:  # ranking == "next"
                hidden = self._run(hidden, mask, rotary, cache, layer - 1, layer, deepstack, segment.prompt_index)
                next_mask = create_causal_mask(
                    config=self.decoder.config,
                    inputs_embeds=hidden,
                    attention_mask=mask,
                    past_key_values=cache,
                    layer_idx=layer,
                )
                probe_next = NextLayerScores(self.layers[layer].get_submodule("self_attn"))
                keep = rank_visual(probe_next.score(self.layers[layer], hidden, next_mask, rotary), visual, kept)
            else:  # every visual token kept, or all withdrawn: no ranking needed
                hidden = self._run(hidden, mask, rotary, cache, layer - 1, layer, deepstack, segment.prompt_index)
                keep = rank_visual(torch.zeros(visual.shape, device=device), visual, kept)
            keep = keep & segment.attention_mask.bool()
            centre_positions = None
            if recycled is not None:
                centre_positions = [positions[:, sample, part.centres] for sample, part in enumerate(recycled)]
            order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, -int(keep.sum(dim=1).max()) :]
            segments.append(segment)
            hidden = hidden.gather(1, order[..., None].expand(-1, -1, hidden.shape[-1]))
            positions = positions.gather(2, order[None].expand(positions.shape[0], -1, -1))
            survived = keep.gather(1, order)
            visual = visual.gather(1, order) & survived
            shift = None
            if renumber and positions.shape[0] == 1:
                # The next decode position in the given numbering, against the survivors' count.
                shift = position_ids[0, :, -1] + 1 - survived.sum(dim=1)
                positions = (survived.cumsum(dim=1) - 1).clamp_min(0)[None].to(positions.dtype)
            if guide is not None:
                guide = guide.gather(1, order)
            prompt_index = segment.prompt_index.gather(1, order).masked_fill(~survived, -1)
            if recycled is not None and centre_positions is not None and any(len(part.centres) for part in recycled):
                stream = _Stream(hidden, positions, survived, visual, guide, prompt_index)
                stream = stream.with_recycled(recycled, centre_positions)
                hidden, positions, survived, visual = stream.hidden, stream.positions, stream.present, stream.visual
                guide, prompt_index = stream.guide, stream.prompt_index
            segment = Segment(layer, self.depth, survived.to(attention_mask.dtype), prompt_index, shift)
        rotary = self._rotary(hidden, positions)
        hidden = self._run(
            hidden, segment.attention_mask, rotary, cache, segment.start, segment.stop, deepstack, segment.prompt_index
        )
        segments.append(segment)
        return self._logits(hidden), segments

    def decode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, segments: list[Segment], cache: DynamicCache
    ) -> torch.Tensor:
        """One step for (B, 1) tokens at (P, B, 1) positions through every segment; appends to each segment's mask."""
        hidden = self.decoder.embed_tokens(input_ids)
        rotary = self._rotary(hidden, position_ids)
        for segment in segments:
            segment.attention_mask = torch.cat(
                [segment.attention_mask, segment.attention_mask.new_ones((input_ids.shape[0], 1))], dim=1
            )
            shifted = rotary
            if segment.shift is not None:
                shifted = self._rotary(hidden, position_ids - segment.shift.to(position_ids)[None, :, None])
            hidden = self._run(hidden, segment.attention_mask, shifted, cache, segment.start, segment.stop)
        return self._logits(hidden)


def _add_at_prompt_positions(hidden: torch.Tensor, features: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
    """(B, L_s, D) ``hidden`` plus (B, L, D) prefill-sequence ``features`` at each token's prefill position."""
    present = prompt_index >= 0
    index = prompt_index.clamp_min(0)[..., None].expand(-1, -1, features.shape[-1])
    added = features.to(hidden.dtype).gather(1, index).masked_fill(~present[..., None], 0)
    return hidden + added
