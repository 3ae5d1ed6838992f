"""Step-by-step agreement of our samplers with diffusers' schedulers.

A deterministic, smooth, nonlinear dummy model (as in diffusers' own scheduler
tests) drives both implementations from the same starting state; every
intermediate state our `callback` reports is compared with diffusers'
`prev_sample` after converting coordinates where the two differ (diffusers'
DPMSolverMultistep works in VP space, our dpmpp_2m in VE space).

Both sides use the same schedule: each diffusers scheduler is built from its
usual config (beta_schedule=...), its float32 `alphas_cumprod` is checked
against ours, and then replaced by our float64 one, so that what is compared
is the sampling algorithm rather than float32 rounding of a cumulative
product. DDIM, DDPM and Heun keep the sample's dtype and are compared in
float64; EulerDiscrete, EulerAncestral and DPMSolverMultistep cast to float32
internally and are compared in float32.

See docs/reference_agreement.md for the mapping and the documented differences.
"""
from __future__ import annotations

import math

import pytest
import torch

import diffusers  # noqa: E402  (the dev extra; CI installs it)
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from multidiff.core import Denoiser, Schedule, sample  # noqa: E402

T = 1000
SHAPE = (2, 3, 8, 8)
PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULES = {
    "linear": (Schedule.linear, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    "scaled_linear": (Schedule.scaled_linear, dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
    "cosine": (Schedule.cosine, dict(beta_schedule="squaredcos_cap_v2")),
}
# max |ours - diffusers| allowed, relative to max |diffusers state|
TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def dummy_model(x, t):
    """Smooth and nonlinear in x and t, so every step and every timestep matters. Diffusers passes
    int64 (DDIM/DDPM/DPM) or float32 timesteps, we pass float32; the values agree."""
    t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * torch.tanh(x) * (t / 1000 + 0.1) + 0.1 * x


def noise_like(dtype, seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def make(cls, schedule="linear", pred="eps", T=T, zero_snr=False, **cfg):
    """(our Schedule, diffusers scheduler) for the same training schedule."""
    build, sched_cfg = SCHEDULES[schedule]
    ours = build(T)
    if zero_snr:
        ours = ours.rescale_zero_terminal_snr()
        cfg["rescale_betas_zero_snr"] = True
    ref = cls(num_train_timesteps=T, prediction_type=PRED[pred], **sched_cfg, **cfg)
    ac = ours.alphas_cumprod.clone()
    if zero_snr and float(ref.alphas_cumprod[-1]) > 0:
        # diffusers' VE-type schedulers replace abar_T = 0 by 2**-24 (sigma ~ 4096); keep that stand-in
        ac[-1] = float(ref.alphas_cumprod[-1])
    torch.testing.assert_close(ref.alphas_cumprod.double(), ac, rtol=2e-5, atol=1e-6)
    ref.alphas_cumprod = ac
    ref.alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    ref.betas = 1 - ref.alphas
    if hasattr(ref, "lambda_t"):  # DPMSolverMultistep caches these in __init__
        ref.alpha_t, ref.sigma_t = ac.sqrt(), (1 - ac).sqrt()
        ref.lambda_t = ref.alpha_t.log() - ref.sigma_t.log()
    return ours, ref


def run_ours(S, pred, noise, sampler, **kw):
    """Our final output and the state after every step (in the sampler's own coordinates)."""
    states, ts = [], []

    def cb(info):
        states.append(info["x"].clone())
        ts.append(info["t"])

    out = sample(Denoiser(dummy_model, S, pred), noise, sampler, callback=cb, **kw)
    return out, states, ts


def run_ref(ref, x, generator=None, **step_kw):
    """The standard diffusers denoising loop from state x; returns every prev_sample."""
    if generator is not None:
        step_kw["generator"] = generator
    states = []
    for t in ref.timesteps:
        inp = ref.scale_model_input(x, t)
        out = dummy_model(inp, t.reshape(1).expand(x.shape[0]))
        x = ref.step(out, t, x, **step_kw).prev_sample
        states.append(x)
    return states


def assert_states(ours, ref, dtype, tol=None, start=None, floor=0.0):
    """Every state agrees to `tol` relative to the magnitude of the step's input and output, or to
    the absolute `floor` (for an error made early that the later steps carry along)."""
    assert len(ours) == len(ref), (len(ours), len(ref))
    tol = TOL[dtype] if tol is None else tol
    prev_scale = 1.0 if start is None else float(start.abs().max())
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == dtype and b.dtype == dtype
        err, scale = float((a - b).abs().max()), float(b.abs().max())
        bound = max(tol * max(scale, prev_scale, 1.0), floor)
        assert err <= bound, f"step {i}: max |diff| {err:.3g} > {bound:.3g} (|x| {scale:.3g}, tol {tol:g})"
        prev_scale = scale


def ve_start(levels, noise):
    """Our VE samplers' starting state noise * sqrt(1 + sigma_max^2); diffusers is started from it."""
    return noise * math.sqrt(1 + min(float(levels.sigmas[0]), 4096.0) ** 2)


# ---- schedules --------------------------------------------------------------------
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_training_schedules_match(schedule):
    """diffusers' float32 betas/alphas_cumprod equal ours to float32 precision (checked inside make),
    also after the zero-terminal-SNR rescaling."""
    make(DDIMScheduler, schedule)
    make(DDIMScheduler, schedule, zero_snr=True)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_spacings_match(spacing, steps):
    """Our timesteps equal diffusers' (DDIM/DDPM/Euler/Heun) for leading and trailing; 'linspace'
    agrees with Euler/Heun (fractional), while DDIM/DDPM round it to integers."""
    S = Schedule.linear(T)
    ref = EulerDiscreteScheduler(timestep_spacing=spacing)
    ref.set_timesteps(steps)
    torch.testing.assert_close(S.timesteps(steps, spacing), ref.timesteps.double(), rtol=0, atol=1e-4)
    ddim = DDIMScheduler(timestep_spacing=spacing)
    ddim.set_timesteps(steps)
    expect = S.timesteps(steps, spacing)
    expect = expect.round() if spacing == "linspace" else expect
    assert ddim.timesteps.tolist() == expect.long().tolist()


# ---- DDIM -------------------------------------------------------------------------
DDIM_CFG = dict(clip_sample=False, set_alpha_to_one=True, steps_offset=0)


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 20)])
@pytest.mark.parametrize("pred", list(PRED))
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_ddim(schedule, pred, spacing, steps, eta):
    dtype = torch.float64
    S, ref = make(DDIMScheduler, schedule, pred, timestep_spacing=spacing, **DDIM_CFG)
    noise = noise_like(dtype)
    out, ours, ts = run_ours(S, pred, noise, "ddim", steps=steps, spacing=spacing, eta=eta,
                             generator=torch.Generator().manual_seed(1))
    ref.set_timesteps(steps)
    assert ts == ref.timesteps.double().tolist()
    theirs = run_ref(ref, noise.clone(), eta=eta, generator=torch.Generator().manual_seed(1))
    assert_states(ours, theirs, dtype)
    torch.testing.assert_close(out, theirs[-1], rtol=0, atol=TOL[dtype] * float(out.abs().max()))


