"""A regular sub-lattice of a patch grid, shared by the position-only strategies."""

from __future__ import annotations

import math

import torch

# The lattice's aspect ratio may differ from the grid's by at most this factor (then the largest count wins).
_MAX_ASPECT_DISTORTION = 2.0


def lattice_shape(count: int, rows: int, cols: int) -> tuple[int, int]:
    """(r, c) with r * c <= count, r <= rows, c <= cols: the most cells, among lattices of about the grid's aspect.

    Ties go to the lattice whose aspect is closest to the grid's.
    """
    target = math.log(rows / cols)
    best: tuple[int, float, int, int] | None = None
    fallback: tuple[int, float, int, int] | None = None
    for lattice_rows in range(1, rows + 1):
        lattice_cols = min(cols, count // lattice_rows)
        if lattice_cols < 1:
            break
        distortion = abs(math.log(lattice_rows / lattice_cols) - target)
        candidate = (lattice_rows * lattice_cols, -distortion, lattice_rows, lattice_cols)
        fallback = candidate if fallback is None or candidate > fallback else fallback
        if distortion <= math.log(_MAX_ASPECT_DISTORTION) and (best is None or candidate > best):
            best = candidate
    chosen = best or fallback
    assert chosen is not None  # count >= 1 always admits the 1 x 1 lattice
    return chosen[2], chosen[3]


def bin_edges(size: int, parts: int) -> tuple[list[int], list[int]]:
    """Start/stop of ``parts`` near-equal bins covering ``range(size)`` (adaptive pooling's bins)."""
    starts = [(i * size) // parts for i in range(parts)]
    stops = [-((-(i + 1) * size) // parts) for i in range(parts)]
    return starts, stops


def centers(size: int, parts: int) -> torch.Tensor:
    """The index at the middle of each of ``parts`` equal bins of ``range(size)``."""
    return ((torch.arange(parts) * 2 + 1) * size) // (2 * parts)
