"""DDNM (null-space projection of the clean estimate) and Pi-GDM (pseudoinverse guidance): closed forms on
linear-Gaussian denoisers where the conditional is known, sampling on them, and the completion methods
built on them for a waveform gap, an image hole and video frames."""
import dataclasses
import math

import pytest
import torch

from multidiff.core import Denoiser, repaint_schedule, sample
from multidiff.core.inverse import PseudoinverseGuided, null_space_projection
from multidiff.core.oracle import GaussianOracle
from multidiff.engine.config import to_toml
from multidiff.modalities.base import Modality, Trained
from multidiff.modalities.sections import DiffusionConfig
from multidiff.pipelines.complete import METHODS, CompletionSampling, complete, with_steps

from conftest import noise
from helpers.denoisers import CorrelatedGaussian

pytestmark = pytest.mark.usefixtures("one_thread")


def abar_at(sched, t: float) -> float:
    return float(sched.alpha_bar_at(torch.tensor([t], dtype=torch.float64)))


# ---- Pi-GDM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("t", [50.0, 400.0, 900.0])
def test_pigdm_is_the_exact_conditional_mean_for_unit_variance_gaussian_data(linear, prediction, t):
    """x0 ~ N(mu, I), pixels independent: p(x0 | x_t) is exactly N(x0_hat, r_t^2 I) with Pi-GDM's r_t^2, so its
    guided estimate must be E[x0 | x_t, y] exactly -- the known value where observed, x0_hat elsewhere --
    in the VP view and the VE view of the same state."""
    den = Denoiser(GaussianOracle(linear, 0.3, 1.0, prediction), linear, prediction)
    shape = (3, 2, 5)
    mask = (torch.rand(1, 1, 5, generator=torch.Generator().manual_seed(1)) > 0.4).double()
    known = noise(*shape, seed=5)
    guided = PseudoinverseGuided(den, mask, known)
    z, ab = noise(*shape), abar_at(linear, t)
    want = mask * known + (1 - mask) * den.vp(z, torch.tensor([t]), ab).x0
    est = guided.vp(z, torch.tensor([t]), ab)
    torch.testing.assert_close(est.x0, want, rtol=1e-5, atol=1e-6)  # (t reaches the model as float32)
    torch.testing.assert_close(est.eps, (z - ab ** 0.5 * est.x0) / (1 - ab) ** 0.5)  # a consistent pair
    sigma_ve = ((1 - ab) / ab) ** 0.5
    torch.testing.assert_close(guided(z / ab ** 0.5, sigma_ve, torch.tensor([t])), want, rtol=1e-5, atol=1e-6)


