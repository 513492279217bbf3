"""Counting multiply-accumulates (MACs) of SAT3D with PyTorch's ``FlopCounterMode``.

PyTorch's counter has no formula for the CPU kernel of ``scaled_dot_product_attention``; one is
registered here so that window attention is counted on every device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

__all__ = ["count_gmac"]

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


try:  # registering twice raises; the registry is process-wide
    register_flop_formula(_CPU_SDPA, get_raw=False)(_cpu_sdpa_flops)
except Exception:  # pragma: no cover - already registered
    pass


def count_gmac(fn: Callable[[], object]) -> float:
    """Run ``fn()`` under a FLOP counter and return giga-MACs (FLOPs / 2 / 1e9)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops() / 2e9
