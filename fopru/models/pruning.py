"""The glue between an adapter and the pruning pipeline: pruning and projecting encoded images, and the costs
pruning adds (the tap's products, the projector's tokens)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.inputs import KeptImage
from fopru.significance.attention import AttentionSummary
from fopru.strategies.base import StrategyInputs

if TYPE_CHECKING:
    from fopru.pipeline import PruningPipeline, PruningRequest


def tap_flops(patches: int, width: int, has_cls: bool) -> int:
    """Matrix-product FLOPs the tap adds to one attention call: the tapped layer's queries times its keys over the
    whole sequence (patches, plus [CLS]). The joint [CLS] row (:attr:`AttentionSummary.cls_joint`) is read off
    those products."""
    sequence = patches + int(has_cls)
    return 2 * sequence * sequence * width


def prune_images(
    pipeline: PruningPipeline,
    attention: AttentionSummary | None,
    features: torch.Tensor,
    layout: VisualLayout,
    project: Callable[[torch.Tensor], torch.Tensor],
    text: tuple[torch.Tensor, torch.Tensor] | None = None,
    sample_keys: torch.Tensor | None = None,
    cls_features: torch.Tensor | None = None,
    deepstack: tuple[torch.Tensor, ...] = (),
) -> list[KeptImage]:
    """Prune (I, N, D) same-layout image features and project the kept ones: one :class:`KeptImage` per image.

    ``text`` is each image's prompt text, (I, T, D_llm) embeddings and their (I, T) mask, for strategies that read
    it (``request.text``); ``sample_keys`` (I,) the images' entries of the batch's :data:`SAMPLE_KEYS`, if any;
    ``cls_features`` (I, G, D) the images' [CLS] features, one per grid of the layout where each grid is a crop
    of its own (``request.per_crop``; else G = 1), for strategies that keep [CLS] (``request.cls``);
    ``deepstack`` the (I, N, D) DeepStack levels, which follow the selection (or merge) of ``features``. For
    strategies that read the projected tokens (``request.projected``) all N tokens are projected once and a pure
    selection takes its tokens from them (no second projection). An adaptive strategy's images keep different
    counts: each :class:`KeptImage` holds its own.
    """
    request = pipeline.request
    projected = project(features) if request.projected else None
    inputs = StrategyInputs(
        projected=projected,
        text=text[0] if text is not None and request.text else None,
        text_mask=text[1] if text is not None and request.text else None,
        sample_keys=sample_keys,
        cls_features=cls_features if request.cls else None,
    )
    pruned = pipeline.prune(attention, features, layout, inputs)
    selection = pruned.selection
    if projected is not None and selection.weights is None and not pruned.cls_first:
        embeddings = selection.gather(projected)
    else:
        chosen = selection.gather(features)
        if pruned.cls_first:
            assert cls_features is not None
            chosen = torch.cat([cls_features.to(chosen.dtype).expand(chosen.shape[0], -1, -1), chosen], dim=1)
        embeddings = project(chosen)
    lead = cls_features.shape[1] if pruned.cls_first and cls_features is not None else 0
    if lead and deepstack:
        raise ConfigError("a leading [CLS] token has no DeepStack features: DeepStack towers have no [CLS]")
    deep = tuple(selection.gather(level) for level in deepstack)
    counts = selection.kept_per_sample.tolist()
    # The merge product weights @ features: (k x N) @ (N x D) per image, and once more per DeepStack level.
    width = features.shape[-1] + sum(level.shape[-1] for level in deepstack)
    merge = 2 * layout.num_tokens * width if selection.weights is not None else 0
    return [
        KeptImage(
            embeddings[image, : lead + count],
            selection.indices[image, :count],
            layout.num_tokens,
            selection.flops + merge * count,
            leading_cls=pruned.cls_first,
            deepstack=tuple(level[image, :count] for level in deep),
        )
        for image, count in enumerate(counts)
    ]


def projector_tokens(request: PruningRequest, num_tokens: int, kept: int, leading_cls: bool = False) -> int:
    """Tokens one image sends through a per-token projector under :func:`prune_images`: the ``kept`` ones it sends
    on ([CLS] included), or all ``num_tokens`` once for strategies that read projected tokens (plus the kept ones
    again if such a strategy also merges, or keeps [CLS])."""
    if not request.projected:
        return kept
    return num_tokens + (kept if request.merges or leading_cls else 0)
