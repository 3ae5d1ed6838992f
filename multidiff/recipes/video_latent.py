"""Video diffusion in the latent space of an image autoencoder, applied frame by frame ([latent]
autoencoder = "runs/autoencoder_..."): the 3-D U-Net sees clips of latents [B, c, T, H/f, W/f], so
a clip costs f^2 times fewer pixels. Known-frame masks are per frame, so prediction and
interpolation work unchanged on latent clips.

Clips are encoded on the fly in the training loss (the posterior mean, scaled to unit variance;
decoded clips are already cached as uint8, and the encoder costs a fraction of the U-Net) and
samples are decoded frame by frame. The autoencoder's identity (weights hash, scale, channels,
factor) is part of the run's fingerprint, so a run resumed or sampled with another autoencoder fails.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..engine.config import ConfigError


@dataclass
class VideoLatentConfig:
    """The [latent] section of a video recipe."""
    autoencoder: str = ""        # a trained autoencoder run directory; "" = pixel space


def codec_of(sections: dict, device=None, bf16: bool = False):
    """The frame codec of a latent video config (None in pixel space)."""
    path = sections["latent"].autoencoder if "latent" in sections else ""
    if not path:
        return None
    from .latent_codec import load_autoencoder

    codec = load_autoencoder(path, device, bf16)
    d = sections["data"]
    if d.channels != codec.info.get("in_channels", d.channels):
        raise ConfigError(f"data.channels = {d.channels} but the autoencoder '{path}' encodes "
                          f"{codec.info['in_channels']}-channel images; make them equal")
    if d.size % codec.factor:
        raise ConfigError(f"data.size = {d.size} is not a multiple of the autoencoder's factor {codec.factor}")
    return codec


def latent_view(sections: dict, codec) -> dict:
    """sections with [data] channels and size of the latent clips (what the U-Net and sampler see)."""
    if codec is None:
        return sections
    d = sections["data"]
    return {**sections, "data": dataclasses.replace(d, channels=codec.latent_channels, size=d.size // codec.factor)}


def identity(codec) -> str:
    return "" if codec is None else "+ae:" + ",".join(f"{k}={v}" for k, v in sorted(codec.identity().items()))


def _frames(x: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def _clips(f: torch.Tensor, batch: int) -> torch.Tensor:
    BT, C, H, W = f.shape
    return f.reshape(batch, BT // batch, C, H, W).transpose(1, 2).contiguous()


def encode_clips(codec, x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] in [-1, 1] -> scaled latents [B, c, T, H/f, W/f] (posterior means)."""
    return _clips(codec.encode(_frames(x)), x.shape[0]).to(x.device)


def decode_clips(codec, z: torch.Tensor) -> torch.Tensor:
    """The inverse of encode_clips: [B, c, T, h, w] -> [B, C, T, h*f, w*f] in [-1, 1]."""
    return _clips(codec.decode(_frames(z)), z.shape[0]).clamp(-1, 1)
