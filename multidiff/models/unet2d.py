"""ADM / DDPM-style U-Net for images: net(x_t, t, y=None, concat=None) -> raw prediction.

Encoder levels at image_size / 2**i with base_channels * channel_mult[i] channels, each
num_res_blocks ResBlocks (+ self-attention where the map size is in attention_resolutions),
a ResBlock-attention-ResBlock middle, and a mirrored decoder fed by concatenated skips.
The timestep (fractional t, fp32 sinusoid) and optional class embedding are summed and
injected into every ResBlock by scale-shift norm. Built from multidiff.nn, it runs in
channels_last + bf16 autocast without any layout conversion.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import check_concat, check_labels, check_timesteps
from ..nn import (Downsample, LabelEmbedding, ResBlock, SelfAttention, TimestepEmbedding, Upsample, check_class_dropout,
                  conv_nd, group_norm, zero_)


@dataclass
class UNet2DConfig:
    """The [model] section of an image recipe's config.toml."""
    in_channels: int = 1
    out_channels: int = 0                  # 0 = same as in_channels
    base_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [8])   # map sizes (px) with attention
    num_heads: int = 4
    dropout: float = 0.1
    num_classes: int = 0                   # > 0: class-conditional; label num_classes is the null label
    class_dropout: float = 0.1             # training only: probability of replacing y by the null label
    extra_in_channels: int = 0             # channels concatenated to x_t (e.g. mask + masked image)
    image_size: int = 32
    norm_groups: int = 32
    scale_shift_norm: bool = True


class _Block(nn.Module):
    """A ResBlock, optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet2D(nn.Module):
    def __init__(self, cfg: UNet2DConfig):
        super().__init__()
        self.cfg = cfg = check_unet_config(cfg)
        ch0 = cfg.base_channels
        emb_dim = 4 * ch0
        self.time_embed = TimestepEmbedding(emb_dim, freq_dim=max(2, ch0 // 2 * 2))
        self.label_embed = LabelEmbedding(cfg.num_classes, emb_dim, cfg.class_dropout) \
            if cfg.num_classes > 0 else None

        def res(i, o):
            return ResBlock(i, o, emb_dim, dims=2, dropout=cfg.dropout, scale_shift_norm=cfg.scale_shift_norm,
                            norm_groups=cfg.norm_groups)

        def attn(c, size):
            return SelfAttention(c, cfg.num_heads, cfg.norm_groups) if size in cfg.attention_resolutions else None

        self.input_conv = conv_nd(2, cfg.in_channels + cfg.extra_in_channels, ch0, 3)
        self.down = nn.ModuleList()
        skips, ch, size = [ch0], ch0, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Block(res(ch, ch0 * mult), attn(ch0 * mult, size)))
                ch = ch0 * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                size //= 2
        self.mid = nn.ModuleList([_Block(res(ch, ch), SelfAttention(ch, cfg.num_heads, cfg.norm_groups)),
                                  _Block(res(ch, ch), None)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                self.up.append(_Block(res(ch + skips.pop(), ch0 * mult), attn(ch0 * mult, size)))
                ch = ch0 * mult
            if level > 0:
                self.up.append(Upsample(ch))
                size *= 2
        self.out_norm = group_norm(ch, cfg.norm_groups)
        self.out_conv = zero_(conv_nd(2, ch, cfg.out_channels or cfg.in_channels, 3))

    def middle_block(self) -> torch.nn.Module:
        """The bottleneck's last block: what a feature discriminator reads (nn/discriminator.py)."""
        return self.mid[-1]

    @property
    def null_label(self) -> int:
        """The label index meaning 'no class' (classifier-free guidance); -1 for an unconditional model."""
        return self.label_embed.null_label if self.label_embed is not None else -1

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        x_dtype = x.dtype
        t = self._check_inputs(x, t, y, concat)
        emb = self.time_embed(t)
        if self.label_embed is not None:  # y=None: the null label; class dropout in training
            emb = emb + self.label_embed.embed(y, x.shape[0], x.device, cfg.class_dropout).to(emb.dtype)
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        h = self.input_conv(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, _Block) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, _Block):
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = block(h)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return out.to(x_dtype)

    def _check_inputs(self, x, t, y, concat) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim != 4:
            raise ValueError(f"UNet2D takes images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != cfg.in_channels:
            raise ValueError(f"UNet2D expected {cfg.in_channels} input channels, got {C} (shape {tuple(x.shape)}); "
                             f"set [model] in_channels = {C} to train on this data")
        if H != cfg.image_size or W != cfg.image_size:
            raise ValueError(f"UNet2D expected {cfg.image_size}x{cfg.image_size} images, got {H}x{W}; "
                             f"set [model] image_size = {H} (square images) or resize the data")
        t = check_timesteps(t, B, x.device)
        check_labels(y, B, cfg.num_classes, "UNet2D")
        check_concat(concat, (B, cfg.extra_in_channels, H, W), cfg.extra_in_channels, "UNet2D", "e.g. mask + masked image")
        return t.to(torch.float32)


def check_unet_config(cfg, extra_positive: tuple[str, ...] = ()):
    """A validated copy of a U-Net config (UNet2DConfig, or UNet3DConfig with extra_positive=("frames",)),
    lists as lists of ints, or one ValueError naming the [model] key to change."""
    cfg = replace(cfg, channel_mult=[int(m) for m in cfg.channel_mult],
                  attention_resolutions=[int(r) for r in cfg.attention_resolutions])
    levels = len(cfg.channel_mult)
    if levels < 1 or any(int(m) <= 0 for m in cfg.channel_mult):
        raise ValueError(f"[model] channel_mult must be a non-empty list of positive ints, got {cfg.channel_mult}")
    for key in ("in_channels", "base_channels", "image_size", "norm_groups", "num_heads", *extra_positive):
        if int(getattr(cfg, key)) <= 0:
            raise ValueError(f"[model] {key} must be positive, got {getattr(cfg, key)}")
    for key in ("out_channels", "num_res_blocks", "num_classes", "extra_in_channels"):
        if int(getattr(cfg, key)) < 0:
            raise ValueError(f"[model] {key} must be >= 0, got {getattr(cfg, key)}")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise ValueError(f"[model] dropout must be in [0, 1), got {cfg.dropout}")
    check_class_dropout(cfg.class_dropout)
    factor = 2 ** (levels - 1)
    if cfg.image_size % factor:
        raise ValueError(f"[model] image_size = {cfg.image_size} is not divisible by 2**(len(channel_mult)-1) = "
                         f"{factor}; use an image_size that is a multiple of {factor} or fewer channel_mult levels")
    for mult in cfg.channel_mult:
        c = cfg.base_channels * mult
        if c % cfg.norm_groups:
            raise ValueError(f"channels {c} (base_channels {cfg.base_channels} x channel_mult {mult}) are not "
                             f"divisible by [model] norm_groups = {cfg.norm_groups}; "
                             "change base_channels or norm_groups")
    sizes = [cfg.image_size // 2**i for i in range(levels)]
    for size, mult in zip(sizes, cfg.channel_mult):
        c = cfg.base_channels * mult
        if (size in cfg.attention_resolutions or size == sizes[-1]) and c % cfg.num_heads:
            raise ValueError(f"channels {c} at {size}px are not divisible by [model] num_heads = {cfg.num_heads}")
    bad = [r for r in cfg.attention_resolutions if r not in sizes]
    if bad:
        raise ValueError(f"[model] attention_resolutions {bad} match no feature-map size; the sizes are {sizes}")
    return cfg