def test_ddim_cosine():
    dtype = torch.float64
    S, ref = make(DDIMScheduler, "cosine", "v", timestep_spacing="trailing", **DDIM_CFG)
    noise = noise_like(dtype)
    _, ours, _ = run_ours(S, "v", noise, "ddim", steps=25, spacing="trailing")
    ref.set_timesteps(25)
    assert_states(ours, run_ref(ref, noise.clone()), dtype)


def test_ddim_clipping_uses_consistent_eps():
    """With clipping, we re-derive eps from the clipped x0 (the estimate stays a consistent
    (x0, eps) pair); that is diffusers' DDIM with use_clipped_model_output=True. Its default
    (False) keeps the unclipped eps and gives a different trajectory."""
    dtype = torch.float64
    S, ref = make(DDIMScheduler, "linear", "eps", clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True)
    noise = noise_like(dtype)
    _, ours, _ = run_ours(S, "eps", noise, "ddim", steps=10, clip_x0=1.0)
    ref.set_timesteps(10)
    assert_states(ours, run_ref(ref, noise.clone(), use_clipped_model_output=True), dtype)
    default = run_ref(ref, noise.clone())
    assert float((ours[-1] - default[-1]).abs().max()) > 1e-3


@pytest.mark.parametrize("spacing,steps", [("trailing", 30), ("linspace", 20), ("leading", 30)])
def test_ddim_steps_to_the_next_listed_timestep(spacing, steps):
    """Deliberate difference from diffusers (issue #12633): DDIMScheduler.step always moves from t
    to t - T // N, which is not the next timestep in its own list for 'linspace' spacing or for
    'trailing' spacing when N does not divide T ('leading' timesteps are multiples of T // N, so
    there the two agree). Our ddim goes to the next level in the list; deterministic DDIM on given
    levels is exactly Euler on the same levels in VE coordinates, which pins down the trajectory."""
    dtype = torch.float64
    S = Schedule.linear(T)
    noise = noise_like(dtype)
    levels = S.levels(steps, spacing)
    out_ddim, ddim_states, ts = run_ours(S, "eps", noise, "ddim", steps=steps, spacing=spacing)
    assert ts == levels.ts.tolist()
    # ddim (VP) == euler (VE) on the same levels, state by state: x_VE = x_VP * sqrt(1 + sigma_next^2)
    out_euler, euler_states, ts_e = run_ours(S, "eps", noise, "euler", steps=steps, spacing=spacing)
    assert ts_e == ts
    ddim_as_ve = [x * math.sqrt(1 + float(levels.sigmas[i + 1]) ** 2) for i, x in enumerate(ddim_states)]
    assert_states(ddim_as_ve, euler_states, dtype)
    torch.testing.assert_close(out_ddim, out_euler, rtol=1e-9, atol=1e-9)

    # diffusers' DDIM on its own (here: identical or rounded) timestep list
    _, ref = make(DDIMScheduler, "linear", "eps", timestep_spacing=spacing, **DDIM_CFG)
    ref.set_timesteps(steps)
    listed = ref.timesteps.tolist()
    gaps = {a - b for a, b in zip(listed, listed[1:])}
    theirs = run_ref(ref, noise.clone())
    if gaps == {T // steps}:  # leading: the fixed stride is the list's own stride -> agreement
        assert_states(ddim_states, theirs, dtype)
    else:  # the fixed stride T // N is not the list's stride -> diffusers lands off its own grid
        assert spacing != "leading"
        _, ours_on_their_list, _ = run_ours(S, "eps", noise, "ddim", timesteps=listed)
        gap = float((ours_on_their_list[-1] - theirs[-1]).abs().max())
        assert gap > 1e-3 * float(theirs[-1].abs().max())


# ---- Euler ------------------------------------------------------------------------
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 20), ("linspace", 10)])
@pytest.mark.parametrize("pred", list(PRED))
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_euler(schedule, pred, spacing, steps):
    # linspace with N = 10 gives integer timesteps 0, 111, ..., 999; for fractional ones diffusers
    # interpolates sigma linearly in t (interpolation_type="linear"), we interpolate log(sigma)
    dtype = torch.float32
    S, ref = make(EulerDiscreteScheduler, schedule, pred, timestep_spacing=spacing)
    noise = noise_like(dtype)
    out, ours, ts = run_ours(S, pred, noise, "euler", steps=steps, spacing=spacing)
    ref.set_timesteps(steps)
    torch.testing.assert_close(torch.tensor(ts, dtype=torch.float64), ref.timesteps.double(), rtol=0, atol=1e-4)
    x_T = ve_start(S.levels(steps, spacing), noise)
    theirs = run_ref(ref, x_T)
    assert_states(ours, theirs, dtype, start=x_T)
    torch.testing.assert_close(out, theirs[-1], rtol=0, atol=TOL[dtype] * float(out.abs().max()))


