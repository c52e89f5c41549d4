"""Counting FLOPs of real runs with torch's FlopCounterMode, the reference the analytic formulas are checked against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

# torch 2.13 has no formula for the CPU SDPA kernel and counts it as 0 (pytorch/pytorch#195460, fixed upstream by
# #195801); it gets the formula of the CUDA SDPA kernels, so CPU counts equal what the counter reports on a GPU.
_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *_: Any, **__: Any) -> int:
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def counted_flops(run: Callable[[], object]) -> int:
    """FLOPs that ``FlopCounterMode`` counts while ``run()`` executes (under ``torch.no_grad``)."""
    mapping = {} if _CPU_SDPA in flop_registry else {_CPU_SDPA: _cpu_sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return int(counter.get_total_flops())
