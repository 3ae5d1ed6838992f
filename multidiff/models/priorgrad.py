"""PriorGrad's mel-shaped noise prior for a vocoder (Lee et al., ICLR 2022), on the unchanged core.

PriorGrad diffuses towards N(0, diag(s^2)) instead of N(0, I), where s is a per-sample standard
deviation read off the conditioning mel: loud frames get s ~ 1, pauses get s = std_min. The model
then never has to carve silence out of unit-variance noise, which is what leaves a plain DiffWave
with a noise floor in pauses after a short run, and the paper reports several times faster
convergence. Its loss is the eps-MSE weighted by 1 / s^2 and its sampler scales every fresh noise
draw by s.

All of that is exactly ordinary diffusion of y = x / s: with x_t = a x0 + sigma s eps,
y_t = x_t / s = a (x0 / s) + sigma eps; PriorGrad's network output (an estimate of s eps) divided
by s is an eps estimate for y, and its weighted loss |s eps - net|^2 / s^2 = |eps - net / s|^2 is
the plain loss in y. So `PriorScaled` presents the DiffWave as a denoiser of y, the recipe divides
the training audio by s and multiplies samples by s, and every sampler, guidance method and
masked-sampling path of the core works unchanged (tests/test_priorgrad.py checks the identity).

The frame energy is PriorGrad's: sqrt of the summed mel magnitudes, min-max normalised over the
training set, floored at std_min (0.1 in the paper); each frame's s covers its hop of samples.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.mel import MelConfig, mel_magnitude

PRIORS = ("none", "mel_energy")


class MelEnergyPrior(nn.Module):
    """mel [B, n_mels, frames] -> s [B, 1, frames * hop]. The training set's energy range is a
    buffer, so it travels in every checkpoint (and the EMA copy) with the weights it was trained with."""

    def __init__(self, mel: MelConfig, std_min: float = 0.1):
        super().__init__()
        if not 0 < std_min <= 1:
            raise ValueError(f"[model] prior_std_min must be in (0, 1], got {std_min}")
        self.mel, self.std_min = mel, float(std_min)
        self.register_buffer("energy_range", torch.full((2,), math.nan))

    def energy(self, mel: torch.Tensor) -> torch.Tensor:
        return mel_magnitude(mel.float(), self.mel).sum(-2).sqrt()

    @torch.no_grad()
    def fit(self, mels) -> "MelEnergyPrior":
        """Set the energy range from an iterable of training mels [n_mels, frames]."""
        lo, hi = math.inf, -math.inf
        for m in mels:
            e = self.energy(m)
            lo, hi = min(lo, float(e.min())), max(hi, float(e.max()))
        if not hi > lo:
            raise ValueError("the training mels have one energy throughout (silence?): the mel-energy prior "
                             "needs speech; set [model] noise_prior = \"none\" or check the data")
        self.energy_range.copy_(torch.tensor([lo, hi]))
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        lo, hi = self.energy_range.tolist()
        if math.isnan(lo):
            raise RuntimeError("the mel-energy prior has no energy range: fit() it on the training mels "
                               "(the audio recipe's train stage does) or load a checkpoint that has one")
        s = ((self.energy(mel) - lo) / (hi - lo)).clamp(min=self.std_min)
        return s.repeat_interleave(self.mel.hop_length, dim=-1)[:, None]

    def to_prior(self, x: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Audio x [B, 1, L] -> y = x / s, the signal the core diffuses."""
        return x / self(mel).to(x.dtype)

    def from_prior(self, y: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return y * self(mel).to(y.dtype)


class PriorScaled(nn.Module):
    """net as a denoiser of y = x / s: forward(y_t, t, mel, **cond) = net(s * y_t, t, mel, **cond) / s
    (the prior's `to_prior` / `from_prior` map data and samples between x and y)."""

    def __init__(self, net: nn.Module, prior: MelEnergyPrior):
        super().__init__()
        self.net, self.prior = net, prior

    @property
    def cfg(self):
        return self.net.cfg

    def forward(self, y: torch.Tensor, t: torch.Tensor, mel: torch.Tensor | None = None, **cond) -> torch.Tensor:
        if mel is None:
            raise ValueError("a model with the mel-energy noise prior needs mel=...")
        s = self.prior(mel).to(y.dtype)
        return self.net(y * s, t, mel=mel, **cond) / s
