"""The text encoder and the duration predictor (Glow-TTS / Grad-TTS / Matcha-TTS shape): symbol
embeddings, a convolutional prenet, transformer layers with rotary positions, a projection to the
per-token mel mean mu_x, and a duration predictor on the (detached) encoding."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of [B, C, T], frame by frame (so padding never changes a frame)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of [B, H, T, D] queries or keys, positions 0..T-1."""
    B, H, T, D = x.shape
    half = D // 2
    freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * (-math.log(10000.0) / half))
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freqs[None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    return torch.cat([out, x[..., 2 * half:]], -1) if D % 2 else out


class MaskedAttention(nn.Module):
    """Multi-head self-attention over [B, C, T] that never looks at padded frames."""

    def __init__(self, channels: int, heads: int, dropout: float = 0.0, positions: bool = True):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.heads, self.dropout, self.positions = heads, dropout, positions
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, x, mask):
        B, C, T = x.shape
        q, k, v = self.qkv(x).reshape(B, 3, self.heads, C // self.heads, T).transpose(-1, -2).unbind(1)
        if self.positions:
            q, k = rotary(q), rotary(k)
        keep = mask.bool().reshape(B, 1, 1, T)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0)
        return self.out(h.transpose(-1, -2).reshape(B, C, T))


class EncoderLayer(nn.Module):
    def __init__(self, channels: int, heads: int, ffn: int, kernel: int, dropout: float):
        super().__init__()
        self.attn = MaskedAttention(channels, heads, dropout)
        self.norm1, self.norm2 = ChannelNorm(channels), ChannelNorm(channels)
        self.ff1 = nn.Conv1d(channels, ffn, kernel, padding=kernel // 2)
        self.ff2 = nn.Conv1d(ffn, channels, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = self.norm1(x + self.drop(self.attn(x, mask))) * mask
        h = self.ff2(self.drop(F.relu(self.ff1(x * mask))) * mask)
        return self.norm2(x + self.drop(h)) * mask


class ConvPrenet(nn.Module):
    """Residual stack of conv -> ReLU -> norm -> dropout (Glow-TTS's ConvReluNorm)."""

    def __init__(self, channels: int, layers: int, kernel: int = 5, dropout: float = 0.5):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=kernel // 2) for _ in range(layers))
        self.norms = nn.ModuleList(ChannelNorm(channels) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, mask):
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = self.drop(F.relu(norm(conv(h * mask))))
        return (x + self.proj(h)) * mask


class DurationPredictor(nn.Module):
    """Log-duration of each token from its (detached) encoding: two conv -> ReLU -> norm -> dropout."""

    def __init__(self, in_channels: int, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.norm1, self.norm2 = ChannelNorm(channels), ChannelNorm(channels)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Conv1d(channels, 1, 1)

    def forward(self, x, mask):
        h = self.drop(self.norm1(F.relu(self.conv1(x * mask))))
        h = self.drop(self.norm2(F.relu(self.conv2(h * mask))))
        return self.proj(h * mask)[:, 0] * mask[:, 0]


class TextEncoder(nn.Module):
    """ids [B, T_x] -> (hidden [B, C, T_x], mu_x [B, n_mels, T_x], log-durations [B, T_x], mask [B, 1, T_x])."""

    def __init__(self, n_symbols: int, n_mels: int, channels: int, layers: int, heads: int, ffn: int, kernel: int,
                 prenet_layers: int, dropout: float, speaker_dim: int, duration_channels: int,
                 duration_kernel: int, duration_dropout: float):
        super().__init__()
        self.channels = channels
        self.emb = nn.Embedding(n_symbols, channels)
        nn.init.normal_(self.emb.weight, 0.0, channels ** -0.5)
        self.prenet = ConvPrenet(channels, prenet_layers) if prenet_layers else None
        self.layers = nn.ModuleList(EncoderLayer(channels, heads, ffn, kernel, dropout) for _ in range(layers))
        self.speaker = nn.Conv1d(speaker_dim, channels, 1) if speaker_dim else None
        self.proj_m = nn.Conv1d(channels, n_mels, 1)
        self.duration = DurationPredictor(channels, duration_channels, duration_kernel, duration_dropout)

    def forward(self, ids, mask, spk_emb=None):
        x = self.emb(ids).transpose(1, 2) * math.sqrt(self.channels) * mask
        if self.prenet is not None:
            x = self.prenet(x, mask)
        for layer in self.layers:
            x = layer(x, mask)
        if self.speaker is not None:
            x = (x + self.speaker(spk_emb[:, :, None])) * mask
        mu = self.proj_m(x) * mask
        logw = self.duration(x.detach(), mask)
        return x, mu, logw
