"""DiffWave's training path: the module path's function and gradients, on a time-major [B*L, C]
layout with one GEMM per layer and a hand-written backward.

The module path (what models/diffwave.py's layers compute, as lmnt writes them) is slow on a CPU
for reasons that have nothing to do with its FLOPs: Conv1d goes through 2-D convolution with
layout copies on each side, every layer runs its own small 80 -> 2C conditioner conv and sums the
mel's gradient back, the gate's sigmoid and tanh run on strided halves (3-6x slower than on
contiguous memory in bf16), and autograd materialises zero-filled gradients for each slice. Here a
residual layer is:

    hi   = h + e_i                                    (step embedding; zero padding stays zero)
    taps = [hi(t - d) | hi(t) | hi(t + d) | mel_up]   [B*L, 3C + n_mels]
    z    = taps @ W_i + b_i                           (dilated conv and conditioner in one GEMM)
    g    = sigmoid(z_a) * (sigmoid(z_b') - 1/2)       (tanh(b) = 2 sigmoid(2b) - 1: z_b' = 2 z_b)
    o    = g @ (2 Wo) + bo;  h' = (h + o_res) / sqrt 2;  skip' = skip + o_skip

with the factors of 2 folded into the weights outside the Function (autograd carries them to the
parameters), and the backward written out: per layer two GEMMs forward, four backward, and a
handful of elementwise passes. The gate's sigmoid runs in fp32 (bf16-rounded sigmoid(2b) - 1/2
loses tanh(b)'s relative precision near 0). Agrees with autograd on the module path to ~1e-6 in
fp32 (tests/test_diffwave.py); under bf16 autocast the GEMMs and the residual / skip streams are
bf16, as on the module path under autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fast import fill_taps

INV_SQRT2 = 1 / math.sqrt(2.0)


class _ResidualLayer(torch.autograd.Function):
    """(h, skip, up, e, Wd, Wc, b, Wo, bo) -> (h', skip'); h, skip [B, L, C], up [B*L, M] or None,
    e [B, C], Wd [3C, 2C], Wc [M, 2C] or None, b [2C], Wo [C, 2C], bo [2C], all in one dtype."""

    @staticmethod
    def forward(ctx, h, skip, up, e, Wd, Wc, b, Wo, bo, dilation: int):
        B, L, C = h.shape
        taps = h.new_empty(B, L, 3 * C)
        fill_taps(taps, h + e[:, None, :], dilation, C)
        taps2 = taps.view(B * L, 3 * C)
        if up is not None:  # the conditioner as its own GEMM: a K = 3C + M GEMM is 2-3x slower here
            z = torch.addmm(b, up, Wc).addmm_(taps2, Wd)
        else:
            z = torch.addmm(b, taps2, Wd)
        s = z.to(torch.promote_types(h.dtype, torch.float32)).sigmoid_()
        sa, sb = s[:, :C], s[:, C:].sub_(0.5)
        g32 = sa * sb
        # the gate's Jacobian, kept for backward: dg/dz_a = g (1 - sigma_a), dg/dz_b' = sigma_a (1/4 - sb^2)
        jac = torch.empty(B * L, 2, C, dtype=h.dtype, device=h.device)
        jac[:, 0] = g32 - g32 * sa
        jac[:, 1] = sb.square_().neg_().add_(0.25).mul_(sa)
        g = g32.to(h.dtype)
        o = torch.addmm(bo, g, Wo).view(B, L, 2 * C)
        h_next = torch.add(h, o[..., :C]).mul_(INV_SQRT2)
        skip_next = torch.add(skip, o[..., C:])
        ctx.save_for_backward(taps2, up, jac, g, Wd, Wc, Wo)
        ctx.dilation = dilation
        return h_next, skip_next

    @staticmethod
    def backward(ctx, dh_next, dskip_next):
        taps2, up, jac, g, Wd, Wc, Wo = ctx.saved_tensors
        B, L, C = dh_next.shape
        d, dt = ctx.dilation, g.dtype
        dres = (dh_next * INV_SQRT2).to(dt).view(B * L, C)   # o_res's gradient, and h's through the identity
        do = torch.cat([dres, dskip_next.reshape(B * L, C).to(dt)], 1)
        dWo, dbo = g.t() @ do, do.sum(0)
        dz = (jac * (do @ Wo.t()).view(B * L, 1, C)).view(B * L, 2 * C)
        dWd, db = taps2.t() @ dz, dz.sum(0)
        dtaps = (dz @ Wd.t()).view(B, L, 3 * C)
        dhi = dtaps[:, :, C:2 * C].clone()
        if d < L:  # the adjoint of the shifts in fill_taps
            dhi[:, :L - d] += dtaps[:, d:, :C]
            dhi[:, d:] += dtaps[:, :L - d, 2 * C:]
        de = dhi.sum(1, dtype=torch.promote_types(dt, torch.float32)).to(dt)           # e is broadcast over time
        dh = dhi.add_(dres.view(B, L, C))
        dup = dWc = None
        if up is not None:
            dup, dWc = dz @ Wc.t(), up.t() @ dz
        return dh, dskip_next, dup, de, dWd, dWc, db, dWo, dbo, None


def train_forward(model, x: torch.Tensor, emb: torch.Tensor, mel: torch.Tensor | None) -> torch.Tensor:
    """DiffWave.forward with autograd, [B, 1, L] -> [B, 1, L]; `emb` is the step (+ label) embedding."""
    dev = x.device
    wdt = model.input_projection.weight.dtype  # the master weights' (fp32 in training)
    dt = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else wdt
    layers = model.residual_layers
    n, C = len(layers), model.cfg.residual_channels
    B, _, L = x.shape
    with torch.autocast(dev.type, enabled=False):
        filt2 = torch.ones(2 * C, device=dev, dtype=wdt)
        filt2[C:] = 2.0
        Wd = torch.stack([l.dilated_conv.weight for l in layers]).permute(0, 3, 2, 1).reshape(n, 3 * C, 2 * C)
        b = torch.stack([l.dilated_conv.bias for l in layers])
        up, Wc = None, [None] * n
        if mel is not None:
            Wc = torch.stack([l.conditioner_projection.weight[:, :, 0] for l in layers]).transpose(1, 2)
            Wc = (Wc * filt2).to(dt).unbind(0)
            b = b + torch.stack([l.conditioner_projection.bias for l in layers])
            up = model.spectrogram_upsampler(mel.to(wdt)).transpose(1, 2).reshape(B * L, -1).to(dt)
        Wd, b = (Wd * filt2).to(dt).unbind(0), (b * filt2).to(dt).unbind(0)
        Wo = (torch.stack([l.output_projection.weight[:, :, 0] for l in layers]).transpose(1, 2) * 2).to(dt).unbind(0)
        bo = torch.stack([l.output_projection.bias for l in layers]).to(dt).unbind(0)
        Wdp = torch.cat([l.diffusion_projection.weight for l in layers])
        bdp = torch.cat([l.diffusion_projection.bias for l in layers])
        e = F.linear(emb.to(wdt), Wdp, bdp).view(B, n, C).to(dt).unbind(1)
        h = F.relu(x.transpose(1, 2).to(wdt) * model.input_projection.weight[:, 0, 0]
                   + model.input_projection.bias).to(dt)
        skip = torch.zeros_like(h)
        for i, layer in enumerate(layers):
            h, skip = _ResidualLayer.apply(h, skip, up, e[i], Wd[i], Wc[i], b[i], Wo[i], bo[i], layer.dilation)
        P = model.skip_projection
        s = F.relu(F.linear(skip * (1 / math.sqrt(n)), P.weight[:, :, 0].to(dt), P.bias.to(dt)))
        out = F.linear(s.to(wdt), model.output_projection.weight[:, :, 0], model.output_projection.bias)
    return out.transpose(1, 2).to(x.dtype)
