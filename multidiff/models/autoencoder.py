"""KL-regularised convolutional autoencoder (the first stage of latent diffusion) and a PatchGAN
discriminator for its optional adversarial loss.

Encoder: conv -> per level num_res_blocks ResBlocks (no time embedding) and a 2x Downsample
between levels -> ResBlock [-> SelfAttention] -> ResBlock -> GN, SiLU, conv to 2 * latent
channels = (mean, logvar) of a diagonal Gaussian. The decoder mirrors it. The downsampling
factor is f = 2 ** (len(channel_mult) - 1): a 32x32 image with channel_mult [1, 2, 2] (f = 4)
becomes an 8x8 x latent_channels latent. Built from multidiff.nn, so it runs channels_last
under bf16 autocast like the U-Nets.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..nn import Downsample, ResBlock, SelfAttention, Upsample, conv_nd, group_norm

FACTORS = (2, 4, 8)


@dataclass
class AutoencoderConfig:
    """The [model] section of an autoencoder recipe."""
    in_channels: int = 1
    base_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])   # len - 1 = log2 of the factor f
    num_res_blocks: int = 1
    latent_channels: int = 4
    attention: bool = False          # self-attention in the bottleneck (encoder and decoder middle)
    num_heads: int = 4
    norm_groups: int = 8

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def check_config(cfg: AutoencoderConfig) -> AutoencoderConfig:
    cfg = replace(cfg, channel_mult=[int(m) for m in cfg.channel_mult])
    if not cfg.channel_mult or any(m <= 0 for m in cfg.channel_mult):
        raise ValueError(f"[model] channel_mult must be a non-empty list of positive ints, got {cfg.channel_mult}")
    if cfg.factor not in FACTORS:
        raise ValueError(f"[model] channel_mult {cfg.channel_mult} gives a downsampling factor {cfg.factor}; "
                         f"use {len(cfg.channel_mult)} -> 2, 3 or 4 levels (f = 2, 4 or 8)")
    for key in ("in_channels", "base_channels", "num_res_blocks", "latent_channels", "norm_groups", "num_heads"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"[model] {key} must be positive, got {getattr(cfg, key)}")
    for m in cfg.channel_mult:
        if (cfg.base_channels * m) % cfg.norm_groups:
            raise ValueError(f"[model] base_channels {cfg.base_channels} x channel_mult {m} is not divisible by "
                             f"norm_groups = {cfg.norm_groups}; change one of them")
    if cfg.attention and (cfg.base_channels * cfg.channel_mult[-1]) % cfg.num_heads:
        raise ValueError(f"[model] bottleneck channels are not divisible by num_heads = {cfg.num_heads}")
    return cfg


class DiagonalGaussian:
    """q(z | x) = N(mean, exp(logvar)) per latent element; logvar clamped like latent-diffusion does, so
    an untrained encoder cannot produce inf/0 variances."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        mean, logvar = moments.float().chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over every latent element: [B]."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class _Middle(nn.Module):
    def __init__(self, ch: int, cfg: AutoencoderConfig):
        super().__init__()
        self.res1 = ResBlock(ch, ch, norm_groups=cfg.norm_groups)
        self.attn = SelfAttention(ch, cfg.num_heads, cfg.norm_groups) if cfg.attention else nn.Identity()
        self.res2 = ResBlock(ch, ch, norm_groups=cfg.norm_groups)

    def forward(self, x):
        return self.res2(self.attn(self.res1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.base_channels
        layers: list[nn.Module] = [conv_nd(2, cfg.in_channels, ch, 3)]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(ch, cfg.base_channels * mult, norm_groups=cfg.norm_groups))
                ch = cfg.base_channels * mult
            if level < len(cfg.channel_mult) - 1:
                layers.append(Downsample(ch))
        layers += [_Middle(ch, cfg), group_norm(ch, cfg.norm_groups), nn.SiLU(),
                   conv_nd(2, ch, 2 * cfg.latent_channels, 3)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mult[-1]
        layers: list[nn.Module] = [conv_nd(2, cfg.latent_channels, ch, 3), _Middle(ch, cfg)]
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(ch, cfg.base_channels * mult, norm_groups=cfg.norm_groups))
                ch = cfg.base_channels * mult
            if level > 0:
                layers.append(Upsample(ch))
        layers += [group_norm(ch, cfg.norm_groups), nn.SiLU()]
        self.layers = nn.Sequential(*layers)
        self.out_conv = conv_nd(2, ch, cfg.in_channels, 3)   # the "last layer" of the adaptive GAN weight

    def forward(self, z):
        return self.out_conv(self.layers(z))


class Autoencoder(nn.Module):
    """forward(x) -> (reconstruction, posterior); encode(x) -> DiagonalGaussian; decode(z) -> x (fp32)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg = check_config(cfg)
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    @property
    def factor(self) -> int:
        return self.cfg.factor

    def _check(self, x: torch.Tensor, what: str, channels: int) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"Autoencoder.{what} takes [B, {channels}, H, W], got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        self._check(x, "encode", self.cfg.in_channels)
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the autoencoder's factor "
                             f"{self.factor}; resize the data (data.size) to a multiple of {self.factor}")
        return DiagonalGaussian.from_moments(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, "decode", self.cfg.latent_channels)
        return self.decoder(z).float()

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """Reconstruct x through z = mean + std * eps (eps: standard normal of the latent's shape, e.g. the
        training step's seeded draw; None = a fresh draw)."""
        post = self.encode(x)
        z = (post.sample() if eps is None else post.mean + post.std * eps.to(post.mean)).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            z = z.contiguous(memory_format=torch.channels_last)
        return self.decode(z), post


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: strided 4x4 convs to a map of real/fake logits, one per overlapping patch.
    GroupNorm instead of BatchNorm: no batch statistics, so it behaves the same at any batch size."""

    def __init__(self, in_channels: int = 1, channels: int = 32, layers: int = 2, norm_groups: int = 8):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            mods += [nn.Conv2d(ch, out, 4, 2 if i < layers else 1, 1, bias=False), group_norm(out, norm_groups),
                     nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():  # the pix2pix init: N(0, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.net(x).float()
