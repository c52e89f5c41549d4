"""Reductions of one vision-encoder layer's self-attention to per-patch statistics.

Two routes give the same :class:`AttentionSummary`: :func:`summarize_attention` from a full (B, H, T, T) matrix
(what eager attention returns with ``output_attentions=True``; the reference) and :func:`summarize_query_key`
from that layer's queries and keys, in blocks of query rows, so the B x H x T x T matrix is never held at once.
The second one is what the vision tap computes next to the layer's fast (SDPA) attention.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Literal

import torch

from fopru.errors import ConfigError

Scores = Literal["probabilities", "logits"]
ClsDrop = Literal["after_softmax", "before_softmax"]
SCORES: tuple[str, ...] = ("probabilities", "logits")
CLS_DROPS: tuple[str, ...] = ("after_softmax", "before_softmax")

# Query rows per block are chosen so one block of float32 scores stays under this many bytes; small blocks are
# reused by the allocator instead of being mapped afresh on every call.
_BLOCK_BYTES = 16 * 2**20


class _Scratch(threading.local):
    """One float32 buffer per thread that a CPU summary's blocks are computed in, kept between calls.

    A block of scores is several megabytes: allocated afresh on every call, the C allocator maps and unmaps it
    from the system each time and every page faults in again, which cost the tap more than its arithmetic. (CUDA's
    caching allocator reuses such blocks already.)
    """

    buffer: torch.Tensor | None = None

    def views(self, inputs: torch.Tensor, *shapes: tuple[int, ...]) -> list[torch.Tensor] | None:
        """Contiguous float32 views of the buffer, one per shape, or ``None`` (allocate instead) off the CPU or
        where autograd records ``inputs``."""
        if inputs.device.type != "cpu" or (inputs.requires_grad and torch.is_grad_enabled()):
            return None
        sizes = [math.prod(shape) for shape in shapes]
        if self.buffer is None or self.buffer.numel() < sum(sizes):
            # A normal tensor, even when first needed under inference mode: normal tensors may be written inside
            # and outside it, inference tensors only inside.
            with torch.inference_mode(False):
                self.buffer = torch.empty(sum(sizes), dtype=torch.float32)
        parts = torch.split(self.buffer[: sum(sizes)], sizes)
        return [part.view(shape) for part, shape in zip(parts, shapes, strict=True)]


_SCRATCH = _Scratch()


@dataclass(frozen=True)
class AttentionReduction:
    """How attention becomes scores; the FoPru paper leaves both choices open.

    Attributes:
        scores: ``probabilities`` (softmax(QK^T / sqrt(d)), default) or ``logits`` (QK^T / sqrt(d), no softmax).
        cls_drop: when the [CLS] token leaves the matrix. ``after_softmax`` (default): softmax over all T keys,
            then the [CLS] row and column are dropped, so patch rows no longer sum to 1. ``before_softmax``: the
            softmax runs over the N patch keys only, i.e. rows renormalised without [CLS]. Ignored for logits and
            for encoders without [CLS].
    """

    scores: Scores = "probabilities"
    cls_drop: ClsDrop = "after_softmax"

    def __post_init__(self) -> None:
        if self.scores not in SCORES:
            raise ConfigError(f"scores={self.scores!r} is not one of {list(SCORES)}")
        if self.cls_drop not in CLS_DROPS:
            raise ConfigError(f"cls_drop={self.cls_drop!r} is not one of {list(CLS_DROPS)}")


@dataclass(frozen=True)
class AttentionSummary:
    """Head-averaged patch-to-patch attention statistics of one layer, float32.

    With A the head mean of the per-head scores restricted to patches (an N x N matrix):

    Attributes:
        received: (B, N), ``s1[j] = mean_i A[i, j]``: attention each patch receives.
        paid: (B, N), ``s2[i] = mean_j A[i, j]``: attention each patch pays to the other patches.
        cls: (B, N), the [CLS] row restricted to patches (FasterVLM's criterion); ``None`` without [CLS].
        keys: (B, N, H * h) the layer's keys of the patches, heads concatenated (token similarity for VisionZip
            and PruMerge); ``None`` where the route does not provide them (a full attention matrix, or merged tokens
            that have no single key).
        key_heads: H, the number of heads concatenated in ``keys`` (:meth:`head_mean_keys` splits them).
        cls_joint: (B, N) the [CLS] row of one softmax over the full-width logits ``q . k / sqrt(H * h)`` (every
            head's query and key concatenated into one vector, i.e. the per-head dot products summed), restricted
            to patches after the softmax over all T keys: LLaVA-PruMerge's attention. ``None`` without [CLS] or
            where the route does not provide it.
    """

    received: torch.Tensor
    paid: torch.Tensor
    cls: torch.Tensor | None
    keys: torch.Tensor | None = None
    key_heads: int = 1
    cls_joint: torch.Tensor | None = None

    def head_mean_keys(self) -> torch.Tensor | None:
        """(B, N, h) the keys averaged over heads (VisionZip's similarity basis), or ``None`` without keys."""
        if self.keys is None:
            return None
        batch, tokens, width = self.keys.shape
        if width % self.key_heads:
            raise ConfigError(f"keys of width {width} cannot be split into key_heads={self.key_heads} heads")
        return self.keys.view(batch, tokens, self.key_heads, width // self.key_heads).mean(dim=2)


def _split_cls(num_positions: int, has_cls: bool) -> int:
    first = 1 if has_cls else 0
    if num_positions - first < 1:
        raise ConfigError(f"attention over {num_positions} positions leaves no patch tokens (has_cls={has_cls})")
    return first


def _head_sums(
    logits: torch.Tensor,
    first: int,
    reduction: AttentionReduction,
    probabilities_out: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of a block of query rows summed over heads, keys restricted to patches: (B, rows, N).

    ``probabilities_out``: a buffer shaped like ``logits`` for the softmax over all keys (the default reduction);
    ``out``: a (B, rows, T) buffer for the sum. The softmax is one fused kernel over the block's logits, and the
    head sum one contiguous reduction before the [CLS] column is dropped: the tap's cost stays close to its two
    passes over the block.
    """
    if reduction.scores == "logits":
        return torch.sum(logits, dim=1, out=out)[..., first:]
    if reduction.cls_drop == "before_softmax":
        return torch.softmax(logits[..., first:], dim=-1).sum(dim=1)
    probabilities = torch._softmax(logits, -1, False, out=probabilities_out)
    return torch.sum(probabilities, dim=1, out=out)[..., first:]


def summarize_attention(
    attention: torch.Tensor, has_cls: bool = True, reduction: AttentionReduction | None = None
) -> AttentionSummary:
    """Summary of a full (B, H, T, T) attention-probability matrix, [CLS] first when ``has_cls``.

    ``reduction.scores == "logits"`` cannot be served from probabilities; use :func:`summarize_query_key`.
    """
    reduction = reduction or AttentionReduction()
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ConfigError(
            f"attention must be (batch, heads, T, T) with T = N + 1 ([CLS] first) or N, got {tuple(attention.shape)}"
        )
    if reduction.scores == "logits":
        raise ConfigError("scores='logits' needs queries and keys; probabilities cannot be turned back into logits")
    first = _split_cls(attention.shape[-1], has_cls)
    probabilities = attention.float()
    if reduction.cls_drop == "before_softmax":
        patches = probabilities[..., first:]
        probabilities = patches / patches.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    else:
        probabilities = probabilities[..., first:]
    mean = probabilities.mean(dim=1)  # (B, T, N): head average
    patch_rows = mean[:, first:, :]
    return AttentionSummary(
        received=patch_rows.mean(dim=1),
        paid=patch_rows.mean(dim=2),
        cls=mean[:, 0, :] if has_cls else None,
    )


def summarize_query_key(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    has_cls: bool = True,
    reduction: AttentionReduction | None = None,
    block_rows: int | None = None,
) -> AttentionSummary:
    """Summary from a layer's (B, H, T, D) queries and keys, computed block by block over query rows.

    Memory is O(B * H * block_rows * T) instead of O(B * H * T^2). ``block_rows`` defaults to as many rows as fit
    in a 16 MiB block; on the CPU the blocks are computed in a buffer kept between calls.
    """
    reduction = reduction or AttentionReduction()
    if query.ndim != 4 or key.shape != query.shape:
        raise ConfigError(
            f"query and key must both be (batch, heads, T, head_dim), got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    batch, heads, positions, _ = query.shape
    first = _split_cls(positions, has_cls)
    num_patches = positions - first
    if block_rows is None:
        block_rows = max(1, _BLOCK_BYTES // (4 * batch * heads * positions))
    block_rows = min(block_rows, positions)
    scaled = query.float() * scaling
    key_t = key.float().transpose(-1, -2)
    block = (batch, heads, block_rows, positions)
    scratch = _SCRATCH.views(scaled, block, block, block[:1] + block[2:])
    received: torch.Tensor | None = None
    paid_parts: list[torch.Tensor] = []
    cls: torch.Tensor | None = None
    cls_joint: torch.Tensor | None = None
    for start in range(0, positions, block_rows):
        rows_here = min(block_rows, positions - start)
        logits_buffer, probability_buffer, sum_buffer = (
            (None, None, None) if scratch is None else [_leading(part, rows_here) for part in scratch]
        )
        logits = torch.matmul(scaled[:, :, start : start + rows_here], key_t, out=logits_buffer)
        summed = _head_sums(logits, first, reduction, probability_buffer, out=sum_buffer)
        if has_cls and start == 0:
            cls = summed[:, 0, :] / heads
            # LLaVA-PruMerge's one softmax over the full-width [CLS] logits (every head's query and key
            # concatenated, scaled by the full width): the per-head [CLS] dot products summed over heads.
            joint = logits[:, :, 0].sum(dim=1) * (1.0 / scaling) * (heads * query.shape[-1]) ** -0.5
            cls_joint = joint.softmax(dim=-1)[:, first:]
        rows = summed[:, max(0, first - start) :, :]  # the patches' query rows
        part = rows.sum(dim=1)
        received = part if received is None else received + part
        paid_parts.append(rows.sum(dim=2))
    assert received is not None
    scale = 1.0 / (heads * num_patches)
    received = received * scale
    paid = (paid_parts[0] if len(paid_parts) == 1 else torch.cat(paid_parts, dim=1)) * scale
    return AttentionSummary(received=received, paid=paid, cls=cls, cls_joint=cls_joint)


def _leading(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """A contiguous (B, H, rows, T) or (B, rows, T) view at the start of a block buffer sized for more rows."""
    shape = (*buffer.shape[:-2], rows, buffer.shape[-1])
    return buffer.flatten()[: math.prod(shape)].view(shape)
