"""Precision policy: bf16 autocast (fp32 master weights) where the hardware is fast at it."""
from __future__ import annotations

import contextlib

import torch


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions/matmuls run 2-20x faster than fp32 there."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True when autocast to bf16 should be on for `precision` in {auto, bf16, fp32}."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if precision != "auto":
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
