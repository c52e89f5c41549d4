"""Efficiency accounting: analytic FLOPs per component, in the convention of torch's FlopCounterMode."""

from fopru.efficiency.counter import counted_flops
from fopru.efficiency.flops import (
    FlopsBreakdown,
    decode_flops,
    llava_flops,
    prefill_flops,
    projector_flops,
    qwen2_vl_flops,
    vision_flops,
)

__all__ = [
    "FlopsBreakdown",
    "counted_flops",
    "decode_flops",
    "llava_flops",
    "prefill_flops",
    "projector_flops",
    "qwen2_vl_flops",
    "vision_flops",
]
