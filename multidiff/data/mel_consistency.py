"""Mel consistency: move a waveform towards the set of waveforms whose mel is a given one.

A vocoder is asked for audio whose mel spectrogram is the input mel, but nothing in DiffWave's
sampler checks that; a model trained for minutes misses the spectral envelope by 15-20 dB. This
projection fixes the envelope and keeps what the waveform has of its own: each iteration takes the
STFT in the feature's own framing, measures the mel band magnitudes, and scales every bin by the
ratio target / current of the bands it belongs to (the filterbank's weights spread a band's gain
over its bins; phases and the harmonic fine structure inside a band are kept), then inverts the
STFT. Unlike Griffin-Lim it never imposes a linear-frequency magnitude guessed from the mel (the
filterbank's pseudo-inverse smears harmonics); it only asks for the mel itself. Used on every clean
estimate of the sampler (`sample(..., x0_projection=...)`), as GLA-Grad (Liu et al., ICASSP 2024)
does with Griffin-Lim steps.
"""
from __future__ import annotations

import torch

from .mel import MelConfig, filterbank, mel_magnitude, silence_mel


class MelConsistency:
    """Callable x [B, 1, L] -> x' [B, 1, L] for the target mel [B, n_mels, L // hop] (the feature's
    own log scale). `iterations` rounds per call; a band's gain is capped at `max_gain_db` so a
    near-silent estimate is not blown up into noise, and bands at the feature's floor (silence) are
    only ever lowered. Call signature fits sample()'s x0_projection."""

    def __init__(self, mel: torch.Tensor, cfg: MelConfig, iterations: int = 4, max_gain_db: float = 40.0):
        if iterations < 1:
            raise ValueError(f"mel consistency needs iterations >= 1, got {iterations}")
        if mel.ndim != 3 or mel.shape[1] != cfg.n_mels:
            raise ValueError(f"mel must be [B, {cfg.n_mels}, frames], got {tuple(mel.shape)}")
        self.cfg, self.iterations, self.max_gain = cfg, int(iterations), 10 ** (max_gain_db / 20)
        self.target = mel_magnitude(mel.float(), cfg)
        # the feature's floor (its log is clamped) means "this quiet or quieter": never raise a band there
        floor = float(mel_magnitude(silence_mel(cfg)[0], cfg))
        self.at_floor = self.target <= floor * 1.001
        fb = filterbank(cfg).to(mel.device)                        # [n_stft, n_mels]
        self.fb_t = fb.T.contiguous()
        self.spread = fb / fb.sum(1, keepdim=True).clamp(min=1e-12)  # a bin's gain: its bands' weighted mean
        self.free = (fb.sum(1) == 0).to(fb.dtype)[:, None]           # bins outside f_min..f_max: gain 1
        self.window = torch.hann_window(cfg.win_length, device=mel.device)
        # lmnt frames are centred on i * hop and window-normalised; hifigan's centred on i * hop + hop / 2
        self.norm = float(self.window.pow(2).sum().sqrt()) if cfg.style == "lmnt" else 1.0
        self.shift = 0 if cfg.style == "lmnt" else cfg.hop_length // 2
        self.eps = 0.0 if cfg.style == "lmnt" else 1e-9  # hifigan's magnitude is sqrt(|X|^2 + 1e-9)

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return torch.stft(x, c.n_fft, c.hop_length, c.win_length, self.window, center=True,
                          return_complex=True) / self.norm

    def _istft(self, X: torch.Tensor, length: int) -> torch.Tensor:
        c = self.cfg
        return torch.istft(X * self.norm, c.n_fft, c.hop_length, c.win_length, self.window, center=True,
                           length=length)

    def __call__(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        B, _, L = x.shape
        frames = self.target.shape[-1]
        if frames * self.cfg.hop_length != L or self.target.shape[0] != B:
            raise ValueError(f"mel consistency: {self.target.shape[0]} mels of {frames} frames do not match audio "
                             f"[{B}, 1, {L}] (hop {self.cfg.hop_length})")
        head, y = x[:, 0, :self.shift].float(), x[:, 0, self.shift:].float()
        for _ in range(self.iterations):
            X = self._stft(y)
            current = self.fb_t @ (X[..., :frames].abs().square() + self.eps).sqrt()
            gain = (self.target / current.clamp(min=1e-8)).clamp(max=self.max_gain)
            gain = torch.where(self.at_floor, gain.clamp(max=1.0), gain)
            X = torch.cat([X[..., :frames] * (self.spread @ gain + self.free), X[..., frames:]], -1)
            y = self._istft(X, y.shape[-1])
        return torch.cat([head, y], -1)[:, None].to(x.dtype)
