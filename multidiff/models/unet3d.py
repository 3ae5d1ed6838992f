"""Factorised space-time U-Net for video (Ho et al. 2022, Video Diffusion Models):
net(x_t, t, y=None, concat=None, frame_mask=None) -> raw prediction, x_t [B, C, T, H, W].

The UNet2D layout with every 3x3 conv turned into a space-only (1, 3, 3) conv followed by a
residual (3, 1, 1) temporal conv (`temporal_conv`), and, after each spatial attention block
(the attention_resolutions and the middle), a temporal attention block with a relative position
bias (`temporal_attention`), as in the paper. Every spatial layer treats time as a batch axis:
activations are [B*T, C, 1, H, W], so GroupNorm statistics, spatial attention and the
down/upsampling are per frame. For a channels_last_3d tensor that is a free view of
[B, C, T, H, W] (memory order [B, T, H, W, C]), and so are the clip views the temporal layers
take. Fast path on CPU: model.to(memory_format=torch.channels_last_3d) (channels_last is taken to
mean the same) + bf16 autocast; the net then runs channels_last_3d from the first conv on, whatever
the input's layout, with no layout conversion outside the temporal attention's small matmuls.

Joint image-video training (the paper's section 3): frame_mask [B, T] bool, True marks an
independent image appended to the clip. Per-frame norms and spatial layers never mix frames;
temporal attention lets such a frame attend only to itself (and no video frame attend to it),
and temporal convs neither read from it nor write to it, so its output depends on it alone.

The relative position bias is clipped at `frames` - 1 (the training length), so clips of any
length run: offsets beyond the trained ones reuse the farthest trained bias.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import (LabelEmbedding, ResBlock, SelfAttention, TemporalAttention, TemporalConv, TimestepEmbedding, conv_nd,
                  group_norm, zero_)
from ..nn.temporal import check_independent
from .inputs import check_concat, check_labels, check_timesteps
from .unet2d import check_unet_config

MAX_FRAMES = 1024


@dataclass
class UNet3DConfig:
    """The [model] section of a video recipe's config.toml."""
    in_channels: int = 1
    out_channels: int = 0                  # 0 = same as in_channels
    base_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [8])   # map sizes (px) with attention
    temporal_attention: bool = True        # temporal attention after each spatial attention (and in the middle)
    temporal_conv: bool = True             # a residual (3,1,1) conv after each (1,3,3) conv of the res blocks
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int = 0                   # > 0: class-conditional; label num_classes is the null label
    class_dropout: float = 0.1             # training only: probability of replacing y by the null label
    extra_in_channels: int = 0             # channels concatenated to x_t (e.g. known-frame mask + known frames)
    image_size: int = 32
    frames: int = 16                       # training clip length (sets the relative-position range)
    norm_groups: int = 32
    scale_shift_norm: bool = True


class _Clip:
    """The current forward's clip length and independent-frame mask, shared with the factorised
    convs inside the ResBlocks (a ResBlock calls its convs with the activation alone). One model
    instance runs one forward at a time (threads sharing a model need a copy each)."""

    def __init__(self):
        self.frames, self.independent = 0, None


class SpaceTimeConv(nn.Module):
    """(1, 3, 3) conv, then optionally x + (3, 1, 1) conv over time: the convs of the video ResBlocks."""

    def __init__(self, in_channels: int, out_channels: int, clip: _Clip, temporal: bool = True):
        super().__init__()
        self.spatial = conv_nd(3, in_channels, out_channels, (1, 3, 3))
        self.temporal = TemporalConv(out_channels) if temporal else None
        self._clip = clip  # not a submodule: state set by UNet3D.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial(x)
        if self.temporal is None:
            return h
        if self._clip.frames <= 0:
            raise RuntimeError("SpaceTimeConv needs the clip length: call it through UNet3D.forward")
        return self.temporal(h, self._clip.frames, self._clip.independent)