def test_euler_fractional_linspace():
    """linspace with (T - 1) / (N - 1) not an integer gives fractional timesteps. There diffusers'
    Euler interpolates sigma linearly in t (interpolation_type="linear"), we interpolate log(sigma)
    (as k-diffusion and diffusers' own Karras path do): the sigmas differ by ~1e-5 relative. With
    diffusers' sigmas passed explicitly (paired with the same t) the trajectories agree."""
    dtype = torch.float32
    steps = 25
    S, ref = make(EulerDiscreteScheduler, "scaled_linear", "eps", timestep_spacing="linspace")
    ref.set_timesteps(steps)
    levels = S.levels(steps, "linspace")
    torch.testing.assert_close(ref.timesteps.double(), levels.ts, rtol=0, atol=1e-4)
    rel = ((ref.sigmas.double() - levels.sigmas) / levels.sigmas.clamp(min=1e-12)).abs()[:-1]
    integer = levels.ts == levels.ts.round()
    assert float(rel[integer].max()) < 1e-6 and 1e-7 < float(rel[~integer].max()) < 1e-4
    noise = noise_like(dtype)
    theirs_levels = S.levels(timesteps=levels.ts, sigmas=ref.sigmas.double())
    _, ours, _ = run_ours(S, "eps", noise, "euler", timesteps=levels.ts, sigmas=ref.sigmas.double())
    x_T = ve_start(theirs_levels, noise)
    assert_states(ours, run_ref(ref, x_T), dtype, start=x_T)


