"""Temporal blocks for a factorised space-time network that keeps its frames as the batch axis.

Activations are [B*T, C, *S]: clip b's frame t is row b*T + t, so every spatial layer (conv,
GroupNorm, spatial attention) works on one frame at a time. For a channels_last(_3d) tensor
the memory order is [B, T, *S, C], and the clip views used here ([B, C, T, 1, N] for a conv
over time, [B, T, N, C] tokens for attention) are free views of it: no layout copy.

`independent` is an optional bool [B, T] (True = a still image appended to the clip for joint
image-video training): such a frame neither reads from nor writes to any other frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_nd, group_norm, zero_


def clip_view(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B*T, C, *S] -> [B, C, T, 1, N] (N = prod(S)); a free view when x is channels-last dense."""
    BT, C = x.shape[:2]
    if frames <= 0 or BT % frames:
        raise ValueError(f"a batch of {BT} frames does not split into clips of {frames} frames")
    return x.reshape(BT // frames, frames, C, 1, -1).transpose(1, 2)


def frames_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of clip_view: [B, C, T, 1, N] -> like.shape ([B*T, C, *S])."""
    return v.transpose(1, 2).reshape(like.shape)


def check_independent(independent: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor | None:
    """A bool [B, T] mask, or None when it marks no frame (the fast path)."""
    if independent is None:
        return None
    if independent.dtype != torch.bool or tuple(independent.shape) != (batch, frames):
        raise ValueError(f"frame_mask must be a bool tensor of shape [B, T] = [{batch}, {frames}] "
                         f"(True = an independent image), got {independent.dtype} {tuple(independent.shape)}")
    return independent if bool(independent.any()) else None


class TemporalConv(nn.Module):
    """x + conv_t(x): a (k, 1, 1) conv over time as a residual branch, zero-initialised (identity at init).

    The identity is folded into the centre tap of the kernel (the weight is W + I at run time),
    so the residual costs no extra pass over the activation. An independent frame passes through
    unchanged, and the other frames see zeros in its place (as at the clip's ends)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"temporal kernel_size must be odd, got {kernel_size}")
        self.conv = zero_(conv_nd(3, channels, channels, (kernel_size, 1, 1)))
        eye = torch.zeros(channels, channels, kernel_size, 1, 1)
        eye[:, :, kernel_size // 2, 0, 0] = torch.eye(channels)
        self.register_buffer("eye", eye, persistent=False)

    def forward(self, x: torch.Tensor, frames: int, independent: torch.Tensor | None = None) -> torch.Tensor:
        v = clip_view(x, frames)                                           # [B, C, T, 1, N]
        w = self.conv.weight + self.eye
        if independent is None:
            y = F.conv3d(v, w, self.conv.bias, padding=self.conv.padding)
        else:
            ind = independent[:, None, :, None, None]                      # [B, 1, T, 1, 1]
            y = F.conv3d(v.masked_fill(ind, 0), w, self.conv.bias, padding=self.conv.padding)
            y = torch.where(ind, v.to(y.dtype), y)
        return frames_view(y, x)


class TemporalAttention(nn.Module):
    """Multi-head self-attention along time at every spatial position, with a learned relative
    position bias per head: one scalar per offset j - i, clipped to [-max_distance, max_distance],
    so a model trained on short clips runs on longer ones (offsets beyond it share the last bias).

    Input and output [B*T, C, *S] with T = `frames`; GroupNorm statistics are per frame."""

    def __init__(self, channels: int, num_heads: int = 4, norm_groups: int = 32, max_distance: int = 16):
        super().__init__()
        if num_heads <= 0 or channels % num_heads:
            raise ValueError(f"temporal attention channels {channels} are not divisible by num_heads {num_heads}")
        if max_distance < 1:
            raise ValueError(f"max_distance must be >= 1, got {max_distance}")
        self.channels, self.num_heads, self.max_distance = channels, num_heads, max_distance
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))

    def bias(self, frames: int, independent: torch.Tensor | None = None) -> torch.Tensor:
        """[1 or B, heads, T, T] fp32 additive attention bias (query i, key j)."""
        pos = torch.arange(frames, device=self.rel_bias.device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        bias = self.rel_bias.float()[:, offset][None]                       # [1, H, T, T]
        if independent is not None:  # video frames attend to video frames; an independent frame to itself
            video = ~independent
            allowed = (video[:, :, None] & video[:, None, :]) | torch.eye(frames, dtype=torch.bool,
                                                                            device=video.device)
            bias = bias.masked_fill(~allowed[:, None], float("-inf"))
        return bias

    def forward(self, x: torch.Tensor, frames: int, independent: torch.Tensor | None = None) -> torch.Tensor:
        BT, C, *spatial = x.shape
        B, T, H = BT // frames, frames, self.num_heads
        if BT % frames:
            raise ValueError(f"a batch of {BT} frames does not split into clips of {frames} frames")
        d = C // H
        tokens = self.norm(x).movedim(1, -1).reshape(B, T, -1, C)          # [B, T, N, C], free if channels-last
        N = tokens.shape[2]
        qkv = self.qkv(tokens).view(B, T, N, 3, H, d)
        # per (clip, position, head) sequences of T tokens: small T, so explicit batched matmuls
        q, k, v = (qkv.select(3, i).permute(0, 2, 3, 1, 4).reshape(B * N * H, T, d) for i in range(3))
        s = torch.bmm(q, k.transpose(1, 2)).view(B, N, H, T, T)
        s = torch.add(self.bias(T, independent)[:, None], s, alpha=d**-0.5)  # fp32 [B, N, H, T, T]
        w = s.softmax(-1).to(v.dtype).view(B * N * H, T, T)
        h = torch.bmm(w, v).view(B, N, H, T, d).permute(0, 3, 1, 2, 4).reshape(B, T, N, C)
        h = self.proj(h)                                                    # [B, T, N, C]
        return x + h.reshape(BT, *spatial, C).movedim(-1, 1)