class _Down(nn.Module):
    """Halve H and W (not T): strided (1, 3, 3) conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = conv_nd(3, channels, channels, (1, 3, 3), stride=(1, 2, 2))

    def forward(self, x):
        return self.op(x)


class _Up(nn.Module):
    """Double H and W (not T): nearest repeat, then a (1, 3, 3) conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv_nd(3, channels, channels, (1, 3, 3))

    def forward(self, x):
        # on the [B*T, C, H, W] view: the 2-D nearest kernels keep channels_last in the backward too
        # (upsample_nearest3d_backward returns an NCDHW gradient)
        return self.conv(F.interpolate(x.squeeze(2), scale_factor=2.0, mode="nearest").unsqueeze(2))


class _Block(nn.Module):
    """A ResBlock, optionally followed by spatial then temporal self-attention."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None, tattn: TemporalAttention | None):
        super().__init__()
        self.res, self.attn, self.tattn = res, attn, tattn

    def forward(self, x, emb, clip: _Clip):
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.tattn is not None:
            x = self.tattn(x, clip.frames, clip.independent)
        return x


class UNet3D(nn.Module):
    def __init__(self, cfg: UNet3DConfig):
        super().__init__()
        self.cfg = cfg = _check(cfg)
        self._clip = _Clip()
        ch0 = cfg.base_channels
        emb_dim = 4 * ch0
        self.time_embed = TimestepEmbedding(emb_dim, freq_dim=max(2, ch0 // 2 * 2))
        self.label_embed = LabelEmbedding(cfg.num_classes, emb_dim, cfg.class_dropout) \
            if cfg.num_classes > 0 else None

        def conv(i, o):
            return SpaceTimeConv(i, o, self._clip, cfg.temporal_conv)

        def res(i, o):
            return ResBlock(i, o, emb_dim, dims=3, conv=conv, dropout=cfg.dropout,
                            scale_shift_norm=cfg.scale_shift_norm, norm_groups=cfg.norm_groups)

        def block(i, o, attend: bool):
            attn = SelfAttention(o, cfg.num_heads, cfg.norm_groups) if attend else None
            tattn = TemporalAttention(o, cfg.num_heads, cfg.norm_groups, max_distance=max(1, cfg.frames - 1)) \
                if attend and cfg.temporal_attention else None
            return _Block(res(i, o), attn, tattn)

        self.input_conv = conv_nd(3, cfg.in_channels + cfg.extra_in_channels, ch0, (1, 3, 3))
        self.down = nn.ModuleList()
        skips, ch, size = [ch0], ch0, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(ch, ch0 * mult, size in cfg.attention_resolutions))
                ch = ch0 * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(_Down(ch))
                skips.append(ch)
                size //= 2
        self.mid = nn.ModuleList([block(ch, ch, True), block(ch, ch, False)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), ch0 * mult, size in cfg.attention_resolutions))
                ch = ch0 * mult
            if level > 0:
                self.up.append(_Up(ch))
                size *= 2
        self.out_norm = group_norm(ch, cfg.norm_groups)
        self.out_conv = zero_(conv_nd(3, ch, cfg.out_channels or cfg.in_channels, (1, 3, 3)))

    def to(self, *args, **kwargs):
        """Module.to, where memory_format=torch.channels_last (what an image trainer asks for) means
        channels_last_3d: every conv weight here is 5-D, and Module.to would refuse the 2-D format."""
        device, dtype, non_blocking, fmt = torch._C._nn._parse_to(*args, **kwargs)
        if fmt != torch.channels_last:
            return super().to(*args, **kwargs)
        kw = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        return super().to(**kw, non_blocking=non_blocking, memory_format=torch.channels_last_3d)

    @property
    def null_label(self) -> int:
        """The label index meaning 'no class' (classifier-free guidance); -1 for an unconditional model."""
        return self.label_embed.null_label if self.label_embed is not None else -1

    def middle_block(self) -> torch.nn.Module:
        """The bottleneck's last block: what a feature discriminator reads (nn/discriminator.py)."""
        return self.mid[-1]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                concat: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        x_dtype = x.dtype
        t = self._check_inputs(x, t, y, concat)
        B, _, T, H, W = x.shape
        independent = check_independent(frame_mask, B, T)
        emb = self.time_embed(t)
        if self.label_embed is not None:  # y=None: the null label; class dropout in training
            emb = emb + self.label_embed.embed(y, B, x.device, cfg.class_dropout).to(emb.dtype)
        emb = emb.repeat_interleave(T, dim=0)                     # one row per frame: [B*T, emb_dim]
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        # kept after the forward (not reset), so activation checkpointing can recompute a block
        self._clip.frames, self._clip.independent = T, independent
        h = _frames(x)
        if _strictly_cl3d(x) or _strictly_cl3d(self.out_conv.weight):
            # canonical strides: with 1-3 input channels the layout is ambiguous, and oneDNN would
            # otherwise pick NCDHW for the first convs
            h = _as_channels_last_3d(h)
        h = self.input_conv(h)                                    # [B*T, ch0, 1, H, W]
        hs = [h]
        for block in self.down:
            h = block(h, emb, self._clip) if isinstance(block, _Block) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb, self._clip)
        for block in self.up:
            if isinstance(block, _Block):
                h = block(torch.cat([h, hs.pop()], dim=1), emb, self._clip)
            else:
                h = block(h)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return _clips(out, B).to(x_dtype)

    def _check_inputs(self, x, t, y, concat) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim != 5:
            hint = "; for images add a time axis: x.unsqueeze(2)" if x.ndim == 4 else ""
            raise ValueError(f"UNet3D takes videos [B, C, T, H, W], got a tensor of shape {tuple(x.shape)}{hint}")
        B, C, T, H, W = x.shape
        if C != cfg.in_channels:
            raise ValueError(f"UNet3D expected {cfg.in_channels} input channels, got {C} (shape {tuple(x.shape)}); "
                             f"set [model] in_channels = {C} to train on this data (videos are [B, C, T, H, W])")
        if H != cfg.image_size or W != cfg.image_size:
            raise ValueError(f"UNet3D expected {cfg.image_size}x{cfg.image_size} frames, got {H}x{W} "
                             f"(shape {tuple(x.shape)}, videos are [B, C, T, H, W]); "
                             f"set [model] image_size = {H} (square frames) or resize the data")
        if not 1 <= T <= MAX_FRAMES:
            raise ValueError(f"UNet3D takes clips of 1 to {MAX_FRAMES} frames, got T = {T} "
                             f"(shape {tuple(x.shape)}, videos are [B, C, T, H, W])")
        t = check_timesteps(t, B, x.device)
        check_labels(y, B, cfg.num_classes, "UNet3D")
        check_concat(concat, (B, cfg.extra_in_channels, T, H, W), cfg.extra_in_channels, "UNet3D", "e.g. known-frame mask + known frames")
        return t.to(torch.float32)