@pytest.mark.parametrize("pred", list(PRED))
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_euler_karras(schedule, pred):
    """use_karras_sigmas=True (over the full sigma range: linspace spacing) == our spacing='karras';
    both map the Karras sigmas to fractional t by log-sigma interpolation."""
    dtype = torch.float32
    S, ref = make(EulerDiscreteScheduler, schedule, pred, timestep_spacing="linspace", use_karras_sigmas=True)
    noise = noise_like(dtype)
    steps = 15
    levels = S.levels(steps, "karras")
    ref.set_timesteps(steps)
    torch.testing.assert_close(ref.sigmas.double(), levels.sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(ref.timesteps.double(), levels.ts, rtol=0, atol=1e-3)
    _, ours, _ = run_ours(S, pred, noise, "euler", steps=steps, spacing="karras")
    x_T = ve_start(levels, noise)
    assert_states(ours, run_ref(ref, x_T), dtype, start=x_T)


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_initial_noise_scale_convention(cls, spacing):
    """We always start VE samplers at noise * sqrt(1 + sigma_max^2) (= the VP noise, exactly).
    diffusers' init_noise_sigma is that for 'leading' spacing but sigma_max itself for 'linspace'
    and 'trailing'; the tests above therefore start diffusers from our exact starting state."""
    S, ref = make(cls, "scaled_linear", timestep_spacing=spacing)
    ref.set_timesteps(10)
    smax = float(S.levels(10, spacing).sigmas[0])
    expect = math.sqrt(1 + smax**2) if spacing == "leading" else smax
    assert float(ref.init_noise_sigma) == pytest.approx(expect, rel=1e-6)


# ---- Euler ancestral --------------------------------------------------------------
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 20)])
@pytest.mark.parametrize("pred", ["eps", "v"])  # diffusers' EulerAncestral has no "sample" prediction
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_euler_ancestral(schedule, pred, spacing, steps):
    """Same generator seed: both draw torch.randn(x.shape) once per step (diffusers also on the last
    step, where sigma_up = 0, which changes nothing)."""
    dtype = torch.float32
    S, ref = make(EulerAncestralDiscreteScheduler, schedule, pred, timestep_spacing=spacing)
    noise = noise_like(dtype)
    _, ours, _ = run_ours(S, pred, noise, "euler_ancestral", steps=steps, spacing=spacing,
                          generator=torch.Generator().manual_seed(3))
    ref.set_timesteps(steps)
    x_T = ve_start(S.levels(steps, spacing), noise)
    theirs = run_ref(ref, x_T, generator=torch.Generator().manual_seed(3))
    assert_states(ours, theirs, dtype, start=x_T)


