"""The ADM residual block, for any number of spatial dims.

    h = conv1(SiLU(GN(x)))
    h = GN(h) * (1 + scale) + shift        (scale_shift_norm; else GN(h + proj(emb)))
    h = conv2(dropout(SiLU(h)))            conv2 starts at zero: the block starts as identity
    out = skip(x) + h                      skip = 1x1 conv when channels change

The convs are built by `conv(in_ch, out_ch)`, so a 2D U-Net, a factorised space-time
video U-Net and a dilated 1D DiffWave layer can share the same block. `emb` is whatever
conditioning vector the model builds (timestep embedding, plus a class embedding).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_nd, group_norm, zero_
from .layers import dropout as fast_dropout


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int | None = None, emb_dim: int | None = None, *,
                 dims: int = 2, kernel_size=3, conv: Callable[[int, int], nn.Module] | None = None,
                 dropout: float = 0.0, scale_shift_norm: bool = True, norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        make_conv = conv or (lambda i, o: conv_nd(dims, i, o, kernel_size))
        self.in_channels, self.out_channels, self.dims = in_channels, out_channels, dims
        self.scale_shift_norm, self.dropout = scale_shift_norm, float(dropout)
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = make_conv(in_channels, out_channels)
        self.emb = nn.Linear(emb_dim, 2 * out_channels if scale_shift_norm else out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv2 = zero_(make_conv(out_channels, out_channels))
        self.skip = nn.Identity() if in_channels == out_channels else conv_nd(dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is None:
            h = self.norm2(h)
        elif emb is None:
            raise ValueError("this ResBlock was built with emb_dim and needs an embedding")
        elif self.scale_shift_norm:  # folded into the norm's own multiply-add
            scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1)
            h = self.norm2(h, scale, shift)
        else:
            e = self.emb(F.silu(emb)).to(h.dtype)
            h = self.norm2(h + e.reshape(*e.shape, *([1] * (h.ndim - 2))))
        h = fast_dropout(F.silu(h), self.dropout, self.training)
        return self.skip(x) + self.conv2(h)
