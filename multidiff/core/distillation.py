"""The math of few-step students, for any objective and any signal: the levels a student samples on,
the targets it learns from its teacher, and the consistency parameterisation.

Progressive distillation (Salimans & Ho 2022). A student of N steps samples with deterministic DDIM
on the levels t_k = (T - 1) k / N (k = N .. 1, in the network's noise-input units, then one step to
clean data). The levels of 2N steps are those and their midpoints, so the student's one step from
t_k to t_{k-1} is trained to land where its teacher's two DDIM steps land: the x0-space target is the
x0 that makes a single DDIM step reach the teacher's result (the paper's Algorithm 2), weighted by
max(SNR, 1) (its "truncated SNR" weighting: the x0 error where the signal dominates, the eps error
where the noise does). Each round's student is the next round's teacher. With an adversarial term
(SDXL-Lightning's progressive adversarial distillation, Lin et al. 2024), the student's landing point is
also judged against real data at a level between its jump's end and the teacher's midpoint (`renoise`).
The first round's teacher may step by DPM-Solver++(2S) instead (`dpmpp_2s_move`): DDIM is first order, and on few levels the
chain would otherwise learn its discretisation error as the target.

Consistency distillation (Song et al. 2023). A consistency function f(x, sigma) maps every point of
the teacher's probability-flow ODE trajectory to the trajectory's clean end. It is parameterised on
top of the network's clean estimate D as f = c_skip x + (1 - c_skip) D with c_skip =
(c_cm - c_edm) / (1 - c_edm), c_cm = sd^2 / ((sigma - sigma_min)^2 + sd^2) and c_edm = sd^2 / (sigma^2 + sd^2):
Song et al.'s parameterisation of an EDM network, expressed around a denoiser. So f(x, sigma_min) = x
exactly (the boundary condition that keeps the training from collapsing) and f ~ D elsewhere, so the
student starts as its teacher's denoiser. Training makes f agree at
neighbouring levels of a Karras grid, one of them reached by the teacher's ODE step (Heun or Euler);
multistep sampling (samplers.consistency) denoises, re-noises to the next level and denoises again.
"""
from __future__ import annotations

import math

import torch

from .objective_base import Estimate, Objective, bcast

SIGMA_MAX_CAP = 80.0   # a consistency grid's top level: beyond it (EDM's sigma_max) a [-1, 1] signal is invisible
SIGMA_DATA = 0.5         # the consistency parameterisation's data scale (Song et al.; signals in [-1, 1])
PSEUDO_HUBER_C = 0.00054  # iCT's c per sqrt(dimension) (Song & Dhariwal 2023), here on the per-element RMS


# ---- progressive distillation ----------------------------------------------------------------------------
def progressive_timesteps(schedule, steps: int, power: float = 1.0) -> torch.Tensor:
    """The network noise inputs of a progressive student's `steps` levels, highest first: (T - 1) (k / steps)^power
    for k = steps .. 1 (each step ends on the next; the last one on clean data). For any power the levels of 2N
    steps are the N-step levels and one between each two; power > 1 makes the jumps near clean data shorter,
    power < 1 those at high noise ([distill] level_power)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"a student takes >= 1 steps, got {steps!r}")
    return grid_timesteps(schedule, steps, power)[1:].flip(0)


def grid_timesteps(schedule, points: int, power: float = 1.0) -> torch.Tensor:
    """The `points` + 1 grid levels (T - 1) (j / points)^power, j = 0 .. points (j = 0: clean data)."""
    j = torch.arange(points + 1, dtype=torch.float64)
    return (schedule.T - 1) * (j / points) ** power


def grid_alpha_bar(schedule, points: int, power: float = 1.0) -> torch.Tensor:
    """abar at grid_timesteps(schedule, points, power); j = 0 is clean data (abar = 1)."""
    ab = schedule.alpha_bar_at(grid_timesteps(schedule, points, power))
    ab[0] = 1.0
    return ab


def ddim_move(est: Estimate, abar_to: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) to the per-sample levels abar_to [B], given the estimate at the current one."""
    return bcast(abar_to.sqrt(), like) * est.x0 + bcast((1 - abar_to).sqrt(), like) * est.eps


