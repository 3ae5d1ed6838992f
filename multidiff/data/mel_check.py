"""Is a mel made for this vocoder? A DiffWave vocoder given mels of another convention does not fail:
it makes noise (lmnt-com/diffwave #26: Tacotron 2 mels normalised to [-4, 4] against DiffWave's
[0, 1] gave only noise). Here that is one message saying what the vocoder expects and how to convert.

`check_vocoder_mel(mel, cfg)`: the band count, finite values, and the value range of the vocoder's
mel style (with some slack for a model's predictions), with a guess of the convention the values
came from. `check_same_mel(a, b)`: two mel configurations (an acoustic model's and a vocoder's) agree
-- style, bands, sample rate, hop (the frame rate), window -- or a message listing what differs.
"""
from __future__ import annotations

import math

import torch

from ..errors import UserError
from .mel import MelConfig

LOG_FLOOR = math.log(1e-5)            # hifigan's clamp: the natural log of 1e-5
RANGES = {"lmnt": (0.0, 1.0), "hifigan": (LOG_FLOOR, 4.0)}
SLACK = {"lmnt": 0.15, "hifigan": 1.0}  # a model's predicted mel may stray a little past the range


class MelMismatch(UserError):
    pass


def frame_rate(cfg: MelConfig) -> float:
    return cfg.sample_rate / cfg.hop_length


def describe(cfg: MelConfig) -> str:
    if cfg.style == "lmnt":
        what = ("lmnt-style mels, in [0, 1]: 20 log10 of the window-normalised STFT's HTK mel magnitude, minus 20 dB, "
                "mapped from [-100, 0] dB onto [0, 1] (lmnt-com/diffwave's preprocess.py)")
    else:
        what = (f"HiFi-GAN-style mels: the natural log of the slaney mel magnitude, clamped at log(1e-5) = "
                f"{LOG_FLOOR:.2f}")
    return (f"{what}; {cfg.n_mels} bands {cfg.f_min:g}-{cfg.fmax:g} Hz, n_fft {cfg.n_fft}, window {cfg.win_length}, "
            f"hop {cfg.hop_length} at {cfg.sample_rate} Hz ({frame_rate(cfg):.1f} frames/s), shaped [n_mels, frames]")


def guess(lo: float, hi: float) -> tuple[str, str]:
    """(what values in [lo, hi] look like, how to bring them to lmnt's [0, 1])."""
    if -4.6 <= lo < -1.0 and hi <= 4.6:
        return ("Tacotron 2 mels normalised to [-4, 4] (symmetric, max_abs_value = 4)",
                "(x + 4) / 8 maps them onto [0, 1] when they were made with min_level_db = -100 and ref_level_db = 20 "
                "(Tacotron 2's defaults)")
    if -12.0 <= lo < -4.6 and hi <= 5.0:
        return ("natural-log mels (HiFi-GAN / NVIDIA Tacotron 2 style)",
                "clip((20 x / ln 10 - 20 + 100) / 100, 0, 1) maps natural-log magnitudes onto lmnt's scale")
    if lo < -12.0 and hi <= 40.0:
        return ("mels in decibels", "clip((x - 20 + 100) / 100, 0, 1) maps 20 log10 magnitudes onto lmnt's scale")
    if lo >= 0.0 and hi > 1.5:
        return ("linear magnitudes or powers (no log taken)",
                "clip((20 log10(max(x, 1e-5)) - 20 + 100) / 100, 0, 1) maps magnitudes onto lmnt's scale")
    return ("values of an unknown convention", "")


def check_vocoder_mel(mel: torch.Tensor, cfg: MelConfig, source: str = "the mel", predicted: bool = False) -> None:
    """Refuse (MelMismatch, one message) a mel [n_mels, frames] this vocoder would turn into noise.
    `predicted`: a model's output in the vocoder's own configuration, allowed 4x the slack (it is clamped
    to the range before vocoding; a half-trained model strays further than a file of another tool would)."""
    expects = f"this vocoder expects {describe(cfg)}"
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels or mel.shape[1] == 0:
        hint = " (it looks transposed: save mel.T)" if mel.ndim == 2 and mel.shape[1] == cfg.n_mels else ""
        raise MelMismatch(f"{source} has shape {tuple(mel.shape)}{hint}; {expects}")
    if not bool(torch.isfinite(mel).all()):
        raise MelMismatch(f"{source} holds NaN or inf values; {expects}")
    lo, hi = float(mel.min()), float(mel.max())
    r_lo, r_hi = RANGES[cfg.style]
    slack = SLACK[cfg.style] * (4 if predicted else 1)
    if r_lo - slack <= lo and hi <= r_hi + slack:
        return
    what, convert = guess(lo, hi)
    if cfg.style == "lmnt":
        fix = (f"Convert: {convert}. The band edges of other tools still differ, so the sure way is to compute the "
               f"mels from audio with multidiff.data.mel.mel_spectrogram(wav, MelConfig.preset('lmnt', "
               f"{cfg.sample_rate}, {cfg.hop_length})) and train the acoustic model on them (data.mel = \"lmnt\")"
               if convert else "Compute the mels with multidiff.data.mel.mel_spectrogram in the vocoder's config")
    else:
        fix = ("Convert lmnt-style x in [0, 1] with ln(10) (100 x - 80) / 20, or compute the mels from audio with "
               f"multidiff.data.mel.mel_spectrogram(wav, MelConfig.preset('hifigan', {cfg.sample_rate}, "
               f"{cfg.hop_length}))")
    raise MelMismatch(f"{source} has values in [{lo:.2f}, {hi:.2f}], which looks like {what}, not the "
                      f"[{r_lo:.2f}, {r_hi:.2f}] of {cfg.style} mels; {expects}. {fix}")


def clamp_to_range(mel: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    lo, hi = RANGES[cfg.style]
    return mel.clamp(lo, hi if cfg.style == "lmnt" else None)


KEYS = ("style", "n_mels", "sample_rate", "hop_length", "n_fft", "win_length", "f_min", "f_max")


def check_same_mel(made: MelConfig, wanted: MelConfig, maker: str, vocoder: str) -> None:
    """The acoustic model `maker` makes the mels vocoder `vocoder` expects, or MelMismatch naming the differences."""
    diff = [f"{k} {getattr(made, k)!r} vs {getattr(wanted, k)!r}" for k in KEYS
            if getattr(made, k) != getattr(wanted, k)]
    if diff:
        raise MelMismatch(f"{maker} makes mels the vocoder {vocoder} does not expect ({', '.join(diff)}): the vocoder "
                          f"expects {describe(wanted)}. Train the acoustic model with data.mel = \"{wanted.style}\", "
                          f"data.sample_rate = {wanted.sample_rate}, data.hop_length = {wanted.hop_length}, or use a "
                          f"vocoder trained on {made.style} mels at {made.sample_rate} Hz, hop {made.hop_length}")
