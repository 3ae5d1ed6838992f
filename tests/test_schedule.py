"""Schedules against their closed forms; the forward process; spacings; fractional steps."""
import math

import pytest
import torch

from multidiff.core import SCHEDULES, Schedule
from multidiff.modalities.sections import DiffusionConfig

from conftest import noise


def test_linear_matches_ddpm_closed_form(linear):
    assert linear.betas.dtype == torch.float64 and linear.T == 1000
    t = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(linear.betas, 1e-4 + (0.02 - 1e-4) * t / 999, atol=1e-15)
    ab = torch.tensor([math.prod(1 - b for b in linear.betas[: i + 1].tolist()) for i in (0, 10, 500, 999)],
                      dtype=torch.float64)
    assert torch.allclose(linear.alphas_cumprod[[0, 10, 500, 999]], ab, rtol=1e-12)
    ac = linear.alphas_cumprod
    assert torch.allclose(linear.sigmas, ((1 - ac) / ac).sqrt(), rtol=1e-14)
    assert torch.allclose(linear.snr(t), ac / (1 - ac), rtol=1e-10)


def test_scaled_linear_and_explicit_betas():
    s = Schedule.scaled_linear(1000)
    assert torch.allclose(s.betas.sqrt(), torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64))
    dw = Schedule.from_betas(torch.linspace(1e-4, 0.05, 50))
    assert dw.T == 50 and dw.betas.dtype == torch.float64
    assert dw.betas[0].item() == pytest.approx(1e-4, rel=1e-6) and dw.betas[-1].item() == pytest.approx(0.05, rel=1e-6)


def test_cosine_alpha_bar_is_the_cosine_law_until_the_cap():
    T, s = 1000, 0.008
    c = Schedule.cosine(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    capped = (c.betas >= 0.999).nonzero()
    first_cap = int(capped[0]) if len(capped) else T
    assert first_cap > 990  # only the very end is capped
    want = torch.tensor([f(t + 1) / f(0) for t in range(first_cap)], dtype=torch.float64)
    assert torch.allclose(c.alphas_cumprod[:first_cap], want, rtol=1e-9, atol=1e-12)
    assert c.betas.max().item() <= 0.999


def test_sigmoid_alpha_bar_closed_form():
    T = 1000
    sg = Schedule.sigmoid(T)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    abar = lambda u: (sig(3) - sig(6 * u - 3)) / (sig(3) - sig(-3))  # noqa: E731
    want = torch.tensor([abar((t + 1) / T) for t in range(T - 1)], dtype=torch.float64)
    assert torch.allclose(sg.alphas_cumprod[: T - 1], want, rtol=1e-9, atol=1e-12)


def test_zero_terminal_snr_rescale(linear):
    z = linear.rescale_zero_terminal_snr()
    assert z.zero_terminal_snr and z.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[0].item() == pytest.approx(linear.alphas_cumprod[0].item(), rel=1e-12)
    # sqrt(abar) is an affine map of the original: constant ratio of differences
    a, b = linear.alphas_cumprod.sqrt(), z.alphas_cumprod.sqrt()
    ratio = (b[1:] - b[:-1]) / (a[1:] - a[:-1])
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-8)
    assert math.isinf(z.sigma_at(999).item()) and z.t_at(float("inf")).item() == 999


def test_forward_iteration_matches_add_noise_exactly_and_in_distribution(linear):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, iterated, has the closed form's moments."""
    t_end = 300
    # exact moment recursion: mean coefficient and variance of x_t given x0
    m, v = 1.0, 0.0
    for b in linear.betas[: t_end + 1].tolist():
        m, v = m * math.sqrt(1 - b), (1 - b) * v + b
    ab = linear.alphas_cumprod[t_end].item()
    assert m == pytest.approx(math.sqrt(ab), rel=1e-12) and v == pytest.approx(1 - ab, rel=1e-12)
    # Monte Carlo: iterate the seed's step on many samples, compare with add_noise samples
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = x0.clone()
    for b in linear.betas[: t_end + 1].tolist():
        x = math.sqrt(1 - b) * x + math.sqrt(b) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    closed = linear.add_noise(x0[:, None], torch.full((200_000,), float(t_end)), noise(200_000, 1, seed=2))[:, 0]
    se = math.sqrt(1 - ab) / math.sqrt(200_000)
    for sample in (x, closed):
        assert abs(sample.mean().item() - math.sqrt(ab) * 0.7) < 5 * se
        assert abs(sample.var().item() - (1 - ab)) < 0.01 * (1 - ab)