# ---- Heun -------------------------------------------------------------------------
HEUN_TOL = 1e-6  # diffusers' Heun keeps the float64 sample but its sigmas are float32 (~6e-8 relative)


def heun_boundaries(states):
    """diffusers' Heun takes 2N - 1 half steps (predictor, corrector, ..., final Euler step to 0);
    the level boundaries are after every corrector and after the final step."""
    return [x for j, x in enumerate(states) if j % 2 == 1 or j == len(states) - 1]


@pytest.mark.parametrize("spacing,steps,karras", [("leading", 10, False), ("trailing", 10, False),
                                                  ("linspace", 10, True)])
@pytest.mark.parametrize("pred", list(PRED))
def test_heun(pred, spacing, steps, karras):
    dtype = torch.float64
    S, ref = make(HeunDiscreteScheduler, "scaled_linear", pred, timestep_spacing=spacing, use_karras_sigmas=karras)
    noise = noise_like(dtype)
    ours_spacing = "karras" if karras else spacing
    out, ours, _ = run_ours(S, pred, noise, "heun", steps=steps, spacing=ours_spacing)
    ref.set_timesteps(steps)
    x_T = ve_start(S.levels(steps, ours_spacing), noise)
    theirs = run_ref(ref, x_T)
    assert len(theirs) == 2 * steps - 1
    theirs = heun_boundaries(theirs)
    assert_states(ours, theirs, dtype, tol=HEUN_TOL, start=x_T)
    torch.testing.assert_close(out, theirs[-1], rtol=0, atol=HEUN_TOL * float(out.abs().max()))


def test_heun_clip_sample():
    """Heun's clip_sample clamps x0 and steps with it, like our clip_x0 in the VE samplers."""
    dtype = torch.float64
    S, ref = make(HeunDiscreteScheduler, "linear", "eps", timestep_spacing="leading", clip_sample=True)
    noise = noise_like(dtype)
    _, ours, _ = run_ours(S, "eps", noise, "heun", steps=10, clip_x0=1.0)
    ref.set_timesteps(10)
    x_T = ve_start(S.levels(10), noise)
    assert_states(ours, heun_boundaries(run_ref(ref, x_T)), dtype, tol=HEUN_TOL, start=x_T)


# ---- DPM-Solver++(2M) -------------------------------------------------------------
DPM_CFG = dict(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, final_sigmas_type="zero")


def assert_dpm_states(ours_ve, theirs_vp, levels, dtype):
    """diffusers' DPMSolverMultistep state is VP; ours is VE: x_VP = x_VE / sqrt(1 + sigma_next^2)."""
    ours_vp = [x / math.sqrt(1 + min(float(levels.sigmas[i + 1]), 4096.0) ** 2) for i, x in enumerate(ours_ve)]
    assert_states(ours_vp, theirs_vp, dtype)


