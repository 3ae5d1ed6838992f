"""GroupNorm that is fast on channels_last tensors, with ADM's scale-shift folded in.

PyTorch's CPU group_norm kernel is slow on channels_last bf16 (fwd+bwd measured 3-6x
slower than this on 2 Zen4 cores, and ~18x slower than its own NCHW kernel), and the
scale-shift `GN(x) * (1 + scale) + shift` costs another full pass. On a channels_last
[B, C, *S] tensor the group statistics are per-channel sums over a free [B, N, C] view,
and normalisation, affine and scale-shift fold into ONE per-(sample, channel)
multiply-add. The hand-written backward has the same shape: two per-channel sums and two
multiply-adds. Other layouts (NCHW, 1-D [B, C, L]) and torch.compile use PyTorch's ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _tokens(x: torch.Tensor) -> torch.Tensor | None:
    """[B, C, *S] -> free [B, N, C] view when x is channels-last dense, else None."""
    if x.ndim < 3 or x.shape[1] == 1 or x.stride(1) != 1:
        return None
    v = x.movedim(1, -1)
    return v.view(x.shape[0], -1, x.shape[1]) if v.is_contiguous() else None


def _expand(v: torch.Tensor, cg: int) -> torch.Tensor:
    """[B, G] -> [B, G * cg]: a group's value for each of its channels."""
    return v.unsqueeze(-1).expand(*v.shape, cg).flatten(1)


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Statistics and coefficients: fp32 for bf16/fp16/fp32 inputs, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


class _GroupNormCL(torch.autograd.Function):
    """y = (x - mean_g) * rstd_g * w[b, c] + b[b, c] for channels-last x; w, b are [B, C].

    Everything runs on d = x - m0, x centred on a first estimate m0 of its group mean (in
    x's dtype): sums over d carry no cancellation, so their bf16-rounded results are as good
    as fp32 ones, and y = a d + (b - a (mean - m0)) stays accurate even when |mean| >> std.
    No fp32 copy of the activation is made, and d (not x) is kept for the backward."""

    @staticmethod
    def forward(ctx, x, w, b, groups: int, eps: float):
        B, C = x.shape[:2]
        cg, acc = C // groups, _acc(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            xv = _tokens(x)                                                  # [B, N, C]

            def group_mean(v):                                               # [B, N, C] -> [B, G]
                return v.sum(1).to(acc).view(B, groups, cg).sum(-1) / (v.shape[1] * cg)

            # m0 only has to be near the mean (to remove cancellation): ~64 tokens are plenty
            m0 = _expand(group_mean(xv[:, ::max(1, xv.shape[1] // 64)]), cg).to(x.dtype)   # [B, C]
            d = xv - m0[:, None]
            delta = group_mean(d)                                            # mean - m0
            rstd = (group_mean(d.square()) - delta.square()).clamp_min_(0).add_(eps).rsqrt()
            a = _expand(rstd, cg) * w.to(acc)                                # [B, C]
            shift = b.to(acc) - _expand(delta, cg) * a
            y = torch.addcmul(shift[:, None].to(x.dtype), d, a[:, None].to(x.dtype))
        ctx.save_for_backward(d, w, delta, rstd)
        ctx.groups = groups
        return y.view(B, *x.shape[2:], C).movedim(-1, 1)                     # channels-last like x

    @staticmethod
    def backward(ctx, gy):
        d, w, delta, rstd = ctx.saved_tensors
        B, N, C = d.shape
        cg, acc = C // ctx.groups, rstd.dtype
        n = N * cg
        gv = gy.movedim(1, -1).reshape(d.shape)
        delta_c, rstd_c, wf = _expand(delta, cg), _expand(rstd, cg), w.to(acc)
        s1 = gv.sum(1).to(acc)                                               # sum dy             [B, C]
        s2 = (gv * d).sum(1).to(acc) - delta_c * s1                          # sum dy (x - mean)  [B, C]
        dw = rstd_c * s2                                                     # sum dy * xhat
        gx = None
        if ctx.needs_input_grad[0]:
            t1 = (wf * s1).view(B, -1, cg).sum(-1)                           # group sums of dxhat
            t2 = (wf * dw).view(B, -1, cg).sum(-1)                           # ... and of dxhat * xhat
            # dx = p dy + q (x - mean) + r = p dy + q d + (r - q delta)
            q = _expand(-rstd.square() * t2 / n, cg)
            r = _expand(-rstd * t1 / n, cg) - q * delta_c
            gx = torch.addcmul(r[:, None].to(d.dtype), d, q[:, None].to(d.dtype))
            gx.addcmul_(gv, (rstd_c * wf)[:, None].to(d.dtype))
            gx = gx.view(B, *gy.shape[2:], C).movedim(-1, 1)
        return gx, dw.to(w.dtype), s1.to(w.dtype), None, None


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state_dict) + optional per-sample scale/shift [B, C]:
    forward(x, scale, shift) = GN(x) * (1 + scale) + shift, in x's dtype."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        B, C = x.shape[:2]
        if C != self.num_channels:
            raise ValueError(f"GroupNorm expected {self.num_channels} channels, got {C}")
        if (scale is None) != (shift is None):
            raise ValueError("GroupNorm needs both scale and shift, or neither")
        w, b = self.weight, self.bias
        if _tokens(x) is None or x.numel() == 0 or torch.compiler.is_compiling():
            # NCHW / 1-D layouts, or under torch.compile (which fuses the plain ops itself)
            if w is not None and x.dtype not in (torch.bfloat16, torch.float16):  # mixed bf16/fp32 is native
                w, b = w.to(x.dtype), b.to(x.dtype)
            y = F.group_norm(x, self.num_groups, w, b, self.eps)
            if scale is not None:
                shape = (B, C) + (1,) * (x.ndim - 2)
                y = torch.addcmul(shift.reshape(shape).to(y.dtype), y, (1 + scale).reshape(shape).to(y.dtype))
            return y
        acc = _acc(x.dtype)
        w = w.to(acc).expand(B, C) if w is not None else x.new_ones(B, C, dtype=acc)
        b = b.to(acc).expand(B, C) if b is not None else x.new_zeros(B, C, dtype=acc)
        if scale is not None:  # GN(x) w (1 + s) + b (1 + s) + shift: still one multiply-add
            scale, shift = 1 + scale.to(acc), shift.to(acc)
            w, b = w * scale, torch.addcmul(shift, b, scale)
        return _GroupNormCL.apply(x, w, b, self.num_groups, self.eps)
