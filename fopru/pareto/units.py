"""Units chosen for the numbers shown: FLOPs as MFLOPs, GFLOPs or TFLOPs, whichever reads without leading zeros."""

from __future__ import annotations

from collections.abc import Iterable

#: (FLOPs per unit, name), largest first.
FLOPS_UNITS: tuple[tuple[float, str], ...] = ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs"))


def flops_unit(tflops: Iterable[float]) -> tuple[float, str]:
    """The factor turning TFLOPs into the largest unit in which the largest of ``tflops`` is at least 1, and that
    unit's name (``(1000.0, "GFLOPs")`` for 0.00055 TFLOPs); FLOPs themselves below 1 kFLOP."""
    largest = max((value for value in tflops if value == value), default=0.0) * 1e12  # NaN != NaN: left out
    for size, name in FLOPS_UNITS:
        if largest >= size:
            return 1e12 / size, name
    return 1e12, "FLOPs"


def format_flops(tflops: float) -> str:
    """``tflops`` in its own unit with three significant digits, e.g. ``551 MFLOPs``."""
    factor, name = flops_unit([tflops])
    return f"{tflops * factor:.3g} {name}"