@pytest.mark.parametrize("schedule,pred,steps", [
    *[(sched, pred, steps) for sched in ("linear", "scaled_linear") for pred in PRED for steps in (10, 20)],
    ("cosine", "eps", 20),
])
def test_dpmpp_2m_trailing(schedule, pred, steps):
    dtype = torch.float32
    S, ref = make(DPMSolverMultistepScheduler, schedule, pred, timestep_spacing="trailing", **DPM_CFG)
    noise = noise_like(dtype)
    levels = S.levels(steps, "trailing")
    out, ours, ts = run_ours(S, pred, noise, "dpmpp_2m", steps=steps, spacing="trailing")
    ref.set_timesteps(steps)
    assert ts == ref.timesteps.double().tolist()
    theirs = run_ref(ref, noise.clone())  # VP start: init_noise_sigma = 1
    assert_dpm_states(ours, theirs, levels, dtype)
    torch.testing.assert_close(out, theirs[-1], rtol=0, atol=TOL[dtype] * float(out.abs().max()))


@pytest.mark.parametrize("pred", list(PRED))
def test_dpmpp_2m_diffusers_linspace(pred):
    """diffusers' DPMSolverMultistep 'linspace' is linspace(0, T-1, N+1).round()[::-1][:-1] (it drops
    t = 0, unlike the Euler/DDIM linspace); pass those timesteps to ours explicitly."""
    dtype = torch.float32
    S, ref = make(DPMSolverMultistepScheduler, "scaled_linear", pred, timestep_spacing="linspace", **DPM_CFG)
    ref.set_timesteps(20)
    listed = ref.timesteps.tolist()
    assert listed[-1] != 0 and listed != S.timesteps(20, "linspace").tolist()
    noise = noise_like(dtype)
    levels = S.levels(timesteps=listed)
    _, ours, _ = run_ours(S, pred, noise, "dpmpp_2m", timesteps=listed)
    assert_dpm_states(ours, run_ref(ref, noise.clone()), levels, dtype)


@pytest.mark.parametrize("pred", list(PRED))
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_dpmpp_2m_karras(schedule, pred):
    """use_karras_sigmas=True: the same Karras sigmas as our spacing='karras', but diffusers rounds
    the model's timesteps to integers (except for squaredcos_cap_v2, where it truncates them to
    int64), while ours are fractional; pass the paired (rounded t, Karras sigma) to ours."""
    dtype = torch.float32
    steps = 15
    S, ref = make(DPMSolverMultistepScheduler, schedule, pred, use_karras_sigmas=True, **DPM_CFG)
    ref.set_timesteps(steps)
    karras = S.levels(steps, "karras")
    torch.testing.assert_close(ref.sigmas.double(), karras.sigmas, rtol=1e-6, atol=0)
    assert ref.timesteps.tolist() == karras.ts.round().long().tolist()
    noise = noise_like(dtype)
    levels = S.levels(timesteps=ref.timesteps.tolist(), sigmas=karras.sigmas)
    _, ours, _ = run_ours(S, pred, noise, "dpmpp_2m", timesteps=ref.timesteps.tolist(), sigmas=karras.sigmas)
    assert_dpm_states(ours, run_ref(ref, noise.clone()), levels, dtype)


# ---- DDPM -------------------------------------------------------------------------
@pytest.mark.parametrize("variance,variance_type", [("beta", "fixed_large"), ("posterior", "fixed_small")])
@pytest.mark.parametrize("pred", list(PRED))
def test_ddpm_full_chain(pred, variance, variance_type):
    """All T = 100 steps of a T = 100 schedule, noise from the same generator seed."""
    dtype = torch.float64
    S, ref = make(DDPMScheduler, "linear", pred, T=100, variance_type=variance_type, clip_sample=False)
    noise = noise_like(dtype)
    out, ours, _ = run_ours(S, pred, noise, "ddpm", steps=100, variance=variance,
                            generator=torch.Generator().manual_seed(5))
    theirs = run_ref(ref, noise.clone(), generator=torch.Generator().manual_seed(5))  # no set_timesteps
    assert_states(ours, theirs, dtype)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance,variance_type", [("beta", "fixed_large"), ("posterior", "fixed_small")])