def test_add_noise_per_sample_t(linear):
    x0, eps = noise(3, 2, 4, seed=1), noise(3, 2, 4, seed=2)
    t = torch.tensor([0.0, 10.0, 999.0])
    out = linear.add_noise(x0, t, eps)
    for i in range(3):
        ab = linear.alphas_cumprod[int(t[i])]
        assert torch.allclose(out[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * eps[i])


@pytest.mark.parametrize("spacing,want", [
    ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
    ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
])
def test_spacings(linear, spacing, want):
    assert linear.timesteps(10, spacing).tolist() == want


def test_linspace_keeps_fractional_timesteps(linear):
    ts = linear.timesteps(7, "linspace")
    assert torch.allclose(ts, torch.linspace(999, 0, 7, dtype=torch.float64))
    assert ts[1].item() != round(ts[1].item())


def test_fractional_timesteps_interpolate_log_sigma(linear):
    s = linear.sigmas
    assert torch.allclose(linear.sigma_at(torch.arange(1000.0)), s, rtol=1e-12)
    mid = linear.sigma_at(torch.tensor([10.5, 700.25]))
    assert mid[0].item() == pytest.approx(math.sqrt(s[10].item() * s[11].item()), rel=1e-12)
    assert mid[1].item() == pytest.approx(math.exp(0.75 * math.log(s[700]) + 0.25 * math.log(s[701])), rel=1e-12)
    t = torch.tensor([0.0, 0.3, 1.5, 417.77, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(linear.t_at(linear.sigma_at(t)), t, atol=1e-9)
    # outside the schedule: clamp to its ends
    assert linear.t_at(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]


def test_karras_sigmas_closed_form(linear):
    k = linear.karras_sigmas(10, rho=7.0)
    smin, smax = linear.sigmas[0].item(), linear.sigmas[-1].item()
    assert k[0].item() == pytest.approx(smax, rel=1e-12) and k[-1].item() == pytest.approx(smin, rel=1e-12)
    i = 4
    want = (smax ** (1 / 7) + i / 9 * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    assert k[i].item() == pytest.approx(want, rel=1e-12)
    lv = linear.levels(10, "karras")
    assert lv.sigmas[-1].item() == 0.0 and torch.allclose(linear.sigma_at(lv.ts), k, rtol=1e-9)


def test_diffwave_fast_schedule_alignment():
    """lmnt-com/diffwave's 6-step inference schedule on the T=50 training schedule."""
    train = Schedule.from_betas(torch.linspace(1e-4, 0.05, 50, dtype=torch.float64))
    t = train.align_betas([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5])
    assert torch.allclose(t, torch.tensor([0, 0.8941, 4.0867, 10.4518, 22.9925, 42.9186], dtype=torch.float64),
                          atol=5e-5)
    with pytest.raises(ValueError, match="outside the training schedule"):
        train.align_betas([0.9, 0.9, 0.9])


def test_levels_from_explicit_inputs(linear):
    lv = linear.levels(timesteps=[999, 500, 0])
    assert lv.ts.tolist() == [999, 500, 0] and lv.sigmas[-1].item() == 0
    paired = linear.levels(timesteps=[42.5, 7.25], sigmas=[3.0, 0.5])
    assert paired.sigmas.tolist() == [3.0, 0.5, 0.0] and paired.ts.tolist() == [42.5, 7.25]
    by_sigma = linear.levels(sigmas=[10.0, 1.0, 0.1, 0.0])
    assert len(by_sigma) == 3 and torch.allclose(linear.sigma_at(by_sigma.ts), torch.tensor([10.0, 1.0, 0.1],
                                                                                        dtype=torch.float64))


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=1001), "exceeds the schedule's T=1000"),
    (dict(steps=0), "positive integer"),
    (dict(steps=10, spacing="cosine"), "unknown spacing"),
    (dict(timesteps=[0, 500]), "descending"),
    (dict(sigmas=[1.0, 2.0]), "non-increasing"),
    (dict(timesteps=[5, 3], sigmas=[1.0]), "differ in length"),
])
def test_bad_levels(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear.levels(**kwargs)


def test_bad_schedules():
    with pytest.raises(ValueError, match="beta"):
        Schedule.from_betas([0.1, 1.5])
    with pytest.raises(ValueError, match="timesteps must lie"):
        Schedule.linear().sigma_at(1000.5)


def _old_build_schedule(cfg: DiffusionConfig) -> Schedule:
    """DiffusionConfig.build_schedule as an if/elif, before the named-schedule table (verbatim)."""
    T = cfg.timesteps
    if cfg.schedule == "linear":
        s = Schedule.linear(T, cfg.beta_start, cfg.beta_end)
    elif cfg.schedule == "scaled_linear":
        s = Schedule.scaled_linear(T, cfg.beta_start, cfg.beta_end)
    elif cfg.schedule == "cosine":
        s = Schedule.cosine(T)
    else:
        s = Schedule.sigmoid(T)
    return s.rescale_zero_terminal_snr() if cfg.zero_terminal_snr else s


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_named_schedules_are_the_config_schedules(name, zero_terminal_snr):
    for betas in ({}, {"beta_start": 2e-4, "beta_end": 0.05}):
        cfg = DiffusionConfig(schedule=name, timesteps=50, zero_terminal_snr=zero_terminal_snr, **betas)
        assert torch.equal(cfg.build_schedule().betas, _old_build_schedule(cfg).betas)
    # no range given: each constructor's own default
    assert torch.equal(Schedule.named(name, 50).betas, SCHEDULES[name](50).betas)


def test_named_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        Schedule.named("quadratic", 10)
    with pytest.raises(ValueError, match=r"diffusion.schedule = 'quadratic' is not one of \('linear'"):
        DiffusionConfig(schedule="quadratic")