def _frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, 1, H, W]: a free view for channels_last_3d x."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, 1, H, W)


def _strictly_cl3d(t: torch.Tensor) -> bool:
    """channels_last_3d and not also contiguous (which it is when C = 1, or 1 frame of 1x1)."""
    return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


def _as_channels_last_3d(t: torch.Tensor) -> torch.Tensor:
    """t with the canonical channels_last_3d strides (a copy only when they differ: small input tensors)."""
    N, C, D, H, W = t.shape
    if t.stride() == (D * H * W * C, 1, H * W * C, W * C, C):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last_3d).copy_(t)


def _clips(h: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*T, C, 1, H, W] -> [B, C, T, H, W]: channels_last_3d when h is, else contiguous."""
    BT, C, _, H, W = h.shape
    out = h.reshape(batch, BT // batch, C, H, W).transpose(1, 2)
    return out if out.is_contiguous(memory_format=torch.channels_last_3d) else out.contiguous()


def _check(cfg: UNet3DConfig) -> UNet3DConfig:
    """The 2-D U-Net's checks (same layout of levels), plus the clip length."""
    cfg = check_unet_config(cfg, extra_positive=("frames",))
    if cfg.frames > MAX_FRAMES:
        raise ValueError(f"[model] frames = {cfg.frames} is more than the {MAX_FRAMES} frames a clip may have")
    return cfg
