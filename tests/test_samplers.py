"""Samplers against the exact Gaussian oracle: convergence, order, equivalences, contracts."""
import math

import pytest
import torch

from multidiff.benchmarks.sampler_accuracy import error_table, nfe_to_reach, ode_error
from multidiff.core import SAMPLERS, Denoiser, sample

from conftest import noise, oracle


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_converges_to_the_data_distribution(linear, sampler):
    den = Denoiser(oracle(linear), linear, "eps")
    z = noise(25_000, 1, 2)
    errs = []
    for steps in (5, 1000 if sampler in ("ddpm", "euler_ancestral") else 250):
        x = sample(den, z, sampler, steps=steps, spacing="leading", generator=torch.Generator().manual_seed(3))
        errs.append(abs(x.mean().item() - 0.3) + abs(x.std().item() - 0.5))
    assert errs[1] < 0.012, errs  # 50k values: standard error of each moment ~ 0.002
    assert errs[1] < errs[0]


@pytest.mark.parametrize("sampler", ["euler", "ddim", "heun", "dpmpp_2m"])
def test_deterministic_samplers_converge_to_the_exact_ode_solution(linear, sampler):
    e = [ode_error(linear, sampler, linear.karras_sigmas(n), n=64) for n in (20, 80)]
    assert e[1] < e[0] and e[1] < 0.02, e


def test_second_order_samplers_need_fewer_model_calls():
    rows = error_table(steps=(10, 20, 40, 80, 160))
    need = {s: nfe_to_reach(rows, s, 1e-2) for s in ("euler", "ddim", "heun", "dpmpp_2m")}
    assert need["heun"] < 0.6 * need["euler"] and need["dpmpp_2m"] < 0.6 * need["euler"], need
    # and the observed order: doubling the steps divides the error by ~2 (1st) or ~4 (2nd)
    err = {(r["sampler"], r["steps"]): r["rms_error"] for r in rows}
    assert 1.7 < err["euler", 80] / err["euler", 160] < 2.3
    assert 3.0 < err["heun", 80] / err["heun", 160] < 6.0
    assert 3.0 < err["dpmpp_2m", 80] / err["dpmpp_2m", 160] < 6.5


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "karras"])
def test_ddim_eta0_equals_euler_on_the_same_levels(linear, spacing):
    den = Denoiser(oracle(linear), linear, "eps")
    z = noise(8, 3, 4)
    a = sample(den, z, "ddim", steps=12, spacing=spacing)
    b = sample(den, z, "euler", steps=12, spacing=spacing)
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_prediction_types_are_exactly_interchangeable(linear, sampler):
    """The same optimal model expressed as eps, x0 or v predictions gives the same samples."""
    z = noise(4, 2, 3)
    outs = [sample(Denoiser(oracle(linear, p), linear, p), z, sampler, steps=10,
                   generator=torch.Generator().manual_seed(1)) for p in ("eps", "x0", "v")]
    assert torch.allclose(outs[0], outs[1], atol=1e-8) and torch.allclose(outs[0], outs[2], atol=1e-8)


@pytest.mark.parametrize("shape", [(3, 2), (3, 1, 16), (2, 3, 4, 4), (2, 3, 3, 4, 4)])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_any_trailing_dims_and_inputs_untouched(linear, shape, sampler):
    den = Denoiser(oracle(linear), linear)
    z = noise(*shape, dtype=torch.float32)
    before = z.clone()
    x = sample(den, z, sampler, steps=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == z.shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(z, before)


@pytest.mark.parametrize("sampler", ["ddpm", "euler_ancestral", "ddim"])
def test_stochastic_samplers_are_reproducible_with_a_generator(linear, sampler):
    den = Denoiser(oracle(linear), linear)
    z = noise(2, 3, 4)
    kw = {"eta": 1.0} if sampler == "ddim" else {}
    a = sample(den, z, sampler, steps=10, generator=torch.Generator().manual_seed(5), **kw)
    b = sample(den, z, sampler, steps=10, generator=torch.Generator().manual_seed(5), **kw)
    c = sample(den, z, sampler, steps=10, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_ddpm_variances_differ_only_in_noise_size(linear):
    den = Denoiser(oracle(linear), linear)
    z = noise(20_000, 1, 2)
    outs = {v: sample(den, z, "ddpm", steps=1000, variance=v, generator=torch.Generator().manual_seed(1))
            for v in ("beta", "posterior")}
    for x in outs.values():
        assert abs(x.mean().item() - 0.3) < 0.02 and abs(x.std().item() - 0.5) < 0.015


def test_full_1000_step_ddpm_matches_the_seed_formula(linear):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z, written out."""
    model = oracle(linear)
    den = Denoiser(model, linear)
    z = noise(2, 1, 3)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ours = sample(den, z, "ddpm", steps=1000, variance="beta", generator=g1)
    x = z.clone()
    for t in range(999, -1, -1):
        b, ab = linear.betas[t].item(), linear.alphas_cumprod[t].item()
        eps = model(x, torch.full((2,), float(t)))
        x = (x - b / math.sqrt(1 - ab) * eps) / math.sqrt(1 - b)
        if t > 0:
            x = x + math.sqrt(b) * torch.randn(x.shape, generator=g2, dtype=x.dtype)
    assert torch.allclose(ours, x, atol=1e-8)


def test_zero_terminal_snr_needs_v_or_x0_and_then_works(linear):
    z_sched = linear.rescale_zero_terminal_snr()
    z = noise(20_000, 1, 2)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        sample(Denoiser(oracle(z_sched, "eps"), z_sched, "eps"), z, "ddim", steps=10, spacing="trailing")
    den = Denoiser(oracle(z_sched, "v"), z_sched, "v")
    for sampler, steps in (("ddim", 1000), ("euler", 1000), ("dpmpp_2m", 50), ("dpmpp_2m", 1000)):
        x = sample(den, z, sampler, steps=steps, spacing="trailing")
        assert abs(x.mean().item() - 0.3) < 0.01 and abs(x.std().item() - 0.5) < 0.01, (sampler, steps)


def test_callback_and_per_sample_levels(linear):
    den = Denoiser(oracle(linear), linear)
    seen = []
    sample(den, noise(2, 1, 4), "heun", steps=6, callback=lambda info: seen.append(info["t"]))
    assert seen == linear.timesteps(6, "leading").tolist()
    # the Denoiser view takes per-sample sigmas [B]: each row as if denoised alone
    x = noise(3, 2, 2)
    sig = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    joint = den(x, sig)
    for i in range(3):
        assert torch.allclose(joint[i : i + 1], den(x[i : i + 1], sig[i]), atol=1e-12)


def test_clip_x0_bounds_every_estimate(linear):
    wild = oracle(linear, "x0", mean=3.0, std=0.1)
    seen = []
    x = sample(Denoiser(wild, linear, "x0"), noise(2, 1, 4), "dpmpp_2m", steps=8, clip_x0=1.0,
               callback=lambda info: seen.append(info["denoised"].abs().max().item()))
    assert max(seen) <= 1.0 and x.abs().max().item() <= 1.0 + 1e-9
