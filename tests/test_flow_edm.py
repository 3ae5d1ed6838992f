"""Flow matching and EDM: their level maps, coefficients and draws against closed forms; the exact
Gaussian oracle under every sampler, guidance and masked generation; a tiny training run."""
import math

import pytest
import torch

from multidiff.core import (EDM, SAMPLERS, Denoiser, EDMSchedule, FlowMatching, FlowSchedule, GeneratorDraws,
                            GuidedModel, build_objective, default_spacing, sample)
from multidiff.core.oracle import GaussianOracle
from multidiff.engine.config import to_toml
from multidiff.modalities.sections import DiffusionConfig, batch_loss

from conftest import noise

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = 0.3, 0.5


def flow(T=1000, **kw):
    return FlowMatching(FlowSchedule(T), **kw)


def edm(T=1000, **kw):
    return EDM(EDMSchedule(T), **kw)


OBJECTIVES = {"flow": flow, "edm": edm}


def oracle_den(name, **kw):
    obj = OBJECTIVES[name](**kw)
    return Denoiser.of(GaussianOracle(obj, MEAN, STD), obj), obj


class Random(torch.nn.Module):
    """A fixed nonlinear net of (x_in, c_noise): any mismatch of input scaling or noise input shows."""

    def __init__(self, channels=2):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = torch.randn(channels, channels, generator=g, dtype=torch.float64) * 0.5

    def forward(self, x, t, y=None):
        bc = (-1, *[1] * (x.ndim - 1))
        out = torch.tanh(torch.einsum("oc,bc...->bo...", self.w.to(x.dtype), x)) + (t / 700).view(bc)
        return out if y is None else out + 0.1 * y.view(bc).to(x.dtype)


# ---- level maps ------------------------------------------------------------------------------------
def test_flow_schedule_maps_time_sigma_and_the_network_input():
    s = FlowSchedule(1000)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    sig = s.sigma_at(t * 999)
    assert torch.allclose(sig[:-1], (t / (1 - t))[:-1], rtol=1e-12) and math.isinf(sig[-1])
    assert torch.allclose(s.t_at(sig), t * 999, rtol=1e-12, atol=1e-12)
    assert torch.allclose(s.alpha_bar_at(t * 999), 1 / (1 + sig**2)) and s.alpha_bar_at(999.0).item() == 0.0
    lv = s.levels(4, "linspace")  # N uniform steps in t from 1: t = 1, 3/4, 1/2, 1/4, then 0
    assert lv.ts.tolist() == [999.0, 749.25, 499.5, 249.75] and math.isinf(lv.sigmas[0])
    assert torch.allclose(lv.sigmas[1:], torch.tensor([3.0, 1.0, 1 / 3, 0.0], dtype=torch.float64))
    assert all(torch.equal(s.levels(4, sp).sigmas, lv.sigmas) for sp in ("leading", "trailing"))
    k = s.levels(6, "karras")
    assert k.sigmas[0].item() == pytest.approx(80.0) and k.sigmas[-2].item() == pytest.approx(0.002)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.sigma_at(1000.0)


def test_edm_schedule_maps_log_sigma_affinely_onto_the_timestep_range():
    s = EDMSchedule(1000, 0.002, 80.0)
    sig = torch.tensor([0.002, 0.01, 0.5, 7.0, 80.0], dtype=torch.float64)
    c = s.t_at(sig)
    assert c[0].item() == 0.0 and c[-1].item() == pytest.approx(999.0, rel=1e-12)
    # c_noise is affine in the paper's 0.25 ln(sigma)
    paper = 0.25 * sig.log()
    slope = (c[1:] - c[:-1]) / (paper[1:] - paper[:-1])
    assert torch.allclose(slope, slope[0].expand(4), rtol=1e-10)
    assert torch.allclose(s.sigma_at(c), sig, rtol=1e-12)
    assert s.t_at(torch.tensor([1e-5, 1e3, math.inf])).tolist() == [0.0, 999.0, 999.0]  # clamped to the table
    # Karras et al. eq. 5 with rho = 7 over [sigma_min, sigma_max]
    lv = s.levels(18, "karras")
    i = torch.arange(18, dtype=torch.float64)
    want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(lv.sigmas[:-1], want, rtol=1e-12) and lv.sigmas[-1].item() == 0.0
    uni = s.levels(5, "linspace")  # uniform in log sigma
    assert torch.allclose(uni.sigmas[:-1].log().diff(), torch.full((4,), math.log(0.002 / 80) / 4, dtype=torch.float64))


