"""Mel-shaped noise priors for a DiffWave vocoder: the diffusion's noise follows the mel.

A plain DiffWave diffuses towards N(0, I): the model must carve speech's loudness and spectral
envelope out of white noise, which a short run does poorly (a noise floor in pauses, no formants).
A prior N(0, L L^T) with L read off the conditioning mel gives the noise that shape from the
start, so the model only has to learn what the mel does not say (the excitation: harmonics and
phase). Two priors:

mel_energy    PriorGrad (Lee et al., ICLR 2022): L = diag(s), one standard deviation per frame, the
              frame's mel energy (sqrt of the summed mel magnitudes) min-max normalised over the
              training set and floored at prior_std_min (0.1 in the paper).
mel_envelope  SpecGrad's idea (Koizumi et al., Interspeech 2022): L is a time-varying filter (STFT,
              multiply bin (f, frame) by m, inverse STFT) whose gain m is the mel's band magnitudes
              spread back over linear frequency, scaled so the loudest training frame has RMS 1 and
              floored at prior_std_min: noise with the mel's spectral envelope, frame by frame.

Both are used the same way, in x (audio) coordinates as the papers write them: x_t = a x0 + sigma
L eps, the network predicts L eps, the loss error is weighted by whiten ~ L^-1 (PriorGrad's 1/s^2
weighting; SpecGrad's inverse filter), and the sampler draws its starting and fresh noise through L
(core/noise.py; `sample(..., noise_color=...)`). The network is an unchanged DiffWave;
`NoisePriorModel` only carries the fitted prior with it, so checkpoints hold both.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...data.mel import MelConfig, filterbank, mel_magnitude

PRIORS = ("none", "mel_energy", "mel_envelope")


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

    def color(self, z: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """White noise [B, 1, L] -> the prior's: s z."""
        return z * self(mel).to(z.dtype)

    def whiten(self, r: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """The loss weighting: r / s (PriorGrad's loss is |net - s eps|^2 / s^2)."""
        return r / self(mel).to(r.dtype)


class MelEnvelopePrior(nn.Module):
    """mel [B, n_mels, frames] -> the filter gain m [B, n_stft, frames + 1]; `color` filters white
    noise by m, `whiten` by 1 / m (an inverse up to the STFT's overlap, which is all a loss weighting
    needs). The scale (1 / the loudest training frame's envelope RMS) is a buffer, fitted on the
    training mels, so it travels in every checkpoint. The filter is zero-phase; for hifigan-style
    mels (frames centred half a hop later) it is half a hop early, which a smooth envelope forgives."""

    def __init__(self, mel: MelConfig, floor: float = 0.01):
        super().__init__()
        if not 0 < floor <= 1:
            raise ValueError(f"[model] prior_std_min must be in (0, 1], got {floor}")
        self.mel, self.floor = mel, float(floor)
        fb = filterbank(mel).double()                       # [n_stft, n_mels]
        spread = fb / fb.sum(1, keepdim=True).clamp(min=1e-12)
        covered = fb.sum(1) > 0                              # bins below f_min / above f_max: nearest band's value
        idx = torch.arange(len(fb))
        nearest = idx[covered][(idx[:, None] - idx[covered][None]).abs().argmin(1)]
        spread = spread[nearest]
        # band magnitude / band weight = the band's average bin magnitude
        self.register_buffer("spread", (spread / fb.sum(0).clamp(min=1e-12)).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(mel.win_length), persistent=False)
        self.register_buffer("scale", torch.tensor(math.nan))

    def envelope(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, frames] -> [B, n_stft, frames] average STFT magnitude around each bin."""
        return self.spread @ mel_magnitude(mel.float(), self.mel)

    @torch.no_grad()
    def fit(self, mels) -> "MelEnvelopePrior":
        """Set the scale from an iterable of training mels [n_mels, frames]."""
        loudest = max(float(self.envelope(m).square().mean(-2).sqrt().max()) for m in mels)
        if not loudest > 0:
            raise ValueError("the training mels are all silent: the mel-envelope prior needs speech")
        self.scale.fill_(1 / loudest)
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """m [B, n_stft, frames + 1] (the centred STFT's extra last frame repeats the last one)."""
        if math.isnan(float(self.scale)):
            raise RuntimeError("the mel-envelope prior has no scale: fit() it on the training mels "
                               "(the audio recipe's train stage does) or load a checkpoint that has one")
        with torch.autocast(mel.device.type, enabled=False):  # a filter, not a layer: fp32 under bf16 training
            m = (self.envelope(mel) * self.scale).clamp(min=self.floor)
        return torch.cat([m, m[..., -1:]], -1)

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        c = self.mel
        B, _, L = x.shape
        X = torch.stft(x.reshape(B, L).float(), c.n_fft, c.hop_length, c.win_length, self.window,
                       center=True, return_complex=True)
        y = torch.istft(X * gain, c.n_fft, c.hop_length, c.win_length, self.window, center=True, length=L)
        return y.view(B, 1, L).to(x.dtype)

    def color(self, z: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """White noise [B, 1, L] -> noise with the mel's envelope."""
        return self._filter(z, self(mel))

    def whiten(self, r: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """The loss weighting: the error filtered by 1 / m."""
        return self._filter(r, 1 / self(mel))


class NoisePriorModel(nn.Module):
    """A DiffWave trained with a noise prior: the network unchanged (forward is the net's), the
    fitted prior beside it, so one state dict holds both (keys net.* and prior.*)."""

    def __init__(self, net: nn.Module, prior: nn.Module):
        super().__init__()
        self.net, self.prior = net, prior

    @property
    def cfg(self):
        return self.net.cfg

    def forward(self, x: torch.Tensor, t: torch.Tensor, mel: torch.Tensor | None = None, **cond) -> torch.Tensor:
        if mel is None:
            raise ValueError("a model with a mel-shaped noise prior needs mel=...")
        return self.net(x, t, mel=mel, **cond)

    def noise_color(self, mel: torch.Tensor):
        """The map sample(..., noise_color=) takes: white noise -> this prior's, for these mels."""
        return lambda z: self.prior.color(z, mel.to(z.device))
