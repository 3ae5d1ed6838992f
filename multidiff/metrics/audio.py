"""Audio distances between a reference waveform and its resynthesis.

log_mel_distance: RMS difference of log-mel spectra in dB (the "log-spectral distance" on a mel
  scale; 0 for identical audio). mr_stft_distance: the multi-resolution STFT loss of Parallel
  WaveGAN / HiFi-GAN evaluations (spectral convergence + mean |log magnitude| difference,
  averaged over three resolutions). pesq_stoi: wideband PESQ and STOI when the optional `eval`
  extra (pesq, pystoi) is installed. real_time_factor: compute seconds per audio second.
envelope_correlation: does the loudness follow the reference's, frame by frame (1 = exactly).
pause_level_db: how loud the estimate is where the reference pauses -- a vocoder's noise floor.
"""
from __future__ import annotations

import torch
import torchaudio

RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))  # (n_fft, hop, win)


def _pair(ref: torch.Tensor, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref, est = torch.as_tensor(ref).float().reshape(-1), torch.as_tensor(est).float().reshape(-1)
    n = min(len(ref), len(est))
    if n == 0:
        raise ValueError("audio distances need non-empty waveforms")
    if abs(len(ref) - len(est)) > 1024:
        raise ValueError(f"reference ({len(ref)} samples) and estimate ({len(est)}) differ in length by more "
                         "than 1024 samples: are they the same utterance at the same sample rate?")
    return ref[:n], est[:n]


def log_mel_distance(ref, est, sample_rate: int = 22050, n_mels: int = 80, n_fft: int = 1024,
                     hop: int = 256, top_db: float = 80.0) -> float:
    """RMS over time-frequency bins of 20 log10(mel magnitude) differences, in dB. Both spectra are
    floored `top_db` below the reference's peak (as librosa's power_to_db does), so inaudible
    near-silent bins cannot dominate the average."""
    ref, est = _pair(ref, est)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=1.0,
                                               f_min=0.0, f_max=sample_rate / 2)
    mr, me = mel(ref), mel(est)
    floor = mr.max().clamp(min=1e-8) * 10 ** (-top_db / 20)
    a = 20 * torch.log10(torch.maximum(mr, floor))
    b = 20 * torch.log10(torch.maximum(me, floor))
    return float((a - b).square().mean().sqrt())


def mr_stft_distance(ref, est, resolutions=RESOLUTIONS) -> float:
    ref, est = _pair(ref, est)
    total = 0.0
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win)
        sa = torch.stft(ref, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
        sb = torch.stft(est, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
        sc = torch.linalg.norm(sa - sb) / torch.linalg.norm(sa)
        mag = (sa.log() - sb.log()).abs().mean()
        total += float(sc + mag)
    return total / len(resolutions)


def _frame_power(x: torch.Tensor, hop: int) -> torch.Tensor:
    n = len(x) // hop * hop
    return x[:n].reshape(-1, hop).square().mean(1)


def envelope_correlation(ref, est, hop: int = 256) -> float:
    """Pearson correlation of the per-frame log power of reference and estimate."""
    ref, est = _pair(ref, est)
    a, b = (_frame_power(x, hop).add(1e-10).log() for x in (ref, est))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def pause_level_db(ref, est, hop: int = 256, below_db: float = 40.0) -> float:
    """Mean power of the estimate over the reference's pauses (frames more than `below_db` dB below
    its loudest frame), in dB relative to that loudest frame; nan when the reference never pauses."""
    ref, est = _pair(ref, est)
    pr, pe = _frame_power(ref, hop), _frame_power(est, hop)
    peak = pr.max().clamp(min=1e-12)
    pauses = pr < peak * 10 ** (-below_db / 10)
    if not bool(pauses.any()):
        return float("nan")
    return float(10 * torch.log10(pe[pauses].mean().clamp(min=1e-12) / peak))


def pesq_stoi(ref, est, sample_rate: int) -> dict:
    """Wideband PESQ (at 16 kHz) and STOI; {} when the `eval` extra is not installed."""
    try:
        from pesq import pesq
        from pystoi import stoi
    except ImportError:
        return {}
    ref, est = _pair(ref, est)
    r16 = torchaudio.functional.resample(ref, sample_rate, 16000).numpy()
    e16 = torchaudio.functional.resample(est, sample_rate, 16000).numpy()
    return {"pesq_wb": float(pesq(16000, r16, e16, "wb")), "stoi": float(stoi(ref.numpy(), est.numpy(), sample_rate))}


def real_time_factor(compute_seconds: float, audio_samples: int, sample_rate: int) -> float:
    return compute_seconds / (audio_samples / sample_rate)
