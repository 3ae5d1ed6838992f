"""One clear ValueError for every mistake a user can make when sampling."""
import pytest
import torch

from multidiff.core import Denoiser, Schedule, sample

from conftest import noise, oracle


@pytest.fixture
def den(linear):
    return Denoiser(oracle(linear), linear)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="plms"), "unknown sampler 'plms'"),
    (dict(spacing="cosine"), "unknown spacing 'cosine'"),
    (dict(steps=1001), "exceeds the schedule's T=1000"),
    (dict(steps=-3), "positive integer"),
    (dict(sampler="euler", eta=0.5), "eta applies to"),
    (dict(sampler="ddim", eta=-1.0), "eta must be >= 0"),
    (dict(sampler="ddpm", variance="large"), "unknown ddpm variance"),
])
def test_bad_sampling_options(den, kwargs, match):
    kwargs = {"sampler": "ddim", "steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample(den, noise(2, 1, 4), **kwargs)


def test_bad_noise(den):
    with pytest.raises(ValueError, match=r"\[B, C, \*dims\]"):
        sample(den, torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        sample(den, torch.full((2, 1, 4), float("nan")))


def test_unknown_prediction(linear):
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        Denoiser(oracle(linear), linear, "score")


def test_nan_from_the_model_is_named(linear):
    den = Denoiser(lambda x, t: x * float("nan"), linear)
    with pytest.raises(ValueError, match="NaN/inf at timestep"):
        sample(den, noise(2, 1, 4), "euler", steps=5)


def test_model_output_of_the_wrong_shape(linear):
    den = Denoiser(lambda x, t: x[:, :1], linear)
    with pytest.raises(ValueError, match=r"output must have the input's shape \(2, 3, 4\)"):
        sample(den, noise(2, 3, 4), "ddim", steps=5)


def test_schedule_sigma_max_for_karras_on_zero_snr_is_finite():
    z = Schedule.linear().rescale_zero_terminal_snr()
    assert torch.isfinite(z.karras_sigmas(5)).all()
