"""Mel consistency (data/mel_consistency.py) on real espeak-ng speech, in both mel styles."""
import subprocess

import pytest
import torch

from multidiff.data.audio import read_audio
from multidiff.data.mel import MelConfig, griffin_lim, mel_spectrogram
from multidiff.data.mel_consistency import MelConsistency


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Mel consistency keeps the envelope of speech."], check=True)
    x = read_audio(str(path), 22050)
    return x[:, :x.shape[1] // 256 * 256][None]  # [1, 1, L]


def mel_error(x, mel, cfg) -> float:
    """Mean |difference| of the feature itself (its own log scale), over all bins."""
    return float((mel_spectrogram(x, cfg) - mel).abs().mean())


@pytest.mark.parametrize("style", ["lmnt", "hifigan"])
def test_speech_that_already_has_the_mel_is_left_almost_alone(speech, style):
    cfg = MelConfig.preset(style)
    mel = mel_spectrogram(speech, cfg)
    out = MelConsistency(mel, cfg, iterations=2)(speech)
    assert out.shape == speech.shape
    assert ((out - speech).norm() / speech.norm()) < 0.05


@pytest.mark.parametrize("style", ["lmnt", "hifigan"])
def test_noise_is_pulled_onto_the_mel_and_closer_than_griffin_lim(speech, style):
    """From white noise: the error in the feature falls with every round of iterations, and after 32
    it is below Griffin-Lim's from the same mel with twice the iterations (GL imposes a linear
    magnitude guessed from the mel; this only asks for the mel)."""
    cfg = MelConfig.preset(style)
    mel = mel_spectrogram(speech, cfg)
    x = torch.randn(speech.shape, generator=torch.Generator().manual_seed(0)) * 0.1
    errors = [mel_error(x, mel[None], cfg)]
    project = MelConsistency(mel, cfg, iterations=8)
    for _ in range(4):
        x = project(x)
        errors.append(mel_error(x, mel[None], cfg))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    gl = griffin_lim(mel[0], cfg, n_iter=64)[None]
    assert errors[-1] < mel_error(gl, mel[None], cfg) < errors[0] / 4


def test_mismatched_shapes_are_refused(speech):
    cfg = MelConfig()
    mel = mel_spectrogram(speech, cfg)
    with pytest.raises(ValueError, match="do not match audio"):
        MelConsistency(mel, cfg)(speech[..., :-256])
    with pytest.raises(ValueError, match=r"mel must be \[B, 80, frames\]"):
        MelConsistency(mel[:, :40], cfg)
    with pytest.raises(ValueError, match="iterations"):
        MelConsistency(mel, cfg, iterations=0)
