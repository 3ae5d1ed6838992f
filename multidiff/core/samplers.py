"""Samplers: pure functions of (denoiser, starting state, levels, options).

Two families share one Denoiser:

* VP samplers (ddpm, ddim) move x_t = sqrt(abar) x0 + sqrt(1 - abar) eps between the
  abar of consecutive levels; they start from x_T = noise and handle abar = 0 exactly.
* VE samplers (euler, euler_ancestral, heun, dpmpp_2m) integrate the probability-flow
  ODE (or its SDE) in x = x0 + sigma eps, k-diffusion style; they start from
  noise * sqrt(1 + sigma_max^2), which is the same point in the other coordinates.

Every sampler walks `levels` (see Schedule.levels) and takes the same keywords:
`generator` for its noise (a torch.Generator, or core.noise.ColoredNoise for a noise prior),
`cond` for the model, `callback(info)` once per step, `progress` for a tqdm bar, and
`project(x, alpha, sigma)`, applied to the state after every step (at the new level, in the
sampler's own coordinates, i.e. x = alpha x0 + sigma eps); masked generation uses it to
re-impose the known part.

What callers need to know about a sampler without running it (its family, model calls per
step, whether it takes eta, its default spacing) is its SamplerSpec at the end of this file,
so a new sampler is a function plus one line there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from tqdm.auto import tqdm

from .denoiser import Denoiser
from .noise import randn_like
from .schedule import ZERO_SNR_SIGMA, Levels

DDPM_VARIANCES = ("beta", "posterior")


def _steps(levels: Levels, progress: bool, name: str):
    return tqdm(range(len(levels)), desc=name, disable=not progress, leave=False)


def vp_coefficients(ab: float) -> tuple[float, float]:
    return math.sqrt(ab), math.sqrt(1.0 - ab)


# ---- VP samplers ---------------------------------------------------------------
def ddim_step(den: Denoiser, x, t, ab: float, ab_prev: float, eta: float = 0.0, generator=None, cond=None):
    """One DDIM update (Song et al. 2021, eq. 12) from abar to abar_prev; returns (x_prev, x0)."""
    est = den.vp(x, t, ab, **(cond or {}))
    var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev) if eta > 0 else 0.0
    x_prev = math.sqrt(ab_prev) * est.x0 + math.sqrt(max(1 - ab_prev - var, 0.0)) * est.eps
    if var > 0:
        x_prev = x_prev + math.sqrt(var) * randn_like(x, generator)
    return x_prev, est.x0


def ddpm_step(den: Denoiser, x, t, ab: float, ab_prev: float, variance: str = "beta", generator=None,
              cond=None, last: bool = False):
    """One ancestral DDPM update (Ho et al. 2020) for a possibly strided step abar -> abar_prev:
    posterior mean of q(x_prev | x_t, x0), plus noise of variance beta (the paper's sigma_t^2 =
    beta_t) or the posterior variance beta~; no noise on the final step."""
    est = den.vp(x, t, ab, **(cond or {}))
    beta = 1 - ab / ab_prev
    mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * est.x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x
    if last:
        return mean, est.x0
    var = beta if variance == "beta" else beta * (1 - ab_prev) / (1 - ab)
    return mean + math.sqrt(var) * randn_like(x, generator), est.x0


def _vp_loop(step, name, den, x, levels, generator, cond, callback, progress, project, **kw):
    abar, ts = levels.alphas_cumprod.tolist(), levels.ts.tolist()
    for i in _steps(levels, progress, name):
        extra = {"last": i == len(levels) - 1} if step is ddpm_step else {}
        x, x0 = step(den, x, ts[i], abar[i], abar[i + 1], generator=generator, cond=cond, **kw, **extra)
        if project is not None:
            x = project(x, *vp_coefficients(abar[i + 1]))
        if callback is not None:
            callback({"i": i, "x": x, "denoised": x0, "sigma": float(levels.sigmas[i]), "t": ts[i]})
    return x


def ddpm(den, x, levels, *, variance="beta", generator=None, cond=None, callback=None, progress=False,
         project=None):
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown ddpm variance {variance!r}; choose one of {DDPM_VARIANCES}")
    return _vp_loop(ddpm_step, "ddpm", den, x, levels, generator, cond, callback, progress, project,
                    variance=variance)


def ddim(den, x, levels, *, eta=0.0, generator=None, cond=None, callback=None, progress=False, project=None):
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    return _vp_loop(ddim_step, "ddim", den, x, levels, generator, cond, callback, progress, project, eta=eta)


# ---- VE samplers ---------------------------------------------------------------
def ve_sigmas(levels: Levels) -> list[float]:
    """The levels' sigmas for a VE sampler. sigma = inf (zero terminal SNR) has no VE coordinates:
    it becomes a finite stand-in, 4096 as in diffusers, or more when the next level is already
    higher than that (a rescaled schedule sampled at every step), so the levels stay decreasing."""
    sig = levels.sigmas.tolist()
    if math.isinf(sig[0]):
        sig[0] = max(ZERO_SNR_SIGMA, 4 * sig[1]) if len(sig) > 1 else ZERO_SNR_SIGMA
    return sig


def _ve_loop(update, name, den, x, levels, generator, cond, callback, progress, project):
    sig, ts = ve_sigmas(levels), levels.ts.tolist()
    ts_next = ts[1:] + [0.0]  # t of sigmas[i+1] (unused when that sigma is 0)
    state = {}
    for i in _steps(levels, progress, name):
        s, s_next = sig[i], sig[i + 1]
        x0 = den(x, s, ts[i], **(cond or {}))
        x = update(x, x0, s, s_next, ts_next[i], state)
        if project is not None:
            x = project(x, 1.0, s_next)
        if callback is not None:
            callback({"i": i, "x": x, "denoised": x0, "sigma": s, "t": ts[i]})
    return x


def euler(den, x, levels, *, generator=None, cond=None, callback=None, progress=False, project=None):
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022)."""

    def update(x, x0, s, s_next, t_next, state):
        return x0 + (s_next / s) * (x - x0)  # = x + (s_next - s) * (x - x0) / s

    return _ve_loop(update, "euler", den, x, levels, generator, cond, callback, progress, project)


