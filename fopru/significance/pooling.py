"""Pooling patch significance onto the tokens of a spatial merger (Qwen2-VL's 2x2 patch merger)."""

from __future__ import annotations

from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.layout import Grid


def pool_merged(
    significance: torch.Tensor,
    grids: tuple[Grid, ...],
    merge: int,
    order: Literal["raster", "blocks"] = "raster",
) -> torch.Tensor:
    """Sum (B, P) patch significance over each ``merge x merge`` block: (B, P / merge^2).

    ``grids`` are the patch grids before merging; each must divide by ``merge``. ``order`` is how the patches of a
    grid are sequenced: ``raster`` (row by row) or ``blocks`` (each merge block contiguous, block after block in
    raster order, as Qwen2-VL's image processor emits them). The output is in the merged tokens' raster order.
    """
    if order not in ("raster", "blocks"):
        raise ConfigError(f"order={order!r} is not one of ['raster', 'blocks']")
    batch = significance.shape[0]
    pooled = []
    offset = 0
    for rows, cols in grids:
        if rows % merge or cols % merge:
            raise ConfigError(f"grid {rows}x{cols} does not divide by the merge factor {merge}")
        span = significance[:, offset : offset + rows * cols]
        if order == "blocks":
            pooled.append(span.reshape(batch, -1, merge * merge).sum(dim=2))
        else:
            block = span.reshape(batch, rows // merge, merge, cols // merge, merge)
            pooled.append(block.sum(dim=(2, 4)).reshape(batch, -1))
        offset += rows * cols
    if offset != significance.shape[1]:
        raise ConfigError(f"grids {grids} cover {offset} patches but significance has {significance.shape[1]}")
    return torch.cat(pooled, dim=1)