def test_pigdm_matches_its_closed_form_for_a_linear_denoiser(linear):
    """x0 = A z: J_z = A, so the guided estimate is x0 + (w / alpha) A^T m (k - x0) -- both entries move
    (the known one towards k, the unknown one through the correlation); per-sample levels too."""
    model, w, k = CorrelatedGaussian(linear, 0.8), 1.7, 1.5
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    known = torch.tensor([[[k, 0.0]]], dtype=torch.float64).expand(2, 1, 2)
    guided = PseudoinverseGuided(Denoiser(model, linear, "x0"), mask, known, w)
    z, ts = noise(2, 1, 2), [300.0, 700.0]
    abar = torch.tensor([abar_at(linear, t) for t in ts], dtype=torch.float64)
    est = guided.vp(z, torch.tensor(ts), abar)
    sigma_ve = ((1 - abar) / abar).sqrt()  # the same states in VE coordinates: x = z / alpha
    ve = guided(z / abar.sqrt().view(-1, 1, 1), sigma_ve, torch.tensor(ts))
    for i, t in enumerate(ts):
        A, a = model.A(t)[0], abar[i].sqrt()
        x0 = z[i, 0] @ A.T
        want = x0 + (w / a) * A.T @ torch.stack([k - x0[0], torch.zeros((), dtype=torch.float64)])
        torch.testing.assert_close(est.x0[i, 0], want, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ve[i, 0], want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_pigdm_alone_samples_the_exact_conditional_of_gaussian_data(linear, sampler):
    """No replacement at all: the guidance alone must bring the observed entries to the known values and
    leave the independent entries as the data's: exactly what unguided sampling makes of them from the same
    noise (whose distribution, N(0.3, 1) up to the sampler's own error, tests/test_samplers.py checks)."""
    n, mu = 20_000, 0.3
    den = Denoiser(GaussianOracle(linear, mu, 1.0), linear)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    known = torch.full((n, 1, 2), -1.2, dtype=torch.float64)
    x = sample(PseudoinverseGuided(den, mask, known), noise(n, 1, 2), sampler, steps=50,
               generator=torch.Generator().manual_seed(0))
    plain = sample(den, noise(n, 1, 2), sampler, steps=50, generator=torch.Generator().manual_seed(0))
    assert (x[..., 0] + 1.2).abs().max() < 1e-6 and (plain[..., 0] + 1.2).abs().mean() > 0.5
    torch.testing.assert_close(x[..., 1], plain[..., 1], rtol=0, atol=1e-9)
    assert abs(x[..., 1].mean().item() - mu) < 0.05 and abs(x[..., 1].std().item() - 1.0) < 0.05


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m"])
def test_pigdm_samples_close_to_the_exact_conditional_of_correlated_data(linear, sampler):
    """Correlated data, first entry known: the second entry's exact conditional is N(rho k, 1 - rho^2), so
    the mean squared distance to rho k of perfect samples is 1 - rho^2. Replacement alone leaves it far
    above that; Pi-GDM (approximate here: the true posterior covariance is not r_t^2 I) comes close.
    Measured: ddim 0.41 -> 0.11, ddpm 0.33 -> 0.17, dpmpp_2m 0.46 -> 0.18 (exact 0.0975)."""
    rho, n = 0.95, 2000
    den = Denoiser(CorrelatedGaussian(linear, rho), linear, "x0")
    known = torch.zeros(n, 1, 2, dtype=torch.float64)
    known[..., 0] = torch.linspace(-1.5, 1.5, n, dtype=torch.float64).view(-1, 1)
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    err = lambda x: (x[..., 1] - rho * known[..., 0]).pow(2).mean().item()
    kw = dict(steps=25, mask=mask, known=known)
    plain = err(sample(den, noise(n, 1, 2), sampler, generator=torch.Generator().manual_seed(0), **kw))
    guided = err(sample(den, noise(n, 1, 2), sampler, pigdm=1.0, replace=False,
                        generator=torch.Generator().manual_seed(0), **kw))
    exact = 1 - rho ** 2
    assert guided < 0.55 * plain and 0.8 * exact < guided < 2.0 * exact, (plain, guided, exact)


def test_pigdm_needs_gradients_through_the_model(linear):
    model = CorrelatedGaussian(linear, 0.8)

    class NoGrad(torch.nn.Module):
        @torch.no_grad()
        def forward(self, x, t):
            return model(x, t)

    mask, known = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs gradients through the model"):
        PseudoinverseGuided(Denoiser(NoGrad(), linear, "x0"), mask, known).vp(noise(1, 1, 2), torch.tensor([4.0]), 0.5)


# ---- DDNM ---------------------------------------------------------------------------------------------
def test_null_space_projection_is_the_range_null_space_decomposition():
    """A = A^+ = diag(m): A^+ y + (I - A^+ A) x0 = m y + (1 - m) x0, idempotent, and A x0' = y."""
    mask = (torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    y, x0 = noise(2, 3, 4, 4, seed=1), noise(2, 3, 4, 4, seed=2)
    project = null_space_projection(mask, y)
    out = project(x0, 1.0)
    torch.testing.assert_close(out, mask * y + (1 - mask) * x0)
    torch.testing.assert_close(project(out, 0.5), out)
    torch.testing.assert_close(mask * out, mask * y)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("shape,mask_shape", [
    ((2, 1, 32), (2, 1, 32)),            # a waveform gap
    ((2, 3, 8, 8), (2, 1, 8, 8)),        # an image hole, mask broadcast over channels
    ((2, 3, 6, 4, 4), (1, 1, 6, 1, 1)),  # missing video frames
])
def test_ddnm_without_replacement_ends_on_the_known_part(linear, sampler, shape, mask_shape):
    """No known-region replacement of the state: the known part comes only from the projected clean
    estimates, and the last step lands on one, so the sample keeps it (to rounding)."""
    known = noise(*shape, seed=4).clamp(-1, 1)
    mask = (torch.rand(mask_shape, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    x = sample(Denoiser(GaussianOracle(linear, 0.3, 0.5), linear), noise(*shape), sampler, steps=6, mask=mask,
               known=known, null_space=True, replace=False, generator=torch.Generator().manual_seed(0))
    m = mask.expand(shape).bool()
    torch.testing.assert_close(x[m], known[m], rtol=0, atol=1e-9)
    assert not torch.allclose(x[~m], known[~m])


def test_ddnm_time_travel_calls_the_model_once_per_step_down_and_sees_projected_estimates(linear):
    calls, seen = [], []
    base = GaussianOracle(linear, 0.3, 0.5)

    def model(x, t):
        calls.append(1)
        return base(x, t)

    shape = (2, 3, 4, 4)
    known = noise(*shape, seed=9).clamp(-1, 1)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1
    x = sample(Denoiser(model, linear), noise(*shape), "ddim", steps=20, eta=0.85, mask=mask, known=known,
               null_space=True, replace=False, repaint=(5, 3), generator=torch.Generator().manual_seed(0),
               callback=lambda info: seen.append(info["denoised"]))
    sched = repaint_schedule(20, 5, 3)
    assert len(calls) == len(seen) == sum(b < a for a, b in zip(sched[:-1], sched[1:]))
    assert all(torch.equal(x0[..., :2], known[..., :2]) for x0 in seen)
    torch.testing.assert_close(x[..., :2], known[..., :2], rtol=0, atol=1e-9)


def test_ddnm_time_travel_harmonises_better_than_without(linear):
    """Correlated data, first entry known: each pass of time travel lets the unknown entry catch up with
    the projected known one. Measured (ddim, eta 0.85, 25 steps): 0.32 without, 0.19 with (5, 3)."""
    rho, n = 0.95, 2000
    den = Denoiser(CorrelatedGaussian(linear, rho), linear, "x0")
    known = torch.zeros(n, 1, 2, dtype=torch.float64)
    known[..., 0] = torch.linspace(-1.5, 1.5, n, dtype=torch.float64).view(-1, 1)
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    err = lambda x: (x[..., 1] - rho * known[..., 0]).pow(2).mean().item()
    kw = dict(steps=25, eta=0.85, mask=mask, known=known, null_space=True, replace=False)
    without = err(sample(den, noise(n, 1, 2), "ddim", generator=torch.Generator().manual_seed(0), **kw))
    travel = err(sample(den, noise(n, 1, 2), "ddim", repaint=(5, 3), generator=torch.Generator().manual_seed(0), **kw))
    assert travel < 0.75 * without, (without, travel)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pigdm=1.0), "Pi-GDM guidance needs `mask` and `known`"),
    (dict(null_space=True), r"null-space projection \(DDNM\) needs `mask` and `known`"),
    (dict(mask=torch.ones(2, 1, 4), known=torch.zeros(2, 1, 4), pigdm=0.0), "weight must be > 0"),
    (dict(mask=torch.ones(2, 1, 4), known=torch.zeros(2, 1, 4), replace=False), "mask would be ignored"),
])
def test_bad_inverse_input(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(Denoiser(GaussianOracle(linear, 0.3, 0.5), linear), noise(2, 1, 4), "ddim", steps=4, **kwargs)


# ---- the completion methods, on any signal ----------------------------------------------------------
class CountingOracle(torch.nn.Module):
    def __init__(self, sched):
        super().__init__()
        self.base, self.calls, self.with_grad = GaussianOracle(sched, 0.1, 0.6, "v"), 0, 0

    def forward(self, x, t, **cond):
        self.calls += 1
        self.with_grad += torch.is_grad_enabled()
        return self.base(x, t)


def oracle_run(linear_steps: int = 200):
    """A Trained of the protocol's defaults around the exact oracle: what complete() sees of a run."""
    diffusion = DiffusionConfig(schedule="linear", timesteps=linear_steps, prediction="v")
    model = CountingOracle(diffusion.build_schedule())
    return Trained(Modality(), {"diffusion": diffusion}, model, None), model


@pytest.mark.parametrize("shape,mask_shape", [((2, 1, 64), (1, 1, 64)), ((2, 3, 8, 8), (2, 1, 8, 8)),
                                              ((1, 3, 6, 4, 4), (1, 1, 6, 1, 1))])
@pytest.mark.parametrize("method", ["ddnm", "pigdm"])
def test_completion_methods_fill_gaps_holes_and_frames_and_keep_the_known_part(shape, mask_shape, method):
    trained, model = oracle_run()
    cfg = with_steps(CompletionSampling(), 8)
    known = noise(*shape, seed=3, dtype=torch.float32).clamp(-1, 1)
    mask = torch.ones(mask_shape)
    mask[:, :, 2:5] = 0  # samples of a gap, rows of an image, frames of a clip
    x = complete(trained, method, known, mask, cfg, torch.device("cpu"), False, torch.Generator().manual_seed(0))
    m = mask.expand(shape[0], 1, *shape[2:]).expand(shape).bool()
    assert torch.equal(x[m], known[m]) and bool((x[~m] != known[~m]).any()) and x.abs().max() <= 1
    # model calls: DDNM with time travel (8 steps, windows of 5 sampled twice): 8 + 5; Pi-GDM: 8, each with a VJP
    assert (model.calls, model.with_grad) == ((13, 0) if method == "ddnm" else (8, 8))


def test_completion_settings_are_checked_and_new_keys_leave_run_hashes_alone():
    with pytest.raises(ValueError, match=r"inpaint.ddnm_sampler = 'heun'.*ddnm_travel_repeat = 1"):
        CompletionSampling(ddnm_sampler="heun")
    CompletionSampling(ddnm_sampler="heun", ddnm_travel_repeat=1)  # no time travel: any sampler
    for bad, match in ((dict(pigdm_weight=0.0), "pigdm_weight"), (dict(ddnm_eta=-1.0), "ddnm_eta"),
                       (dict(ddnm_steps=0), "ddnm_steps"), (dict(ddnm_travel_length=0), "ddnm_travel_length")):
        with pytest.raises(ValueError, match=match):
            CompletionSampling(**bad)
    cfg = with_steps(CompletionSampling(), 7)
    assert cfg.ddnm_steps == cfg.pigdm_steps == cfg.replace_steps == 7
    identity = to_toml({"inpaint": CompletionSampling()}, identity=True)
    assert "ddnm" not in identity and "pigdm" not in identity
    assert "ddnm_steps = 9" in to_toml({"inpaint": dataclasses.replace(CompletionSampling(), ddnm_steps=9)},
                                       identity=True)
    _, steps, extra = METHODS["ddnm"].options(CompletionSampling(ddnm_sampler="ddpm"))
    assert "eta" not in extra and extra["repaint"] == (5, 2) and not math.isnan(steps)
