"""Mel spectrograms for vocoders, in the two conventions people's mels come in.

style "lmnt"    lmnt-com/diffwave's preprocess.py: torchaudio's MelSpectrogram (centered frames,
                reflect padding, window-normalized magnitude, HTK mel scale), 20*log10 - 20 dB,
                mapped from [-100, 0] dB to [0, 1]. What DiffWave checkpoints are trained on.
style "hifigan" HiFi-GAN / Tacotron 2's log-mel: reflect-pad (n_fft - hop) / 2 on each side, frames
                not centered, magnitude sqrt(re^2 + im^2 + 1e-9), slaney mel basis (librosa's
                default), natural log clamped at 1e-5. What most TTS acoustic models output.

Framing rule (both styles): a clip of L samples has L // hop frames, and frame i belongs to samples
[i * hop, (i + 1) * hop) -- how DiffWave's upsampler pairs them (it stretches each frame over hop
samples). The trailing L % hop samples have no frame of their own, so a vocoder's training pairs are
(mel, audio[..., :frames * hop]). "lmnt" frame i is centered on sample i * hop (torchaudio's
center=True; its extra last frame, centered on sample L, is dropped); "hifigan" frame i is
centered on the middle of its hop.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torchaudio

STYLES = ("lmnt", "hifigan")


@dataclass(frozen=True)
class MelConfig:
    """Every number of the feature. MelConfig() is DiffWave's exact setting at 22.05 kHz; use
    MelConfig.preset(style, sample_rate, hop_length) for either style's own defaults."""
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float = 0.0          # 0 = sample_rate / 2 (DiffWave's f_max, at any sample rate)
    style: str = "lmnt"         # "lmnt" | "hifigan"

    @classmethod
    def preset(cls, style: str = "lmnt", sample_rate: int = 22050, hop_length: int = 256) -> "MelConfig":
        """lmnt: window 4 * hop, n_fft 1024, 20 Hz .. Nyquist (DiffWave derives these from the hop and
        rate); hifigan: n_fft = window = 1024, 0 .. 8000 Hz (HiFi-GAN's V1 config for 22.05 kHz)."""
        if style == "lmnt":
            return cls(sample_rate, 1024, hop_length, hop_length * 4, 80, 20.0, 0.0, "lmnt")
        if style == "hifigan":
            return cls(sample_rate, 1024, hop_length, 1024, 80, 0.0, 8000.0, "hifigan")
        raise ValueError(f"mel style must be one of: {', '.join(STYLES)}; got {style!r}")

    @property
    def fmax(self) -> float:
        return self.f_max or self.sample_rate / 2

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"MelConfig: {msg}")
        if self.style not in STYLES:
            bad(f"style must be one of: {', '.join(STYLES)}; got {self.style!r}")
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
        if not self.hop_length <= self.win_length <= self.n_fft:
            bad(f"need hop_length <= win_length <= n_fft, got {self.hop_length}, {self.win_length}, {self.n_fft}")
        if not 0 <= self.f_min < self.fmax <= self.sample_rate / 2:
            bad(f"need 0 <= f_min < f_max <= sample_rate / 2 = {self.sample_rate / 2:g}, "
                f"got f_min={self.f_min}, f_max={self.fmax}")
        if self.style == "hifigan" and (self.n_fft - self.hop_length) % 2:
            bad("hifigan pads (n_fft - hop_length) / 2 on each side, so n_fft - hop_length must be even")

    def to_dict(self) -> dict:
        return asdict(self)