# ---- EDM against the paper -----------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_coefficients_are_the_papers_formulas(sigma_data):
    obj = edm(sigma_data=sigma_data)
    sd = sigma_data
    for s in (0.002, 0.03, 0.5, 1.0, 7.5, 80.0):
        c = obj.precondition(s)
        assert c.c_skip == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-14)
        assert c.c_out == pytest.approx(s * sd / math.sqrt(sd**2 + s**2), rel=1e-14)
        assert c.c_in == pytest.approx(1 / math.sqrt(sd**2 + s**2), rel=1e-14)
        assert obj.loss_weight(s) == pytest.approx((s**2 + sd**2) / (s * sd) ** 2, rel=1e-14)
        assert obj.loss_weight(s) * c.c_out**2 == pytest.approx(1.0, rel=1e-12)
        # the VP-state coefficients are the same map on x_vp = a x_ve: c_in_vp = c_in / a, c_skip_vp = c_skip / a
        a = 1 / math.sqrt(1 + s * s)
        v = obj.precondition_vp(a, s * a)
        assert v.c_in * a == pytest.approx(c.c_in, rel=1e-12) and v.c_skip * a == pytest.approx(c.c_skip, rel=1e-12)
        assert v.c_out == pytest.approx(c.c_out, rel=1e-12)
    per = obj.precondition(torch.tensor([0.1, 2.0], dtype=torch.float64))  # per-sample levels
    assert torch.allclose(per.c_in, 1 / (torch.tensor([0.1, 2.0], dtype=torch.float64) ** 2 + sd**2).sqrt())


def test_edm_loss_is_the_weighted_x0_loss_of_the_preconditioned_net():
    """NVlabs' EDMLoss: lambda(sigma) ||D(y + n; sigma) - y||^2 with D = c_skip x + c_out F(c_in x; c_noise)."""
    obj, net = edm(), Random()
    x0 = noise(5, 2, 8, seed=1)
    n = noise(5, 2, 8, seed=2)
    sigma = torch.tensor([0.002, 0.1, 0.7, 5.0, 80.0], dtype=torch.float64)
    got = obj.loss(net, x0, t=sigma, noise=n, reduction="none")
    want = []
    for i, s in enumerate(sigma.tolist()):
        x = x0[i:i + 1] + s * n[i:i + 1]
        c = obj.precondition(s)
        D = c.c_skip * x + c.c_out * net(c.c_in * x, obj.c_noise(s).reshape(1).float())
        want.append(obj.loss_weight(s) * (D - x0[i:i + 1]).square().mean())
    assert torch.allclose(got, torch.stack(want).to(got.dtype), rtol=1e-4)


def test_edm_weight_makes_the_optimal_loss_one_at_every_level():
    """With data std = sigma_data the exact denoiser's weighted loss is lambda * Var[x0 | x] = 1 at every sigma:
    EDM's 'unit loss' at initialisation of the optimum."""
    obj = edm(sigma_data=STD)
    orc = GaussianOracle(obj, MEAN, STD)
    x0 = MEAN + STD * noise(20_000, 1, 1, seed=4)
    for s in (0.01, 0.3, 2.0, 40.0):
        loss = obj.loss(orc, x0, t=torch.full((20_000,), s, dtype=torch.float64), noise=noise(20_000, 1, 1, seed=5))
        assert loss.item() == pytest.approx(1.0, abs=0.03), s


