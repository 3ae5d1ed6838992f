"""Vocoding: mel spectrograms -> waveforms with a trained DiffWave vocoder run, optionally with mel
consistency (every clean estimate projected onto the input mel) and in overlapping chunks for long
inputs."""
from __future__ import annotations

import torch

from ..data.mel import silence_mel
from ..data.mel_consistency import MelConsistency
from ..modalities.audio import mel_config
from ..errors import UserError
from ..modalities.base import Trained


def synthesize(trained: Trained, mel: torch.Tensor, steps: int, device, bf16: bool, generator,
               sampler: str = "ddpm", consistency: int = 0, n_samples: int | None = None,
               eta: float | None = None) -> torch.Tensor:
    """mel [B, n_mels, frames] -> waveforms [B, 1, n_samples (default frames * hop)] in [-1, 1], in one
    batch. `consistency` > 0: that many mel-consistency iterations on every clean estimate; `eta`: ddim's
    noise scale (None: the sampler's default)."""
    s, m = trained.sections, trained.modality
    extra = {}
    if consistency > 0:
        project = MelConsistency(mel.to(device), mel_config(s), consistency)
        extra["x0_projection"] = lambda x0, sigma: project(x0)
    n_samples = n_samples or mel.shape[-1] * s["model"].hop_length
    noise = torch.randn(mel.shape[0], 1, n_samples, generator=generator)
    x = trained.sample(trained.denoiser(device, bf16), noise, generator, {"mel": mel}, device,
                       **m.sampling(s, sampler, steps, eta=eta), **extra)
    return x.clamp(-1, 1)


def vocode(trained: Trained, mel: torch.Tensor, steps: int, device, bf16: bool, generator, sampler: str = "ddpm",
           chunk_frames: int = 0, overlap: int = 16, consistency: int = 0, eta: float | None = None) -> torch.Tensor:
    """mel [n_mels, frames] -> waveform [1, frames * hop]. Long inputs go in overlapping chunks
    (one batch) joined with linear cross-fades, so memory stays bounded and no seam is audible."""
    hop = trained.sections["model"].hop_length
    frames = mel.shape[-1]
    if frames == 0 or not bool(torch.isfinite(mel).all()):  # else the sampler blames the model for the NaN
        raise UserError(f"the mel to vocode has {frames} frames" + ("" if frames == 0 else " and NaN or inf values")
                        + ": give speech or a mel .npy [n_mels, frames >= 1] of finite values")
    if chunk_frames <= 0 or frames <= chunk_frames:
        return synthesize(trained, mel[None], steps, device, bf16, generator, sampler, consistency, eta=eta)[0]
    if overlap >= chunk_frames:
        raise ValueError(f"overlap ({overlap} frames) must be smaller than the chunk ({chunk_frames} frames)")
    stride = chunk_frames - overlap
    starts = list(range(0, frames - overlap, stride))
    pad = starts[-1] + chunk_frames - frames
    padded = torch.cat([mel, silence_mel(mel_config(trained.sections))[:, None].expand(-1, pad)], 1) if pad > 0 else mel
    chunks = torch.stack([padded[:, s:s + chunk_frames] for s in starts])
    audio = synthesize(trained, chunks, steps, device, bf16, generator, sampler, consistency, eta=eta)
    out = torch.zeros(1, (starts[-1] + chunk_frames) * hop)
    weight = torch.zeros_like(out)
    ramp = torch.ones(chunk_frames * hop)
    fade = torch.linspace(0, 1, overlap * hop + 2)[1:-1]
    for i, s in enumerate(starts):
        w = ramp.clone()
        if i > 0:
            w[:overlap * hop] = fade
        if i < len(starts) - 1:
            w[-overlap * hop:] = fade.flip(0)
        out[:, s * hop:(s + chunk_frames) * hop] += audio[i] * w
        weight[:, s * hop:(s + chunk_frames) * hop] += w
    return (out / weight.clamp(min=1e-8))[:, :frames * hop]
