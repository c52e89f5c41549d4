"""Efficiency accounting: analytic FLOPs per component, in the convention of torch's FlopCounterMode."""

from fopru.efficiency.counter import counted_flops
from fopru.efficiency.flops import (
    FlopsBreakdown,
    decode_flops,
    llava_flops,
    pre_llm_equivalent,
    prefill_flops,
    projector_flops,
    qwen2_vl_flops,
    ranking_flops,
    staged_decode_flops,
    staged_prefill_flops,
    vision_flops,
    with_layer_tokens,
)

__all__ = [
    "FlopsBreakdown",
    "counted_flops",
    "decode_flops",
    "llava_flops",
    "pre_llm_equivalent",
    "prefill_flops",
    "projector_flops",
    "qwen2_vl_flops",
    "ranking_flops",
    "staged_decode_flops",
    "staged_prefill_flops",
    "vision_flops",
    "with_layer_tokens",
]