# ---- the training level draws ------------------------------------------------------------------------
def test_log_normal_sigma_and_logit_normal_t_have_the_right_moments():
    n = 200_000
    sig = edm(p_mean=-0.7, p_std=1.5).draw_t(GeneratorDraws(n, torch.Generator().manual_seed(0)))
    assert sig.dtype == torch.float64 and sig.shape == (n,) and bool((sig > 0).all())
    assert sig.log().mean().item() == pytest.approx(-0.7, abs=0.015)
    assert sig.log().std().item() == pytest.approx(1.5, abs=0.015)
    logit_normal = flow(t_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = logit_normal.draw_t(GeneratorDraws(n, torch.Generator().manual_seed(1)))
    logit = (t / (1 - t)).log()
    assert bool(((t > 0) & (t < 1)).all())
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01) and logit.std().item() == pytest.approx(0.8, abs=0.01)
    u = flow().draw_t(GeneratorDraws(n, torch.Generator().manual_seed(2)))
    assert bool(((u >= 0) & (u < 1)).all()) and u.mean().item() == pytest.approx(0.5, abs=0.005)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.002)


class Recording(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_batch_loss_draws_the_level_then_the_noise_from_the_step_random(name):
    cfg = DiffusionConfig(objective=name, timesteps=100, **({"t_sampling": "logit_normal"} if name == "flow" else {}))
    sched, net = cfg.build_schedule(), Recording()
    x0 = noise(4, 1, 6, seed=3, dtype=torch.float32)
    batch_loss(net, cfg, sched, x0, GeneratorDraws(4, torch.Generator().manual_seed(9)))
    g = torch.Generator().manual_seed(9)
    z, n = torch.randn(4, generator=g).double(), torch.randn(4, 1, 6, generator=g)
    if name == "flow":
        t = torch.sigmoid(z)
        want_x, want_c = (1 - t).view(-1, 1, 1).float() * x0 + t.view(-1, 1, 1).float() * n, t * 99
    else:
        s = (-1.2 + 1.2 * z).exp()
        want_x = (x0 + s.view(-1, 1, 1).float() * n) / (s**2 + 0.25).sqrt().view(-1, 1, 1).float()
        want_c = (s.log() - math.log(0.002)) / math.log(80 / 0.002) * 99
    (x, c), = net.calls
    assert torch.allclose(x, want_x, atol=1e-6) and torch.allclose(c.double(), want_c, atol=1e-4)


# ---- the one denoiser view -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flow", "edm"])
def test_a_perfect_net_has_zero_loss_and_the_denoiser_reads_x0_back(name):
    """Training view and sampling view agree: the net that outputs the training target gives D(x) = x0."""
    obj = OBJECTIVES[name]()
    x0, n = noise(4, 2, 5, seed=1), noise(4, 2, 5, seed=2)
    level = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)
    if name == "edm":
        level = torch.tensor([0.01, 0.4, 3.0, 60.0], dtype=torch.float64)
    target = obj.training_target(x0, level, n)
    x_in, c_noise = obj.network_input(x0, level, n)
    perfect = lambda x, t: target  # noqa: E731
    assert obj.loss(perfect, x0, t=level, noise=n).item() < 1e-20
    sigma = obj.sigma_of(level)
    den = Denoiser.of(lambda x, t: (torch.testing.assert_close(x, x_in), target)[1], obj)
    assert torch.allclose(den(x0 + sigma.view(-1, 1, 1) * n, sigma, c_noise), x0, atol=1e-12)
    a = (1 + sigma**2).rsqrt()  # and the VP view of the same state
    x_vp = a.view(-1, 1, 1) * x0 + (sigma * a).view(-1, 1, 1) * n
    est = den.vp(x_vp, c_noise, a**2)
    assert torch.allclose(est.x0, x0, atol=1e-12) and torch.allclose(est.eps, n, atol=1e-10)


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_vp_and_ve_views_of_any_net_agree(name):
    obj = OBJECTIVES[name]()
    den = Denoiser.of(Random(), obj)
    x = noise(3, 2, 4, seed=6)
    for s in (0.01, 0.5, 3.0, 200.0):
        a = 1 / math.sqrt(1 + s * s)
        t = float(obj.c_noise(s))
        assert torch.allclose(den.vp(x * a, t, a * a).x0, den(x, s, t), atol=1e-12)
    # pure noise (abar = 0) is defined in the VP view, as flow's t = 1 / EDM's sigma -> inf limit
    est = den.vp(x, 999.0, 0.0)
    assert torch.isfinite(est.x0).all() and torch.equal(est.eps, x)


