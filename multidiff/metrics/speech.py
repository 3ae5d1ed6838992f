"""Distances between two renderings of the same sentence that need not be aligned in time.

mcd_dtw: mel-cepstral distortion after dynamic time warping (Kubichek 1993; the usual TTS measure):
  cepstra c_1..c_K of each frame -- the cosine expansion of the natural-log mel amplitude (80 bands),
  ln|X(w~)| = sum_m c_m cos(m w~), i.e. c_m = (2 / N) sum_n ln|X_n| cos(pi m (n + 1/2) / N), SPTK's
  one-sided mel-cepstrum convention; c_0 (the energy) left out -- frames paired by DTW on their
  Euclidean distance, and
  MCD = 10 sqrt(2) / ln 10 * mean over the path of ||c_ref - c_est||  (dB).
  Pure-silence frames (60 dB below the reference's loudest) are dropped from both ends first.

mcd_aligned: the same distortion between two mels whose frames already correspond (an acoustic model's
  mel decoded on the real mel's durations against that real mel): no vocoder and no DTW, so it measures
  the acoustic model's spectral error alone.
"""
from __future__ import annotations

import math

import librosa
import numpy as np
import torch
import torchaudio

K_MCD = 10 * math.sqrt(2) / math.log(10)


def mel_cepstrum(wav, sample_rate: int, order: int = 24, n_mels: int = 80, n_fft: int = 1024,
                 hop: int = 256) -> torch.Tensor:
    """[frames, order + 1] cepstra c_0..c_order of ln(mel amplitude)."""
    x = torch.as_tensor(wav).float().reshape(-1)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=1.0,
                                               f_min=0.0, f_max=sample_rate / 2)(x)
    return cepstrum_of_log_mel(torch.log(mel.clamp(min=1e-5)), order)


def cepstrum_of_log_mel(log_mel: torch.Tensor, order: int = 24) -> torch.Tensor:
    """[frames, order + 1] cepstra c_0..c_order of a natural-log mel amplitude [n_mels, frames]."""
    n_mels = log_mel.shape[0]
    n = torch.arange(n_mels, dtype=torch.float64)[:, None]
    m = torch.arange(order + 1, dtype=torch.float64)[None]
    basis = (2.0 / n_mels) * torch.cos(math.pi * m * (n + 0.5) / n_mels)  # [n_mels, order + 1]
    return (log_mel.T.double() @ basis).float()


def mcd_aligned(ref_log_mel: torch.Tensor, est_log_mel: torch.Tensor, order: int = 24,
                silence_db: float = 60.0) -> float:
    """Mel-cepstral distortion in dB between two natural-log mel amplitudes [n_mels, frames] of the same frames
    (frame i with frame i), the reference's silent ends (its mel energy 60 dB below its loudest frame) left out."""
    if ref_log_mel.shape != est_log_mel.shape:
        raise ValueError(f"mcd_aligned needs mels of one shape, got {tuple(ref_log_mel.shape)} and "
                         f"{tuple(est_log_mel.shape)}")
    energy_db = 10 * torch.log10((2 * ref_log_mel.double()).exp().sum(0))  # sum of squared band amplitudes
    voiced = torch.nonzero(energy_db > float(energy_db.max()) - silence_db).flatten()
    keep = slice(int(voiced[0]), int(voiced[-1]) + 1)
    cr, ce = cepstrum_of_log_mel(ref_log_mel[:, keep], order), cepstrum_of_log_mel(est_log_mel[:, keep], order)
    return float(K_MCD * (cr[:, 1:].double() - ce[:, 1:].double()).norm(dim=1).mean())


def _trim(c: torch.Tensor, energy: torch.Tensor, floor: float) -> torch.Tensor:
    voiced = torch.nonzero(energy > floor).flatten()
    if len(voiced) == 0:
        return c
    return c[int(voiced[0]):int(voiced[-1]) + 1]


def frame_energy_db(wav, hop: int = 256) -> torch.Tensor:
    x = torch.as_tensor(wav).float().reshape(-1)
    n = len(x) // hop * hop
    return 10 * torch.log10(x[:n].reshape(-1, hop).square().mean(1) + 1e-12)


def mcd_dtw(ref, est, sample_rate: int, order: int = 24, hop: int = 256, silence_db: float = 60.0) -> float:
    """Mel-cepstral distortion in dB after DTW (see the module docstring)."""
    cr, ce = mel_cepstrum(ref, sample_rate, order, hop=hop), mel_cepstrum(est, sample_rate, order, hop=hop)
    er, ee = frame_energy_db(ref, hop), frame_energy_db(est, hop)
    floor = float(er.max()) - silence_db
    cr = _trim(cr[:len(er)], er[:len(cr)], floor)
    ce = _trim(ce[:len(ee)], ee[:len(ce)], floor)
    a, b = cr[:, 1:].double().numpy(), ce[:, 1:].double().numpy()
    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    d = np.linalg.norm(a[path[:, 0]] - b[path[:, 1]], axis=1)
    return float(K_MCD * d.mean())
