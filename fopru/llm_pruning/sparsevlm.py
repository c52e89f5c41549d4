"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", ICML 2025, arXiv 2410.04417).

Follows the authors' code, Gumpest/SparseVLMs (Apache-2.0), branch ``v1.5`` (the version its README points to for
SparseVLM): ``llava/model/language_model/modelling_sparse_llama.py`` (``LlamaDynamicvitModel.forward``: raters,
pruning layers 2, 6, 15; ``LlamaDynamicvitFlashAttention2.forward``: the raters' attention) and
``llava/model/language_model/score.py`` (``attn_postprocess_topk`` and the per-layer counts); re-expressed here, no
code copied.

Token recycling follows ``utils.py``'s ``cluster_and_merge``. Not reproduced: the code's renumbering of positions
after each drop (the staged decoder keeps every survivor's original position; a recycled token takes its cluster
centre's) and the 1e-6 random noise the code adds to the densities to break ties (here equal densities stay
equal, and the later choices among equals go to the lower index).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from fopru.efficiency.flops import ranking_flops
from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning.base import (
    BoundaryInputs,
    Drop,
    LayerSpec,
    LLMPruning,
    Recycled,
    check_keep,
    check_layer_spec,
    final_count,
    resolve_layer,
    trailing_text,
)

#: The code's visual counts after each pruning layer of LLaVA-1.5 (576 tokens, 32 layers), by the retained-token
#: setting they average to over the layers (``score.py``).
OFFICIAL_COUNTS: dict[int, tuple[int, int, int]] = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}
OFFICIAL_TOKENS = 576