def mel_spectrogram(wav: torch.Tensor, cfg: MelConfig = MelConfig()) -> torch.Tensor:
    """wav [L], [1, L] (mono) or [B, 1, L] in [-1, 1] -> float32 [n_mels, L // hop] or
    [B, n_mels, L // hop] (the channel dim is dropped). See the module docstring for the framing."""
    if wav.dim() == 3 and wav.shape[1] == 1:
        x = wav[:, 0]
    elif wav.dim() == 2 and wav.shape[0] == 1 or wav.dim() == 1:
        x = wav.reshape(1, -1)
    else:
        raise ValueError(f"mel_spectrogram takes mono audio [L], [1, L] or [B, 1, L]; got shape {tuple(wav.shape)}")
    length = x.shape[-1]
    need = cfg.n_fft // 2 + 1 if cfg.style == "lmnt" else (cfg.n_fft - cfg.hop_length) // 2 + 1
    if length < max(need, cfg.hop_length):
        raise ValueError(f"audio of {length} samples is too short for a mel spectrogram with n_fft={cfg.n_fft}, "
                         f"hop={cfg.hop_length}: give at least {max(need, cfg.hop_length)} samples")
    x = x.float()
    with torch.no_grad():
        mel = _lmnt(x, cfg) if cfg.style == "lmnt" else _hifigan(x, cfg)
    mel = mel[..., :length // cfg.hop_length]
    return mel[0] if wav.dim() < 3 else mel


def silence_mel(cfg: MelConfig) -> torch.Tensor:
    """[n_mels] the mel of digital silence (0 for lmnt, log(1e-5) for hifigan): what a short clip's
    mel is padded with."""
    return _silence(_key(cfg)).clone()


@functools.lru_cache(maxsize=8)
def _silence(key: tuple) -> torch.Tensor:
    return mel_spectrogram(torch.zeros(1, 2 * key[1]), MelConfig(*key))[:, 0].contiguous()


def _key(cfg: MelConfig) -> tuple:
    return tuple(asdict(cfg).values())


def _lmnt(x: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    spec = _lmnt_transform(_key(cfg), str(x.device))(x)
    spec = 20 * torch.log10(torch.clamp(spec, min=1e-5)) - 20
    return torch.clamp((spec + 100) / 100, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _lmnt_transform(key: tuple, device: str) -> torchaudio.transforms.MelSpectrogram:
    cfg = MelConfig(*key)
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
        f_min=cfg.f_min, f_max=cfg.fmax, n_mels=cfg.n_mels, power=1.0, normalized=True).to(device)


def _hifigan(x: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    pad = (cfg.n_fft - cfg.hop_length) // 2
    x = torch.nn.functional.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
    window, basis = _hifigan_tensors(_key(cfg), str(x.device))
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=False, normalized=False, onesided=True, return_complex=True)
    mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    return torch.log(torch.clamp(basis @ mag, min=1e-5))


@functools.lru_cache(maxsize=8)
def _hifigan_tensors(key: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = MelConfig(*key)
    # librosa.filters.mel's default (slaney scale, slaney area normalization), built by torchaudio
    fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.fmax, cfg.n_mels,
                                               cfg.sample_rate, norm="slaney", mel_scale="slaney")
    return torch.hann_window(cfg.win_length, device=device), fb.T.contiguous().to(device)


def mel_magnitude(mel: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Undo the feature's log and normalisation: the mel filterbank magnitudes (lmnt: the
    window-normalised STFT's, floored at 1e-4 by the [0, 1] clamp; hifigan: floored at 1e-5)."""
    return 10 ** ((mel * 100 - 80) / 20) if cfg.style == "lmnt" else mel.exp()


def filterbank(cfg: MelConfig) -> torch.Tensor:
    """[n_fft // 2 + 1, n_mels] the mel filterbank the feature uses (lmnt: torchaudio's HTK
    triangles, unnormalised; hifigan: librosa's slaney basis), so mel magnitude = fb.T @ |STFT|."""
    if cfg.style == "lmnt":
        return torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.fmax, cfg.n_mels,
                                                     cfg.sample_rate)
    return _hifigan_tensors(_key(cfg), "cpu")[1].T.clone()


def griffin_lim(mel: torch.Tensor, cfg: MelConfig, n_iter: int = 64) -> torch.Tensor:
    """The classic non-neural vocoder, as a baseline: undo the log/normalisation, map mel bands back
    to linear frequency with the filterbank's pseudo-inverse (clamped at 0), then Griffin-Lim phase
    reconstruction (Griffin & Lim 1984; torchaudio's fast variant with momentum 0.99).
    mel [n_mels, frames] -> waveform [1, frames * hop]."""
    mag = mel_magnitude(mel, cfg)
    fb = filterbank(cfg)
    if cfg.style == "lmnt":
        window_norm = torch.hann_window(cfg.win_length).pow(2).sum().sqrt()
        center, normalized = True, True
    else:
        window_norm, center, normalized = 1.0, False, False
    linear = (torch.linalg.pinv(fb.T.double()) @ mag.double()).clamp(min=0).float()  # [n_stft, frames]
    gl = torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, n_iter=n_iter, win_length=cfg.win_length,
                                          hop_length=cfg.hop_length, power=1.0, momentum=0.99)
    # torchaudio's GriffinLim assumes an un-normalised, centred STFT
    audio = gl(linear * window_norm if normalized else linear)
    if not center:  # hifigan frame i is centred on sample i * hop + hop / 2, torchaudio's on i * hop
        audio = torch.nn.functional.pad(audio, (cfg.hop_length // 2, 0))
    frames = mel.shape[-1]
    audio = torch.nn.functional.pad(audio, (0, max(0, frames * cfg.hop_length - audio.shape[-1])))
    return audio[None, :frames * cfg.hop_length].clamp(-1, 1)