def test_flow_oracle_is_the_exact_velocity_field_and_both_oracles_the_exact_denoiser():
    obj = flow()
    orc = GaussianOracle(obj, MEAN, STD)
    x = noise(6, 1, 3, seed=2)
    for t in (0.02, 0.3, 0.8, 1.0):
        a, b = 1 - t, t  # x_t = a x0 + b eps
        var = a * a * STD**2 + b * b
        ex0 = MEAN + a * STD**2 * (x - a * MEAN) / var
        eeps = b * (x - a * MEAN) / var
        c = torch.full((6,), t * 999, dtype=torch.float64)
        assert torch.allclose(orc(x, c), eeps - ex0, atol=1e-5), t  # c_noise reaches the oracle in float32
    for name in ("flow", "edm"):
        den, _ = oracle_den(name)
        for s in (0.01, 0.4, 5.0, 70.0):
            x_ve = MEAN + math.sqrt(STD**2 + s * s) * x
            assert torch.allclose(den(x_ve, s), den.model.posterior_mean(x_ve, s), rtol=1e-4, atol=1e-5), (name, s)


# ---- samplers with the exact oracle ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flow", "edm"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_converges_to_the_data_distribution(name, sampler):
    den, _ = oracle_den(name)
    z = noise(25_000, 1, 2)
    errs = []
    for steps in (5, 1000 if sampler in ("ddpm", "euler_ancestral") else 250):
        x = sample(den, z, sampler, steps=steps, spacing=default_spacing(sampler),
                   generator=torch.Generator().manual_seed(3))
        errs.append(abs(x.mean().item() - MEAN) + abs(x.std().item() - STD))
    assert errs[1] < 0.012, errs
    assert errs[1] < errs[0]


@pytest.mark.parametrize("sampler", ["euler", "ddim", "heun", "dpmpp_2m"])
def test_deterministic_samplers_converge_to_the_exact_ode_solution_whatever_the_objective(sampler):
    z = noise(64, 1, 1, seed=8)
    outs = {}
    for name in ("flow", "edm"):
        den, obj = oracle_den(name)
        errs = []
        for n in (20, 80):
            levels = obj.schedule.levels(n, "karras")
            x = sample(den, z, sampler, sigmas=levels.sigmas)
            s0 = levels.sigmas[0].item()
            exact = den.model.ode_solution(z * math.sqrt(1 + s0 * s0), s0)
            errs.append((x - exact).square().mean().sqrt().item())
        outs[name] = x
        first_order = sampler in ("euler", "ddim")
        assert errs[1] < errs[0] / (3 if first_order else 12) and errs[1] < (0.02 if first_order else 0.002), errs
    # the same levels and an exact denoiser: the objective a model was trained with is invisible to a sampler
    assert torch.allclose(outs["flow"], outs["edm"], atol=1e-5)


def flow_euler_by_hand(v, x, ts):
    """Rectified flow's sampler: x <- x + (t_next - t) v(x, t), from the first t down to 0."""
    ts = list(ts) + [0.0]
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * v(x, t)
    return x


def flow_heun_by_hand(v, x, ts):
    ts = list(ts) + [0.0]
    for t, t_next in zip(ts[:-1], ts[1:]):
        d = v(x, t)
        x_e = x + (t_next - t) * d
        x = x_e if t_next == 0 else x + (t_next - t) * (d + v(x_e, t_next)) / 2
    return x


