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


class InferenceModel(torch.nn.Module):
    """A trained net ready for sampling: eval mode, the training precision policy, the fast memory
    layout for images and videos, fp32 out (samplers do their arithmetic in fp32). Gradients follow
    the caller's mode: `sample` runs without them, and reconstruction guidance turns them on for
    its own backward pass through the net."""

    def __init__(self, model: torch.nn.Module, device: torch.device, bf16: bool):
        super().__init__()
        self.model, self.device, self.bf16 = model.eval().to(device), device, bf16

    def forward(self, x, t, **cond):
        x = x.to(self.device, torch.float32)
        if x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        with autocast(self.device, self.bf16):
            out = self.model(x, t.to(self.device), **{k: v.to(self.device) for k, v in cond.items()})
        return out.float()
