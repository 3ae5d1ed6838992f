"""A modality from outside the package (tests/helpers/sines.py: sums of sines, a 1-D conv denoiser)
trains, samples and fills gaps through the real CLI, named by its recipe alone: nothing in multidiff/
knows it. docs/extending.md walks through the same file."""
import math

import numpy as np
import pytest

from multidiff.cli import main

from helpers.sines import SinesData, SinesDataset

RECIPE = """
[recipe]
kind = "sines"
modality = "helpers.sines:SINES"
description = "sums of sines, a fourth modality"

[data]
n = 256
length = 64

[model]
channels = 32
layers = 4

[diffusion]
schedule = "cosine"
timesteps = 200
prediction = "v"

[train]
steps = 400
batch_size = 32
lr = 2e-3
warmup_steps = 20
checkpoint_every = 400
log_every = 50

[sample]
sampler = "dpmpp_2m"
steps = 20
n = 64
"""


def cli(*args):
    assert main([str(a) for a in args]) == 0


def low_frequency_share(x: np.ndarray, cycles: int = 5) -> float:
    """Share of a signal's power (mean removed) in the first `cycles` frequencies: ~1 for these sums of
    1-4-cycle sines, ~cycles / (length / 2) for white noise."""
    p = np.abs(np.fft.rfft(x - x.mean(-1, keepdims=True), axis=-1)) ** 2
    return float((p[..., 1:cycles + 1].sum(-1) / p[..., 1:].sum(-1)).mean())


@pytest.fixture(scope="module")
def sines_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sines")
    (tmp / "sines.toml").write_text(RECIPE)
    cli("train", tmp / "sines.toml", "--out", tmp / "run")
    return tmp


def test_the_recipe_alone_brings_the_modality_and_its_samples_look_like_the_data(sines_run):
    run = sines_run / "run"
    assert (run / "stages/sample.json").is_file() and (run / "loss.png").is_file()
    samples = np.load(run / "samples/final.npy")
    real = SinesDataset(SinesData(n=256, length=64), "test").x[:, 0].numpy()
    noise = np.random.default_rng(0).standard_normal((64, 64))
    assert samples.shape == (64, 64) and np.abs(samples).max() <= 1
    # measured: real 1.00, samples ~0.98 after 400 steps, white noise 0.16
    assert low_frequency_share(real) > 0.99 and low_frequency_share(noise) < 0.25
    assert low_frequency_share(samples) > 0.9


def test_sample_and_inpaint_commands_serve_it(sines_run, tmp_path):
    run = sines_run / "run"
    cli("sample", run, "--n", 3, "--frames", 96, "--steps", 8, "--out", tmp_path / "long.npy")
    assert np.load(tmp_path / "long.npy").shape == (3, 96)   # longer than trained: the conv net is length-free
    real = SinesDataset(SinesData(n=256, length=64), "test").x[:6, 0].numpy()
    gap, keep = np.r_[20:36], np.r_[0:20, 36:64]
    samples = np.load(run / "samples/final.npy")  # a sample pasted into the gap: what ignoring the context gives
    pasted = np.mean([rms(s[gap] - x[gap]) for x in real for s in samples])
    for method in ("replace", "repaint", "reconstruction"):
        errors = []
        for i, x in enumerate(real):
            np.save(tmp_path / "signal.npy", x)
            cli("inpaint", run, "--input", tmp_path / "signal.npy", "--gap", "20:36", "--method", method, "--steps", 20,
                "--seed", i, "--out", tmp_path / "filled.npy", "--overwrite")  # the previous signal's fill
            out = np.load(tmp_path / "filled.npy")
            assert np.array_equal(out[keep], x[keep]) and not np.array_equal(out[gap], x[gap])
            errors.append(rms(out[gap] - x[gap]))
        if method == "reconstruction":  # the fill follows the known part (measured: 0.52 against 0.82 pasted)
            assert np.mean(errors) < 0.85 * pasted, (np.mean(errors), pasted)


def rms(x) -> float:
    return math.sqrt(float(np.mean(np.square(x))))


def test_a_wrong_modality_name_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(RECIPE.replace("helpers.sines:SINES", "helpers.sines:NOPE"))
    assert main(["train", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "recipe.modality = 'helpers.sines:NOPE' cannot be imported" in err and len(err.splitlines()) == 1