def test_plain_flow_euler_is_the_existing_samplers_on_the_mapped_levels():
    T, N = 1000, 12
    obj = flow(T)
    orc = GaussianOracle(obj, MEAN, STD)
    den = Denoiser.of(orc, obj)
    v = lambda x, t: orc(x, torch.full((x.shape[0],), t * (T - 1), dtype=torch.float64))  # noqa: E731
    z = noise(16, 2, 3, seed=1)
    # N uniform steps from t = 1 (pure noise) to 0: exactly DDIM (the VP view handles t = 1 exactly)
    ts = [1 - i / N for i in range(N)]
    hand = flow_euler_by_hand(v, z, ts)
    assert torch.allclose(sample(den, z, "ddim", steps=N, spacing="linspace"), hand, atol=1e-10)
    # euler integrates the same ODE in VE coordinates, x_ve = x_t / (1 - t): exactly the same steps...
    ts = [0.98 - 0.97 * i / N for i in range(N)]
    u = torch.tensor(ts, dtype=torch.float64)
    start = z * math.sqrt((1 - ts[0]) ** 2 + ts[0] ** 2)  # the same point as sample()'s VE start
    hand = flow_euler_by_hand(v, start, ts)
    ours = sample(den, z, "euler", timesteps=u * (T - 1), sigmas=u / (1 - u))
    assert torch.allclose(ours, hand, atol=1e-10)
    # ...and from t = 1, where VE coordinates stand in sigma = 4096 for inf, to ~1/4096
    ours = sample(den, z, "euler", steps=N, spacing="linspace")
    hand = flow_euler_by_hand(v, z, [1 - i / N for i in range(N)])
    assert (ours - hand).abs().max().item() < 2e-3
    # Heun's trapezoid in t and in sigma differ at second order; on the same grid both reach the exact ODE
    # solution at second order (a trapezoid in sigma over the stand-in step 4096 -> 9 from t = 1 is poor,
    # which is why the VE samplers default to 'karras' levels, sigma_max = 80)
    for n in (10, 40):
        u = torch.tensor([0.98 - 0.97 * i / n for i in range(n)], dtype=torch.float64)
        start = z * math.sqrt((1 - u[0].item()) ** 2 + u[0].item() ** 2)
        s0 = (u[0] / (1 - u[0])).item()
        exact = orc.ode_solution(start / (1 - u[0].item()), s0)
        e_hand = (flow_heun_by_hand(v, start, u.tolist()) - exact).abs().max().item()
        e_ours = (sample(den, z, "heun", timesteps=u * (T - 1), sigmas=u / (1 - u)) - exact).abs().max().item()
        if n == 10:
            e10 = (e_hand, e_ours)
    # (their last step, to t = 0, is an Euler step: the error falls ~10x, not 16x, for 4x the steps)
    assert e_hand < e10[0] / 8 and e_ours < e10[1] / 8 and max(e_hand, e_ours) < 5e-3, (e10, e_hand, e_ours)


# ---- guidance and masked generation ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flow", "edm"])
def test_classifier_free_guidance_on_the_raw_output_is_guidance_of_the_clean_estimate(name):
    obj = OBJECTIVES[name]()
    net = Random()
    y, null = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    guided = Denoiser.of(GuidedModel(net, 2.5, {"y": null}), obj)
    plain = Denoiser.of(net, obj)
    x = noise(3, 2, 4, seed=3)
    for s in (0.05, 1.0, 30.0):
        c, u = plain(x, s, y=y), plain(x, s, y=null)
        assert torch.allclose(guided(x, s, y=y), u + 2.5 * (c - u), atol=1e-12)
    out = sample(plain, x, "dpmpp_2m", steps=6, cond={"y": y}, guidance_scale=2.5, uncond={"y": null})
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["flow", "edm"])
@pytest.mark.parametrize("method", ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "repaint",
                                    "reconstruction"])
def test_masked_generation_keeps_the_known_region_exactly(name, method):
    den, _ = oracle_den(name)
    shape = (2, 1, 12)
    known = noise(*shape, seed=4)
    mask = (torch.arange(12) < 5).double().view(1, 1, 12)
    kw = dict(mask=mask, known=known, generator=torch.Generator().manual_seed(0))
    sampler = {"repaint": "ddpm", "reconstruction": "euler"}.get(method, method)
    if method == "repaint":
        kw["repaint"] = (2, 2)
    if method == "reconstruction":
        kw["reconstruction"] = 2.0
    x = sample(den, noise(*shape, seed=5), sampler, steps=8, **kw)
    assert torch.equal(x[..., :5], known[..., :5]) and torch.isfinite(x).all()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_an_estimate_projection_sees_the_pure_noise_level_of_flow(sampler):
    den, _ = oracle_den("flow")
    seen = []

    def project(x0, sigma):
        seen.append(float(sigma))
        return x0.clamp(-0.2, 0.2)

    x = sample(den, noise(2, 1, 4), sampler, steps=5, spacing="linspace", x0_projection=project)
    assert seen[0] == (math.inf if sampler in ("ddpm", "ddim") else 4096.0)  # t = 1: VP view inf, VE stand-in
    assert torch.isfinite(x).all()
    assert bool((x.abs() <= 0.2 + 1e-12).all())  # the last step lands on the projected estimate


