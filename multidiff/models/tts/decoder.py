"""The mel decoder: a small 1-D U-Net over mel frames (Matcha-TTS's shape) taking the noisy mel
x_t, the aligned text encoding mu (concatenated as channels; with speakers, their embedding too) and
the noise level, and returning the raw prediction the [diffusion] objective defines (the velocity
for flow matching). Per-frame channel norms and masked attention: padding never changes a frame."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...nn import TimestepEmbedding
from .encoder import ChannelNorm, MaskedAttention


class ResBlock1D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = ChannelNorm(cin), ChannelNorm(cout)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.emb = nn.Linear(temb, cout)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, mask, emb):
        h = self.conv1(F.silu(self.norm1(x)) * mask) + self.emb(emb)[:, :, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))) * mask)
        return (self.skip(x) + h) * mask


class AttnBlock1D(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.attn = MaskedAttention(channels, heads, positions=True)
        self.ff = nn.Sequential(nn.Conv1d(channels, 2 * channels, 1), nn.GELU(), nn.Conv1d(2 * channels, channels, 1))
        self.norm2 = ChannelNorm(channels)

    def forward(self, x, mask):
        x = (x + self.attn(self.norm(x) * mask, mask)) * mask
        return (x + self.ff(self.norm2(x))) * mask


class MelDecoder(nn.Module):
    def __init__(self, n_mels: int, cond_channels: int, channels: list[int], blocks: int, heads: int,
                 dropout: float):
        super().__init__()
        temb = 4 * channels[0]
        self.levels = len(channels)
        self.time = TimestepEmbedding(temb)
        self.inp = nn.Conv1d(n_mels + cond_channels, channels[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c, skips = channels[0], []
        for i, ch in enumerate(channels):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock1D(c, ch, temb, dropout))
                c = ch
                if heads:
                    level.append(AttnBlock1D(c, heads))
            self.down.append(level)
            skips.append(c)
            self.downsample.append(nn.Conv1d(c, c, 3, stride=2, padding=1) if i < self.levels - 1 else nn.Identity())
        self.mid = nn.ModuleList([ResBlock1D(c, c, temb, dropout)] + ([AttnBlock1D(c, heads)] if heads else []) +
                                 [ResBlock1D(c, c, temb, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            level = nn.ModuleList()
            for b in range(blocks):
                level.append(ResBlock1D(c + (skips[i] if b == 0 else 0), ch, temb, dropout))
                c = ch
                if heads:
                    level.append(AttnBlock1D(c, heads))
            self.up.append(level)
            self.upsample.append(nn.Conv1d(c, channels[i - 1], 3, padding=1) if i > 0 else nn.Identity())
            if i > 0:
                c = channels[i - 1]
        self.norm_out = ChannelNorm(c)
        self.out = nn.Conv1d(c, n_mels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _run(level, h, mask, emb):
        for block in level:
            h = block(h, mask, emb) if isinstance(block, ResBlock1D) else block(h, mask)
        return h

    def forward(self, x, c_noise, cond, mask):
        """x [B, n_mels, T], c_noise [B], cond [B, cond_channels, T], mask [B, 1, T] -> [B, n_mels, T]."""
        T = x.shape[-1]
        mult = 2 ** (self.levels - 1)
        pad = (-T) % mult
        if pad:
            x, cond, mask = (F.pad(v, (0, pad)) for v in (x, cond, mask))
        emb = self.time(c_noise)
        masks = [mask]
        for _ in range(self.levels - 1):
            masks.append(masks[-1][:, :, ::2])
        h = self.inp(torch.cat([x, cond], 1) * mask) * mask
        skips = []
        for i, (level, down) in enumerate(zip(self.down, self.downsample)):
            h = self._run(level, h, masks[i], emb)
            skips.append(h)
            if i < self.levels - 1:
                h = down(h * masks[i]) * masks[i + 1]
        h = self._run(self.mid, h, masks[-1], emb)
        for k, (level, up) in enumerate(zip(self.up, self.upsample)):
            i = self.levels - 1 - k
            h = self._run(level, torch.cat([h, skips[i]], 1), masks[i], emb)
            if i > 0:
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest")) * masks[i - 1]
        out = self.out(F.silu(self.norm_out(h)) * masks[0]) * masks[0]
        return out[..., :T]
