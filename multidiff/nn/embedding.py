"""Timestep embeddings: a sinusoid of FRACTIONAL t, then a small MLP, both kept in fp32.

t is a float tensor [B] of (possibly fractional) training timesteps. The sinusoid is
computed with autocast off: in bf16, t = 999.25 would round to 1000 and nearby steps
would collapse onto the same embedding.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] float timesteps -> [B, dim] fp32 features [cos(t f_i), sin(t f_i)], f_i geometric in [1/max_period, 1]."""
    if dim < 2 or dim % 2:
        raise ValueError(f"timestep embedding dim must be an even number >= 2, got {dim}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        raise ValueError(f"timesteps t must be a [B] tensor, got shape {tuple(t.shape)}")
    half = dim // 2
    with torch.autocast(t.device.type, enabled=False):
        t = t.to(torch.float32)
        freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / half))
        args = t[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimestepEmbedding(nn.Module):
    """Sinusoid(t) -> Linear -> SiLU -> Linear, in fp32 whatever the autocast state (it is tiny)."""

    def __init__(self, out_dim: int, freq_dim: int | None = None, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = freq_dim or out_dim // 4 * 2 or 2
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim, self.max_period)
        with torch.autocast(emb.device.type, enabled=False):
            return self.mlp(emb.to(self.mlp[0].weight.dtype))