def test_bad_continuous_levels():
    with pytest.raises(ValueError, match="integer >= 2"):
        FlowSchedule(1)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        EDMSchedule(1000, 1.0, 0.5)
    with pytest.raises(ValueError, match="unknown spacing 'cosine'"):
        EDMSchedule().levels(5, "cosine")
    with pytest.raises(ValueError, match="positive integer"):
        FlowSchedule().levels(0)
    lv = EDMSchedule().levels(sigmas=[10.0, 1.0, 0.1])  # explicit levels work as for a Schedule
    assert torch.allclose(EDMSchedule().sigma_at(lv.ts), torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64))


def test_masked_generation_fills_the_unknown_part_from_the_data_distribution():
    den, _ = oracle_den("flow")
    shape = (4000, 1, 4)
    known = torch.full(shape, 0.9, dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 4)
    x = sample(den, noise(*shape), "euler", steps=100, spacing="linspace", mask=mask, known=known)
    gen = x[..., 2:]  # the oracle's elements are independent: the unknown part is N(mean, std^2)
    assert abs(gen.mean().item() - MEAN) < 0.03 and abs(gen.std().item() - STD) < 0.03


# ---- [diffusion] config ------------------------------------------------------------------------------------
def test_config_selects_the_objective_and_its_keys():
    f = DiffusionConfig(objective="flow", timesteps=200, t_sampling="logit_normal", logit_mean=0.2, logit_std=0.9,
                        weighting="min_snr", loss_type="l1")
    obj = f.build_objective()
    assert type(obj) is FlowMatching and type(obj.schedule) is FlowSchedule and obj.schedule.T == 200
    assert (obj.t_sampling, obj.logit_mean, obj.logit_std, obj.weighting, obj.loss_type) == \
        ("logit_normal", 0.2, 0.9, "min_snr", "l1")
    e = DiffusionConfig(objective="edm", sigma_data=0.7, p_mean=-1.0, p_std=1.1, sigma_min=0.01, sigma_max=50.0)
    obj = e.build_objective()
    assert type(obj) is EDM and (obj.sigma_data, obj.p_mean, obj.p_std) == (0.7, -1.0, 1.1)
    assert (obj.schedule.sigma_min, obj.schedule.sigma_max) == (0.01, 50.0)
    den = e.build_denoiser(Random(), clip_x0=1.0)
    assert den.objective.name == "edm" and den.clip_x0 == 1.0 and den.schedule.sigma_max == 50.0
    assert DiffusionConfig().build_denoiser(Random()).prediction == "eps"


def test_the_new_keys_leave_existing_runs_identity_alone():
    old = to_toml({"diffusion": DiffusionConfig(prediction="v")}, identity=True)
    assert "objective" not in old and "sigma" not in old and "logit" not in old
    assert "objective = \"flow\"" in to_toml({"diffusion": DiffusionConfig(objective="flow")}, identity=True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(objective="score"), r"diffusion.objective = 'score' is not one of \('vp', 'flow', 'edm'\)"),
    (dict(objective="flow", t_sampling="beta"),
     r"diffusion.t_sampling = 'beta' is not one of \('uniform', 'logit_normal'\)"),
    (dict(objective="edm", sigma_data=0.0), "diffusion.sigma_data = 0.0 must be > 0"),
    (dict(objective="edm", sigma_min=1.0, sigma_max=0.5), "diffusion.sigma_max = 0.5 must exceed"),
    (dict(objective="flow", prediction="v"), "diffusion.prediction = 'v' applies to objective 'vp'"),
    (dict(objective="edm", zero_terminal_snr=True), "diffusion.zero_terminal_snr = True applies to objective 'vp'"),
    (dict(objective="edm", t_sampling="logit_normal"),
     "diffusion.t_sampling = 'logit_normal' applies to objective 'flow'"),
    (dict(p_std=2.0), "diffusion.p_std = 2.0 applies to objective 'edm', not to diffusion.objective = 'vp'"),
    (dict(sigma_max=10.0), "diffusion.sigma_max = 10.0 applies to objective 'flow' or 'edm'"),
])
def test_bad_config_names_the_key_and_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**kwargs)