def dpmpp_2s_move(est: Estimate, clean_at, z: torch.Tensor, abar_from: torch.Tensor,
                  abar_to: torch.Tensor) -> torch.Tensor:
    """One DPM-Solver++(2S) step (Lu et al. 2022, r = 1/2) from z (per-sample level abar_from [B]) to abar_to:
    DDIM to the level half way in log-SNR, the clean estimate there (`clean_at(u, abar_mid)`), and the whole
    step by DDIM with that estimate. DDIM is exact where the clean estimate stays constant along the step;
    this is second order where it does not. Samples that start at pure noise or end on clean data (log-SNR
    infinite: no half way) keep the DDIM step, as DPM-Solver++'s last step does."""
    inner = (abar_from > 0) & (abar_to < 1)
    half_way = (torch.logit(abar_from.clamp(1e-300, 1)) + torch.logit(abar_to.clamp(0, 1 - 1e-16))) / 2  # log-SNR
    mid = torch.where(inner, torch.sigmoid(half_way), abar_to)
    x0 = clean_at(ddim_move(est, mid, z), mid)
    eps = (z - bcast(abar_from.sqrt(), z) * x0) / bcast((1 - abar_from).sqrt(), z)
    second = ddim_move(Estimate(x0, eps), abar_to, z)
    return torch.where(bcast(inner.double(), z) > 0, second, ddim_move(est, abar_to, z))


