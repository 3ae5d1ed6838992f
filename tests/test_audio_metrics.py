"""Audio distances: zero for identical audio, grow with distortion, clear errors."""
import math

import pytest
import torch

from multidiff.metrics.audio import (envelope_correlation, log_mel_distance, mr_stft_distance, pause_level_db,
                                    real_time_factor)


def tone(freq=220.0, sr=22050, seconds=1.0):
    t = torch.arange(int(sr * seconds)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t) * (1 + 0.3 * torch.sin(2 * math.pi * 3 * t))


def test_identical_audio_has_zero_distance():
    x = tone()
    assert log_mel_distance(x, x) == 0.0 and mr_stft_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_distances_grow_with_distortion():
    x = tone()
    g = torch.Generator().manual_seed(0)
    d = [(log_mel_distance(x, x + s * torch.randn(x.shape, generator=g)),
          mr_stft_distance(x, x + s * torch.randn(x.shape, generator=g))) for s in (0.001, 0.01, 0.1)]
    assert d[0][0] < d[1][0] < d[2][0] and d[0][1] < d[1][1] < d[2][1]
    # a different pitch is far; a 6 dB quieter copy is 6 dB off on every bin above the floor, 0 below
    assert log_mel_distance(x, tone(440.0)) > d[0][0]
    assert 1.0 < log_mel_distance(x, x / 2) <= 20 * math.log10(2) + 1e-3


def test_length_mismatch_and_rtf():
    with pytest.raises(ValueError, match="differ in length"):
        log_mel_distance(tone(), tone(seconds=0.5))
    assert real_time_factor(0.5, 22050, 22050) == 0.5


def test_griffin_lim_baseline_reproduces_the_mel():
    import subprocess
    import tempfile

    from multidiff.data.audio import read_audio
    from multidiff.data.mel import MelConfig, griffin_lim, mel_spectrogram

    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["espeak-ng", "-w", f"{d}/s.wav", "Griffin and Lim recover phase."], check=True)
        x = read_audio(f"{d}/s.wav", 22050)
    x = x[:, :x.shape[1] // 256 * 256]
    for style, tol in (("lmnt", 0.03), ("hifigan", 0.3)):
        cfg = MelConfig.preset(style)
        m = mel_spectrogram(x, cfg)
        y = griffin_lim(m, cfg, n_iter=32)
        assert y.shape == x.shape
        assert (mel_spectrogram(y, cfg) - m).abs().mean() < tol, style


def test_envelope_correlation_follows_loudness_not_waveform():
    x = tone()
    g = torch.Generator().manual_seed(0)
    noise_shaped = torch.randn(x.shape, generator=g) * x.abs()  # other waveform, same loudness contour
    assert envelope_correlation(x, x) == pytest.approx(1.0)
    assert envelope_correlation(x, noise_shaped) > 0.9
    assert abs(envelope_correlation(x, torch.randn(x.shape, generator=g))) < 0.3


def test_pause_level_is_the_estimates_power_where_the_reference_pauses():
    x = tone()
    x[5120:10240] = 0  # a pause of 20 frames
    peak = x[:5120].reshape(-1, 256).square().mean(1).max()
    est = x.clone()
    est[5120:10240] = 0.01 * torch.randn(5120, generator=torch.Generator().manual_seed(0))
    expected = 10 * math.log10(float(est[5120:10240].square().mean() / peak))
    assert pause_level_db(x, est) == pytest.approx(expected, abs=1e-3)
    assert pause_level_db(x, x) <= -100  # silence stays silent
    assert math.isnan(pause_level_db(tone(), tone()))  # never pauses: no value