@dataclass(frozen=True)
class SparseVLM(LLMPruning):
    """Text-guided visual-token sparsification at several layers of the language model.

    - Raters, once, from the prompt's input embeddings: with V the visual embeddings and T those of the
      instruction (every real token after the image), ``m = mean_over_visual softmax_over_text(V T^T)``; the
      instruction tokens with ``m`` above its mean rate the visual tokens (every instruction token where none is
      above, e.g. a one-token instruction).
    - At each boundary b, layer b - 1's attention (rotated queries and keys, causal, softmax over all the tokens it
      holds, heads averaged), rows of the raters, columns of the visual tokens, averaged over the raters, scores
      each visual token; the ``min(c_j, v - 1)`` best survive (ties to the lower position), in prompt order.

    Boundaries: the code prunes with the attention of layers 2, 6 and 15 (0-based) of 32, so the first layers
    without the dropped tokens are 3, 7 and 16, given here as fractions of the depth (3/32, 7/32, 1/2); fractions
    that round to the same layer on a shallow model merge, the later count winning.

    Counts: ``counts`` null takes the code's table (:data:`OFFICIAL_COUNTS`) whose setting, as a share of 576
    tokens, is nearest the run's share ``k / n`` (k = ``max(1, floor(keep * n))``), scaled by ``k / setting``:
    LLaVA-1.5's 576 tokens at k = 64, 128 or 192 get the code's counts exactly. ``counts`` set: the fraction of
    the n visual tokens kept after each boundary.

    Recycling (``recycle: true``, the code's default): of the d visual tokens a boundary deletes, the
    ``m = floor(0.3 d) + 1`` best scored are clustered (:func:`cluster_and_merge`) into ``floor(m / 10) + 1`` tokens,
    each the average of its cluster's states (layer b - 1's output), placed after the kept visual tokens; they are
    visual tokens of the next stages (later boundaries score them, may delete and recycle them again), so each
    layer holds ``kept + recycled`` visual tokens (:meth:`visual_per_layer`). A boundary that keeps all or none
    of a sample's visual tokens recycles none (the code would recycle a lone deleted token into itself).
    Clustering distances and merges are elementwise (no matrix products), so recycling adds FLOPs only through
    the recycled tokens' layers.

    Raters' products are formed for every instruction token (``2 n T D`` FLOPs, then the attention rows of all T
    against the layer's keys), so that the FLOPs do not depend on how many rate.
    """

    selects = True

    layers: tuple[LayerSpec, ...] = (0.09375, 0.21875, 0.5)
    counts: tuple[float, ...] | None = None
    keep: float | None = None
    recycle: bool = True

    def __post_init__(self) -> None:
        layers, counts, recycle = self.layers, self.counts, self.recycle
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ConfigError(f"llm_pruning.layers must be a non-empty list of layers, got {layers!r}")
        object.__setattr__(self, "layers", tuple(check_layer_spec("llm_pruning.layers", value) for value in layers))
        if counts is not None:
            if isinstance(counts, str) or not isinstance(counts, Sequence) or len(counts) != len(self.layers):
                raise ConfigError(
                    f"llm_pruning.counts must be null or one fraction per boundary ({len(self.layers)}), got {counts!r}"
                )
            counts = tuple(check_keep("llm_pruning.counts", value) for value in counts)  # type: ignore[misc]
        elif len(self.layers) != 3:
            raise ConfigError(
                f"llm_pruning.counts null takes the official three-stage table; give one fraction per boundary for "
                f"llm_pruning.layers={list(self.layers)}"
            )
        object.__setattr__(self, "counts", None if counts is None else tuple(float(c) for c in counts))
        object.__setattr__(self, "keep", check_keep("llm_pruning.keep", self.keep))
        if not isinstance(recycle, bool):
            raise ConfigError(f"llm_pruning.recycle must be true or false, got {recycle!r}")

    def targets(self, visual: int, budget: Budget) -> tuple[int, ...]:
        """The count kept after each configured boundary, before the code's ``v - 1`` cap."""
        if self.counts is not None:
            return tuple(max(1, math.floor(share * visual + 1e-9)) for share in self.counts)
        target = final_count(visual, budget, self.keep)
        share = target / visual if visual else 0.0
        setting = min(OFFICIAL_COUNTS, key=lambda tokens: (abs(tokens / OFFICIAL_TOKENS - share), tokens))
        return tuple(max(1, round(count * target / setting)) for count in OFFICIAL_COUNTS[setting])

    def schedule(self, visual: int, depth: int, budget: Budget) -> tuple[Drop, ...]:
        merged: list[tuple[int, int]] = []
        for value, count in zip(self.layers, self.targets(visual, budget), strict=True):
            layer = resolve_layer("llm_pruning.layers", value, depth)
            if merged and layer == merged[-1][0] and isinstance(value, float):
                merged[-1] = (layer, count)
                continue
            if merged and layer <= merged[-1][0]:
                raise ConfigError(
                    f"llm_pruning.layers={list(self.layers)} resolve to non-increasing layers for a {depth}-layer "
                    "language model; boundaries must be strictly increasing"
                )
            merged.append((layer, count))
        drops = []
        left = visual
        for layer, count in merged:
            kept = max(0, min(count, left - 1)) if left else 0
            drops.append(Drop(layer, kept))
            left = kept + self.recycled(left, kept)
        return tuple(drops)

    def recycled(self, before: int, kept: int) -> int:
        """Tokens a boundary recycles when ``kept`` of ``before`` visual tokens survive (0 without recycling, or
        where no rule chooses: all kept or none)."""
        if not self.recycle or not 0 < kept < before:
            return 0
        return (math.floor(0.3 * (before - kept)) + 1) // 10 + 1

    def visual_per_layer(self, visual: int, depth: int, budget: Budget) -> tuple[int, ...]:
        counts = [visual] * depth
        before = visual
        for drop in self.schedule(visual, depth, budget):
            held = drop.kept + self.recycled(before, drop.kept)
            counts[drop.layer :] = [held] * (depth - drop.layer)
            before = held
        return tuple(counts)

    def prepare(self, inputs_embeds: torch.Tensor, visual: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the raters."""
        instruction = trailing_text(visual, real)
        raters = torch.zeros_like(instruction)
        for sample in range(inputs_embeds.shape[0]):
            words = instruction[sample].nonzero().flatten()
            if not bool(visual[sample].any()) or words.numel() == 0:
                continue
            embeds = inputs_embeds[sample].float()
            scores = torch.matmul(embeds[visual[sample]], embeds[words].T).softmax(dim=1).mean(dim=0)
            chosen = scores > scores.mean()
            raters[sample, words[chosen if bool(chosen.any()) else torch.ones_like(chosen)]] = True
        return raters

    def select(self, inputs: BoundaryInputs) -> torch.Tensor:
        return self.select_and_recycle(inputs)[0]

    def select_and_recycle(self, inputs: BoundaryInputs) -> tuple[torch.Tensor, list[Recycled] | None]:
        """The keep mask and, per sample, the recycled tokens (``None`` without recycling; none where no rule
        chose)."""
        keep = ~inputs.visual
        recycled: list[Recycled] = []
        for sample in range(keep.shape[0]):
            kept = int(inputs.kept[sample])
            empty = Recycled(inputs.hidden.new_zeros((0, inputs.hidden.shape[-1])), inputs.visual.new_zeros(0).long())
            if not 0 < kept < int(inputs.visual[sample].sum()):
                recycled.append(empty)
                continue
            visual, relation = self.relation(inputs, sample)
            order = torch.sort(relation, descending=True, stable=True).indices
            keep[sample, visual[order[:kept]]] = True
            if not self.recycle:
                continue
            deleted = order[kept:]  # by descending score, as the code's topk hands them to the clustering
            chosen = deleted[: math.floor(0.3 * deleted.numel()) + 1]
            states = inputs.hidden[sample, visual[chosen]]
            merged, centres = cluster_and_merge(states, chosen.numel() // 10 + 1)
            recycled.append(Recycled(merged, visual[chosen[centres]]))
        return keep, recycled if self.recycle else None

    def relation(self, inputs: BoundaryInputs, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample's visual positions and their scores: the raters' head-averaged attention, averaged over the
        raters (the code's ``relation_vis_text``)."""
        assert inputs.guide is not None, "SparseVLM.prepare chooses the raters before the first layer"
        tokens = inputs.real[sample].nonzero().flatten()  # the keys the layer attended to
        words = trailing_text(inputs.visual, inputs.real)[sample].nonzero().flatten()
        groups = inputs.query.shape[1] // inputs.key.shape[1]
        query = inputs.query[sample][:, words].float()  # (H, T, d)
        key = inputs.key[sample][:, tokens].float().repeat_interleave(groups, dim=0)  # (H, K, d)
        logits = torch.matmul(query, key.transpose(1, 2)) * inputs.scaling  # (H, T, K)
        future = tokens[None, :] > words[:, None]
        attention = logits.masked_fill(future, -torch.inf).softmax(dim=-1).mean(dim=0)  # (T, K)
        rows = inputs.guide[sample, words].bool()
        columns = inputs.visual[sample, tokens]
        return tokens[columns], attention[rows][:, columns].mean(dim=0)

    def prepare_flops(self, text_config: PretrainedConfig, visual: int, trailing: int) -> int:
        return 2 * visual * trailing * int(text_config.get_text_config().hidden_size)

    def boundary_flops(self, text_config: PretrainedConfig, number: int, keys: int, visual: int, trailing: int) -> int:
        return trailing * ranking_flops(text_config, keys)


def cluster_and_merge(states: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k nearest neighbours of (m, D) states into ``clusters`` averaged tokens, as the
    code's ``cluster_and_merge``: (clusters, D) merged states (cluster c the one of the c-th best centre) and the
    (clusters,) row of each centre.

    Distances ``||x_i - x_j|| / sqrt(D)``; density ``exp(-mean of the squared distances to the k = clusters
    nearest, itself included)``; each token's distance to the nearest denser token (the largest distance for the
    densest); centres: the ``clusters`` largest ``distance x density``; every token joins its nearest centre (ties
    to the better centre), each centre its own cluster; a merged token is its cluster's sum over (size + 1e-6).
    """
    count, width = states.shape
    values = states.float()
    distance = (values[:, None, :] - values[None, :, :]).norm(dim=-1) / width**0.5  # (m, m)
    nearest = torch.sort(distance, dim=1).values[:, :clusters]
    density = torch.exp(-nearest.square().mean(dim=1))
    denser = density[None, :] > density[:, None]  # denser[i, j]: j is denser than i (equal: neither)
    parent = torch.where(denser, distance, distance.max()).amin(dim=1)
    centres = torch.sort(parent * density, descending=True, stable=True).indices[:clusters]
    assignment = distance[centres].argmin(dim=0)  # (m,): the first nearest centre
    assignment[centres] = torch.arange(clusters, device=states.device)
    sizes = torch.zeros(clusters, device=states.device).index_add_(
        0, assignment, torch.ones(count, device=states.device)
    )
    merged = torch.zeros(clusters, width, device=states.device).index_add_(0, assignment, values)
    return (merged / (sizes[:, None] + 1e-6)).to(states.dtype), centres