def noised(x0: torch.Tensor, abar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The forward process q(z | x0) at level abar (per sample [B]): sqrt(abar) x0 + sqrt(1 - abar) noise."""
    return bcast(abar.sqrt(), x0) * x0 + bcast((1 - abar).sqrt(), x0) * noise


def renoise(z_s: torch.Tensor, abar_s: torch.Tensor, abar_u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A draw of the forward process from level abar_s up to the noisier abar_u <= abar_s (per sample [B]):
    z_u = sqrt(abar_u / abar_s) z_s + sqrt(1 - abar_u / abar_s) noise, so z_s ~ q(z_s | x0) gives z_u ~ q(z_u | x0)."""
    return noised(z_s, (abar_u / abar_s).clamp(max=1.0), noise)


def progressive_target(z_t: torch.Tensor, z_s: torch.Tensor, abar_t: torch.Tensor,
                       abar_s: torch.Tensor) -> torch.Tensor:
    """The clean estimate with which one DDIM step from z_t (level abar_t) lands on z_s (level abar_s > abar_t):
    x = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t); = z_s when s is clean."""
    a_t, s_t, a_s, s_s = abar_t.sqrt(), (1 - abar_t).sqrt(), abar_s.sqrt(), (1 - abar_s).sqrt()
    r = s_s / s_t
    return (z_s - bcast(r, z_t) * z_t) / bcast(a_s - r * a_t, z_t)


def truncated_snr_weight(abar: torch.Tensor) -> torch.Tensor:
    """max(SNR, 1) on the x0-space error (Salimans & Ho 2022, sec. 4)."""
    return (abar / (1 - abar)).clamp(min=1.0)


# ---- consistency distillation ------------------------------------------------------------------------------
def consistency_range(schedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a consistency model's levels: the schedule's own Karras range, its top capped
    at SIGMA_MAX_CAP."""
    top, bottom = schedule.karras_sigmas(2).tolist()
    return bottom, min(top, SIGMA_MAX_CAP)


def consistency_grid(schedule, points: int) -> torch.Tensor:
    """The training grid: `points` Karras levels (rho 7) over consistency_range, ascending (sigma_1 = sigma_min)."""
    if points < 2:
        raise ValueError(f"a consistency grid needs >= 2 levels, got {points}")
    lo, hi = consistency_range(schedule)
    return schedule.karras_sigmas(points, sigma_min=lo, sigma_max=hi).flip(0)


def consistency_levels(schedule, steps: int) -> torch.Tensor:
    """The levels of `steps`-step consistency sampling, highest first: the first `steps` of a (steps + 1)-level
    Karras ramp over consistency_range (1 step: sigma_max alone; 2: sigma_max and the ramp's middle)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"a student takes >= 1 steps, got {steps!r}")
    lo, hi = consistency_range(schedule)
    return schedule.karras_sigmas(steps + 1, sigma_min=lo, sigma_max=hi)[:steps]


def ode_step(den, x: torch.Tensor, s_from: torch.Tensor, s_to: torch.Tensor, method: str = "heun",
             cond: dict | None = None) -> torch.Tensor:
    """One step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from the per-sample VE levels
    s_from to s_to (> 0), Euler or Heun (EDM's Algorithm 1 step)."""
    cond = cond or {}
    d = (x - den(x, s_from, **cond)) / bcast(s_from, x)
    h = bcast(s_to - s_from, x)
    x_e = x + h * d
    if method == "euler":
        return x_e
    d2 = (x_e - den(x_e, s_to, **cond)) / bcast(s_to, x)
    return x + h * (d + d2) / 2


def pseudo_huber(err: torch.Tensor, c: float = PSEUDO_HUBER_C) -> torch.Tensor:
    """Per-sample sqrt(mean(err^2) + c^2) - c (iCT's metric, scaled by 1/sqrt(dim)): L2 for large errors, L1-like
    for small ones, so a few outliers do not dominate."""
    return (err.float().square().flatten(1).mean(1) + c * c).sqrt() - c


class ConsistencyObjective(Objective):
    """A consistency function on top of any objective's clean estimate D: f = c_skip x + (1 - c_skip) D with
    c_skip(sigma) Song et al. 2023's c_skip re-expressed around a denoiser (`c_skip`), so f(x, sigma_min) = x and
    f ~ D at the start.
    A Denoiser over it is a consistency model: its view is f, for every sampler wrapper (guidance, masks,
    projections) alike. `consistency` marks it for the sampler check in sample()."""

    consistency = True

    def __init__(self, inner: Objective, sigma_min: float, sigma_data: float = SIGMA_DATA):
        self.inner, self.sigma_min, self.sigma_data = inner, float(sigma_min), float(sigma_data)
        self.schedule, self.name = inner.schedule, inner.name
        self.defined_at_pure_noise = inner.defined_at_pure_noise
        self.weighting, self.min_snr_gamma, self.loss_type = inner.weighting, inner.min_snr_gamma, inner.loss_type

    def c_skip(self, sigma):
        """The share of x in f: (c_cm - c_edm) / (1 - c_edm), c_cm = sd^2 / ((sigma - sigma_min)^2 + sd^2) (Song
        et al.'s c_skip on a raw network), c_edm = sd^2 / (sigma^2 + sd^2) (EDM's, already inside a denoiser D).
        Song et al.'s f = c_cm x + c_out F around an EDM network equals its teacher's denoiser at the start and
        becomes x at sigma_min; wrapping a D, that is this share: 1 at sigma_min, ~0 above it (at sigma 0.7: 0.002
        for sigma_min 0.002, where c_cm alone would leak 34% of the noisy input into f, and multistep sampling,
        which evaluates f at such levels, would pay for it)."""
        sd2 = self.sigma_data ** 2
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
            s = sigma.to(torch.float64)
            c_cm = sd2 / ((s - self.sigma_min).clamp(min=0) ** 2 + sd2)
            c_edm = sd2 / (s**2 + sd2)
            return torch.where(torch.isinf(s), torch.zeros_like(s), (c_cm - c_edm) / (1 - c_edm))
        s = float(sigma)
        if math.isinf(s):
            return 0.0
        c_cm, c_edm = sd2 / (max(s - self.sigma_min, 0.0) ** 2 + sd2), sd2 / (s**2 + sd2)
        return (c_cm - c_edm) / (1 - c_edm)

    def denoise(self, raw, x, sigma):
        c = bcast(self.c_skip(sigma), x)
        return c * x + (1 - c) * self.inner.denoise(raw, x, sigma)

    def denoise_vp(self, raw, x_vp, alpha, sigma):
        est = self.inner.denoise_vp(raw, x_vp, alpha, sigma)
        if isinstance(alpha, torch.Tensor) and alpha.ndim > 0:
            ve = torch.where(alpha > 0, sigma / alpha.clamp(min=1e-30), torch.full_like(alpha, math.inf))
            x_ve = x_vp / bcast(alpha.clamp(min=1e-30), x_vp)
        else:
            ve = sigma / alpha if alpha > 0 else math.inf
            x_ve = x_vp / alpha if alpha > 0 else x_vp
        c = bcast(self.c_skip(ve), x_vp)
        x0 = c * x_ve + (1 - c) * est.x0
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def input_scale_vp(self, alpha, sigma):
        return self.inner.input_scale_vp(alpha, sigma)