def test_ddpm_strided(variance, variance_type, clip):
    """T = 1000 with 20 leading steps (the last at t = 0, where both add no noise); diffusers'
    clip_sample clamps x0 in the posterior mean, as our clip_x0 does."""
    dtype = torch.float64
    S, ref = make(DDPMScheduler, "linear", "eps", variance_type=variance_type, clip_sample=clip)
    noise = noise_like(dtype)
    _, ours, _ = run_ours(S, "eps", noise, "ddpm", steps=20, variance=variance, clip_x0=1.0 if clip else None,
                          generator=torch.Generator().manual_seed(6))
    ref.set_timesteps(20)
    assert_states(ours, run_ref(ref, noise.clone(), generator=torch.Generator().manual_seed(6)), dtype)


def test_ddpm_trailing_final_step():
    """With trailing spacing the last timestep is T/N - 1 > 0. diffusers' DDPM adds noise whenever
    t > 0, so its final step (to abar = 1) adds noise of variance beta = 1 - abar_{t_last} under
    'fixed_large'; ours adds no noise on the final step (as diffusers does for 'fixed_small', where
    that variance is 0, clamped to 1e-20). Everything before the final step agrees."""
    dtype = torch.float64
    S, ref = make(DDPMScheduler, "linear", "eps", variance_type="fixed_large", clip_sample=False,
                  timestep_spacing="trailing")
    noise = noise_like(dtype)
    g_ours = torch.Generator().manual_seed(7)
    _, ours, ts = run_ours(S, "eps", noise, "ddpm", steps=20, spacing="trailing", generator=g_ours)
    ref.set_timesteps(20)
    assert ts[-1] == 49.0
    theirs = run_ref(ref, noise.clone(), generator=torch.Generator().manual_seed(7))
    assert_states(ours[:-1], theirs[:-1], dtype)
    extra = math.sqrt(1 - float(S.alphas_cumprod[49])) * torch.randn(SHAPE, generator=g_ours, dtype=dtype)
    assert_states([ours[-1] + extra], theirs[-1:], dtype)


# ---- zero terminal SNR ------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_zero_terminal_snr(sampler):
    """rescale_betas_zero_snr + trailing spacing + v-prediction. DDIM handles abar_T = 0 exactly
    in both; in VE coordinates diffusers uses abar_T = 2**-24 (sigma ~ 4096) and we use sigma = 4096."""
    cls, dtype = {"ddim": (DDIMScheduler, torch.float64), "euler": (EulerDiscreteScheduler, torch.float32),
                  "dpmpp_2m": (DPMSolverMultistepScheduler, torch.float32)}[sampler]
    cfg = DDIM_CFG if sampler == "ddim" else DPM_CFG if sampler == "dpmpp_2m" else {}
    S, ref = make(cls, "scaled_linear", "v", zero_snr=True, timestep_spacing="trailing", **cfg)
    assert S.zero_terminal_snr
    noise = noise_like(dtype)
    steps = 10
    levels = S.levels(steps, "trailing")
    _, ours, _ = run_ours(S, "v", noise, sampler, steps=steps, spacing="trailing")
    ref.set_timesteps(steps)
    if sampler == "euler":
        assert float(ref.sigmas[0]) == pytest.approx(4096.0, rel=1e-6)
        # diffusers' Euler steps as x + (x - x0) / sigma * (sigma_next - sigma) in float32: from
        # |x| ~ 1.6e4 that cancels down to |x| ~ 56 with an absolute error ~ 1e-3 (float32 ulp of
        # 1.6e4), which later steps carry along. Ours (x0 + sigma_next / sigma * (x - x0)) stays
        # within ~1e-5 of a float64 run, and diffusers' formula evaluated in float64 within ~1e-6
        x_T = ve_start(levels, noise)
        assert_states(ours, run_ref(ref, x_T), dtype, start=x_T, floor=1e-7 * float(x_T.abs().max()))
    elif sampler == "dpmpp_2m":
        assert_dpm_states(ours, run_ref(ref, noise.clone()), levels, dtype)
    else:
        assert_states(ours, run_ref(ref, noise.clone()), dtype)
