"""Per-sample random draws: the noise of a random component depends on its seed and on which sample it scores.

Drawing from one generator in call order makes a sample's noise depend on the batches before it, so a resumed run,
a different batch size or another DDP shard would prune the same sample differently. Instead each sample gets a
stable 63-bit key from its id (:func:`sample_key`), carried through the pipeline as a tensor, and every row's
noise comes from a generator seeded with ``mix(seed, key, stream)``: the same seed and sample give the same draws
wherever and whenever the sample is evaluated.
"""

from __future__ import annotations

import hashlib

import torch

_MASK = (1 << 63) - 1


def sample_key(sample_id: object) -> int:
    """A stable non-negative 63-bit key for a sample id (the same in every process and Python session)."""
    digest = hashlib.sha256(str(sample_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") & _MASK


def mix(seed: int, key: int, stream: str = "") -> int:
    """One generator seed from a component's ``seed``, a row's key and the component's ``stream`` name (distinct
    triples give unrelated streams, so two random components with one seed do not draw the same noise)."""
    digest = hashlib.sha256(f"{stream}:{int(seed)}:{int(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _MASK


def offset_keys(keys: torch.Tensor | None, offset: int) -> torch.Tensor | None:
    """The keys of a sample's span starting at token ``offset`` (a tile of an image): unchanged for the first span,
    distinct for the others, so that equal-sized tiles do not draw the same noise."""
    if keys is None or offset == 0:
        return keys
    return torch.tensor([mix(offset, int(key)) for key in keys.tolist()], dtype=torch.long, device=keys.device)


def row_uniform(
    shape: tuple[int, int], seed: int, keys: torch.Tensor | None, fallback: torch.Generator, stream: str
) -> torch.Tensor:
    """(B, n) float32 uniform noise on the CPU: row b from ``mix(seed, keys[b], stream)``, or, without keys, drawn
    from ``fallback`` in call order (direct calls on tensors that belong to no sample)."""
    if keys is None:
        return torch.rand(shape, generator=fallback, dtype=torch.float32)
    if keys.shape != (shape[0],):
        raise ValueError(f"expected one sample key per row ({shape[0]}), got keys of shape {tuple(keys.shape)}")
    rows = [
        torch.rand(shape[1], generator=torch.Generator().manual_seed(mix(seed, key, stream)), dtype=torch.float32)
        for key in keys.tolist()
    ]
    return torch.stack(rows) if rows else torch.empty(shape, dtype=torch.float32)