def euler_ancestral(den, x, levels, *, eta=1.0, generator=None, cond=None, callback=None, progress=False,
                    project=None):
    """Euler step down to sigma_down, then fresh noise of std sigma_up (sigma_down^2 + sigma_up^2 =
    sigma_next^2); eta scales sigma_up (eta = 0 is plain Euler)."""

    def update(x, x0, s, s_next, t_next, state):
        up = min(s_next, eta * math.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
        down = math.sqrt(s_next**2 - up**2)
        x = x0 + (down / s) * (x - x0)
        return x + up * randn_like(x, generator) if up > 0 else x

    return _ve_loop(update, "euler_ancestral", den, x, levels, generator, cond, callback, progress, project)


def heun(den, x, levels, *, generator=None, cond=None, callback=None, progress=False, project=None):
    """Heun's 2nd-order method (EDM Algorithm 1 without churn); Euler for the last step to sigma = 0."""

    def update(x, x0, s, s_next, t_next, state):
        d = (x - x0) / s
        x_e = x + (s_next - s) * d
        if s_next == 0:
            return x_e
        d2 = (x_e - den(x_e, s_next, t_next, **(cond or {}))) / s_next
        return x + (s_next - s) * (d + d2) / 2

    return _ve_loop(update, "heun", den, x, levels, generator, cond, callback, progress, project)


def dpmpp_2m(den, x, levels, *, generator=None, cond=None, callback=None, progress=False, project=None):
    """DPM-Solver++(2M) (Lu et al. 2022): exponential integrator in lambda = -log sigma, with the
    previous clean estimate as a 2nd-order correction; first-order on the first and last steps."""

    def update(x, x0, s, s_next, t_next, state):
        prev, h_prev = state.get("x0"), state.get("h")
        if s_next == 0:  # lambda -> inf: the exact first-order step lands on the estimate
            return x0
        h = math.log(s / s_next)
        d = x0
        if prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev
        state["x0"], state["h"] = x0, h
        return (s_next / s) * x - math.expm1(-h) * d

    return _ve_loop(update, "dpmpp_2m", den, x, levels, generator, cond, callback, progress, project)


def consistency(den, x, levels, *, generator=None, cond=None, callback=None, progress=False, project=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1), for a consistency model, whose view maps
    any level straight to the clean signal (core/distillation.py): the estimate, re-noised to the next level with
    fresh noise, is estimated again. One level is one-step generation."""

    def update(x, x0, s, s_next, t_next, state):
        return x0 + s_next * randn_like(x0, generator) if s_next > 0 else x0

    return _ve_loop(update, "consistency", den, x, levels, generator, cond, callback, progress, project)


# ---- specs ---------------------------------------------------------------------
def _one_call_per_step(steps: int) -> int:
    return steps


def _heun_calls(steps: int) -> int:
    return 2 * steps - 1  # two per step, except the last (an Euler step to sigma = 0)


@dataclass(frozen=True)
class SamplerSpec:
    """What a caller needs to know about a sampler without running it (tests/test_sampler_specs.py
    checks each fact against a run)."""

    fn: Callable
    family: str                  # "vp": moves x_t between abar levels; "ve": integrates x = x0 + sigma eps
    spacing: str                 # the spacing of its levels that a caller should default to
    eta: float | None = None     # its default noise scale; None: it takes no eta
    model_calls: Callable[[int], int] = _one_call_per_step  # denoiser evaluations for `steps` levels
    model: str = "diffusion"     # what it samples: "diffusion" (solves the model's ODE / SDE) | "consistency" models


SAMPLER_SPECS = {
    "ddpm": SamplerSpec(ddpm, "vp", "leading"),
    "ddim": SamplerSpec(ddim, "vp", "leading", eta=0.0),
    "euler": SamplerSpec(euler, "ve", "karras"),
    "euler_ancestral": SamplerSpec(euler_ancestral, "ve", "karras", eta=1.0),
    "heun": SamplerSpec(heun, "ve", "karras", model_calls=_heun_calls),
    "dpmpp_2m": SamplerSpec(dpmpp_2m, "ve", "karras"),
    "consistency": SamplerSpec(consistency, "ve", "karras", model="consistency"),
}
SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.model == "diffusion")  # for any diffusion model
ALL_SAMPLERS = tuple(SAMPLER_SPECS)  # ... and those for distilled students (a consistency model)
VP_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.family == "vp")
VE_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.family == "ve")
ETA_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.eta is not None)
SAMPLER_FNS = {n: s.fn for n, s in SAMPLER_SPECS.items()}


def sampler_spec(sampler: str) -> SamplerSpec:
    if sampler not in SAMPLER_SPECS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {ALL_SAMPLERS}")
    return SAMPLER_SPECS[sampler]


def nfe(sampler: str, steps: int) -> int:
    """Model evaluations (NFE) of `sampler` over `steps` levels. Classifier-free guidance batches
    both branches into each call; RePaint's jumps and reconstruction guidance's backward passes
    come on top."""
    return sampler_spec(sampler).model_calls(steps)


def default_spacing(sampler: str) -> str:
    return sampler_spec(sampler).spacing