def test_objectives_refuse_the_wrong_schedule():
    with pytest.raises(ValueError, match="objective 'flow' runs over a FlowSchedule, got Schedule"):
        build_objective(DiffusionConfig().build_schedule(), "flow")
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        build_objective(EDMSchedule(), "score")


# ---- the networks take a continuous noise level ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet2d", "unet3d", "diffwave"])
def test_the_networks_take_fractional_noise_inputs_smoothly(kind):
    from multidiff.models import unet2d, unet3d
    from multidiff.models.diffwave import model as diffwave
    unet = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], num_heads=2,
                norm_groups=8, image_size=8, dropout=0.0)
    net, shape, T = {
        "unet2d": (lambda: unet2d.UNet2D(unet2d.UNet2DConfig(**unet)), (2, 1, 8, 8), 1000),
        "unet3d": (lambda: unet3d.UNet3D(unet3d.UNet3DConfig(**unet, frames=2)), (2, 1, 2, 8, 8), 1000),
        "diffwave": (lambda: diffwave.DiffWave(residual_channels=8, residual_layers=4, dilation_cycle=2, n_mels=0,
                                               hop_length=16), (2, 1, 32), 50),
    }[kind]
    net = net().eval()
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised output layers would hide the noise input
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for sched in (FlowSchedule(T), EDMSchedule(T)):
        c = sched.levels(7, "karras").ts.float()  # fractional, within [0, T - 1]
        assert bool((c != c.round()).any())
        with torch.no_grad():
            for ci in c.tolist():
                out = [net(x, torch.full((2,), ci + d if ci + 0.5 <= T - 1 else ci - d)) for d in (0.0, 1e-3, 0.5)]
                assert torch.isfinite(out[0]).all()
                near, far = (out[1] - out[0]).abs().max(), (out[2] - out[0]).abs().max()
                assert near <= 0.02 * far + 1e-6, (ci, near.item(), far.item())


# ---- a tiny training run ---------------------------------------------------------------------------------------
class TinyConv(torch.nn.Module):
    def __init__(self, c=24):
        super().__init__()
        from multidiff.nn import TimestepEmbedding
        self.embed = TimestepEmbedding(c)
        self.inp = torch.nn.Conv1d(1, c, 5, padding=2)
        self.mid = torch.nn.Conv1d(c, c, 5, padding=2)
        self.out = torch.nn.Conv1d(c, 1, 5, padding=2)

    def forward(self, x, t):
        h = torch.nn.functional.silu(self.inp(x) + self.embed(t)[:, :, None])
        h = h + torch.nn.functional.silu(self.mid(h))
        return self.out(h)


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_a_tiny_training_run_lowers_the_loss(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    grid = torch.linspace(0, 2 * math.pi, 32)
    data = torch.sin(grid * (1 + torch.randint(0, 3, (256, 1), generator=g)) +
                     torch.rand(256, 1, generator=g) * 6.28)[:, None] * 0.8
    cfg = DiffusionConfig(objective=name, timesteps=1000)
    sched, net = cfg.build_schedule(), TinyConv()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def held_out():  # the same levels and noise before and after
        with torch.no_grad():
            return batch_loss(net, cfg, sched, data[:128], GeneratorDraws(128, torch.Generator().manual_seed(7))).item()

    before = held_out()
    for step in range(250):
        idx = torch.randint(0, 256, (32,), generator=g)
        loss = batch_loss(net, cfg, sched, data[idx], GeneratorDraws(32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    assert after < 0.6 * before, (before, after)
