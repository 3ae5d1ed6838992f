"""Continuous-time objectives in EDM's preconditioned form: flow matching / rectified flow and EDM
(registered with the VP prediction types in objectives.py)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .objective_base import Estimate, Objective, bcast
from .schedule import EDMSchedule, FlowSchedule

class Preconditioning(NamedTuple):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, eq. 7). Floats for one
    level, float64 [B] (or broadcastable) tensors for per-sample levels."""
    c_skip: object
    c_out: object
    c_in: object


def _level(v):
    """A level as the coefficient formulas take it: a float, or a float64 tensor."""
    if isinstance(v, torch.Tensor):
        return float(v) if v.ndim == 0 else v.to(torch.float64)
    return float(v)


class PreconditionedObjective(Objective):
    """An objective whose clean estimate is D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) for the
    network's raw output F. Every Gaussian path has this form (VP eps prediction is
    (1, -sigma, 1/sqrt(1 + sigma^2)), flow's velocity (1 - t, -t, 1 - t)); c_noise is the schedule's
    t_at(sigma). A subclass gives the coefficients in two coordinates -- `precondition(sigma)` on the
    VE state (the paper's table) and `precondition_vp(alpha, sigma)` on the VP state, where they stay
    finite at pure noise (alpha = 0, which has no VE state) -- and the regression target of F.

    Training: the loss of F against its target is unweighted ('uniform'), which is the x0-space
    loss weighted by 1 / c_out^2 (EDM's lambda(sigma)); 'min_snr' weights it by min(SNR, gamma) c_out^2,
    i.e. min(SNR, gamma) times the x0-space error, as for the VP objectives."""

    def precondition(self, sigma) -> Preconditioning:
        raise NotImplementedError

    def precondition_vp(self, alpha, sigma) -> Preconditioning:
        raise NotImplementedError

    def target(self, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """F's regression target at the VP level (alpha, sigma) for this x0 and eps."""
        raise NotImplementedError

    def sigma_of(self, level) -> torch.Tensor:
        """The VE sigma of the objective's own levels (what draw_t returns)."""
        raise NotImplementedError

    def c_noise(self, sigma) -> torch.Tensor:
        """The network's noise input at VE sigma."""
        return self.schedule.t_at(sigma)

    def denoise(self, raw, x, sigma):
        c = self.precondition(_level(sigma))
        return bcast(c.c_skip, x) * x + bcast(c.c_out, x) * raw(bcast(c.c_in, x) * x)

    def denoise_vp(self, raw, x_vp, alpha, sigma):
        c = self.precondition_vp(_level(alpha), _level(sigma))
        x0 = bcast(c.c_skip, x_vp) * x_vp + bcast(c.c_out, x_vp) * raw(bcast(c.c_in, x_vp) * x_vp)
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def input_scale_vp(self, alpha, sigma):
        return self.precondition_vp(alpha, sigma).c_in

    def snr(self, level):
        return self.sigma_of(level) ** -2

    def weight(self, level):
        if self.weighting == "uniform":
            return None
        sigma = self.sigma_of(level)
        return (sigma**-2).clamp(max=self.min_snr_gamma) * self.precondition(sigma).c_out ** 2


def _flow_time(sigma):
    """t = sigma / (1 + sigma), exactly 1 at sigma = inf."""
    if isinstance(sigma, torch.Tensor):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
    return 1.0 if math.isinf(sigma) else sigma / (1 + sigma)


T_SAMPLINGS = ("uniform", "logit_normal")


class FlowMatching(PreconditionedObjective):
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): x_t = (1 - t) x0 + t eps,
    and the network predicts the velocity v = eps - x0 at c_noise = t (T - 1). t is drawn uniform on
    [0, 1) or logit-normal, t = sigmoid(logit_mean + logit_std z) (SD3, Esser et al. 2024: 0 and 1).

    In VE terms x_t = (1 - t) x with sigma = t / (1 - t), so D(x; sigma) = (1 - t) x - t v((1 - t) x):
    every sampler integrates the same ODE, and a first-order step in t (x <- x + (t' - t) v) is
    exactly a DDIM / Euler step between the mapped levels."""

    name = "flow"
    schedule_type = FlowSchedule

    def __init__(self, schedule: FlowSchedule, weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 loss_type: str = "l2", *, t_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0):
        super().__init__(schedule, weighting, min_snr_gamma, loss_type)
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; choose one of {T_SAMPLINGS}")
        if not logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        self.t_sampling, self.logit_mean, self.logit_std = t_sampling, float(logit_mean), float(logit_std)

    def draw_t(self, draws):
        if self.t_sampling == "uniform":
            return draws.rand().cpu().to(torch.float64)
        return torch.sigmoid(self.logit_mean + self.logit_std * draws.randn().cpu().to(torch.float64))

    def sigma_of(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return t / (1 - t)

    def network_input(self, x0, t, noise):
        return bcast(1 - t, x0) * x0 + bcast(t, x0) * noise, (t * (self.schedule.T - 1)).to(x0.device, torch.float32)

    def training_target(self, x0, t, noise):
        return noise - x0

    def precondition(self, sigma):
        t = _flow_time(sigma)
        return Preconditioning(1 - t, -t, 1 - t)

    def precondition_vp(self, alpha, sigma):
        k = 1 / (alpha + sigma)  # x_t = x_vp / (alpha + sigma), t = sigma / (alpha + sigma)
        return Preconditioning(k, -sigma * k, k)

    def target(self, x0, eps, alpha, sigma):
        return eps - x0


class EDM(PreconditionedObjective):
    """EDM (Karras et al. 2022, Table 1 and training/loss.py): VE x = x0 + sigma eps with
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2)
    (sd = sigma_data), ln sigma ~ N(p_mean, p_std^2), and loss weight lambda = (sigma^2 + sd^2) / (sigma sd)^2
    on ||D - x0||^2, which is the unweighted loss of F against (x0 - c_skip x) / c_out.
    c_noise: the paper's ln(sigma) / 4 mapped affinely onto [0, T - 1] (EDMSchedule)."""

    name = "edm"
    schedule_type = EDMSchedule

    def __init__(self, schedule: EDMSchedule, weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 loss_type: str = "l2", *, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__(schedule, weighting, min_snr_gamma, loss_type)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if not p_std > 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)

    def draw_t(self, draws):
        return (self.p_mean + self.p_std * draws.randn().cpu().to(torch.float64)).exp()

    def sigma_of(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float64)

    def loss_weight(self, sigma):
        """The paper's lambda(sigma), the weight of ||D - x0||^2; it is 1 / c_out^2."""
        sd = self.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def network_input(self, x0, sigma, noise):
        c_in = self.precondition(sigma).c_in
        x_in = bcast(c_in, x0) * x0 + bcast(c_in * sigma, x0) * noise  # c_in (x0 + sigma n), coefficients in f64
        return x_in, self.c_noise(sigma).to(x0.device, torch.float32)

    def training_target(self, x0, sigma, noise):
        # (x0 - c_skip x) / c_out, written so it stays exact as sigma -> 0
        sd = self.sigma_data
        r = (sigma**2 + sd**2) ** 0.5
        return bcast(sigma / (sd * r), x0) * x0 - bcast(sd / r, x0) * noise

    def precondition(self, sigma):
        sd = self.sigma_data
        r2 = sigma**2 + sd**2
        return Preconditioning(sd**2 / r2, sigma * sd / r2**0.5, 1 / r2**0.5)

    def precondition_vp(self, alpha, sigma):
        # the VE coefficients at sigma / alpha, on x_vp = alpha x; finite at alpha = 0
        sd = self.sigma_data
        r2 = sigma**2 + (sd * alpha) ** 2
        return Preconditioning(sd**2 * alpha / r2, sigma * sd / r2**0.5, 1 / r2**0.5)

    def target(self, x0, eps, alpha, sigma):
        sd = self.sigma_data
        r = (sigma**2 + (sd * alpha) ** 2) ** 0.5
        return bcast(sigma / (sd * r), x0) * x0 - bcast(sd * alpha / r, x0) * eps
