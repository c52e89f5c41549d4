"""Efficiency accounting: analytic FLOPs per component, in the convention of torch's FlopCounterMode."""

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
    "decode_flops",
    "llava_flops",
    "prefill_flops",
    "projector_flops",
    "qwen2_vl_flops",
    "vision_flops",
]
