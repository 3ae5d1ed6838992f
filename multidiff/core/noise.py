"""Fresh Gaussian noise for the samplers, white or colored.

A noise prior N(0, L L^T) (PriorGrad's per-sample scale, a time-varying filter, ...) needs no
sampler of its own. Every sampler update is linear in the state, the clean estimate and fresh
noise, so running a sampler on x = L y with the denoiser written in x is the same, draw for draw,
as running it on y with N(0, I) noise -- provided the starting noise and every fresh draw are
mapped by L. `ColoredNoise` is a generator that does that mapping; samplers, masked generation and
RePaint draw all their noise through `randn_like`, so they accept one wherever they take a
torch.Generator (tests/test_noise_prior.py checks the equivalence for every sampler).
"""
from __future__ import annotations

from typing import Callable

import torch


class ColoredNoise:
    """A random source whose N(0, I) draws (from `generator`, or torch's default one) pass through
    the linear map `color`."""

    def __init__(self, color: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator | None = None):
        self.color, self.generator = color, generator


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """A standard normal draw of x's shape, dtype and device, colored if `generator` is ColoredNoise."""
    if isinstance(generator, ColoredNoise):
        z = torch.randn(x.shape, generator=generator.generator, dtype=x.dtype, device=x.device)
        return generator.color(z)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
