"""Training objectives: what a network learns, and the loss that teaches it.

An objective is a small class that owns the four choices of a diffusion loss (the shape of
NVlabs/edm's training/loss.py): the noise level drawn for each sample, the network's input at
that level, the regression target, and the per-sample weight. The loss template
(`Objective.loss`: error map, l1/l2, mask, reduction) is shared by all of them.

The same class also owns the exact conversion of the network's raw output into the clean
estimate, which is all the Denoiser (and so every sampler) needs from it: `denoise` at a VE level
sigma (x = x0 + sigma eps) and `denoise_vp` at a VP level (x = alpha x0 + sigma eps).

Every objective here is one Gaussian path seen through different coordinates, so one denoiser
view serves them all (Karras et al. 2022, Table 1):

* VPObjective (eps / x0 / v prediction): discrete-time DDPM over a Schedule;
* FlowMatching: x_t = (1 - t) x0 + t eps, velocity target; the VE path at sigma = t / (1 - t);
* EDM: VE with the preconditioning c_skip / c_out / c_in / c_noise around any backbone.

A new objective is one more class (here, or beside flow and EDM in preconditioned.py), registered in
OBJECTIVES; every modality gets it through [diffusion] config (modalities/sections.py).
"""
from __future__ import annotations

import math

import torch

from .objective_base import (LOSS_TYPES, REDUCTIONS, WEIGHTINGS, Draws, Estimate, GeneratorDraws,  # noqa: F401
                             Objective, bcast, check_batch)
from .preconditioned import T_SAMPLINGS, EDM, FlowMatching, PreconditionedObjective, Preconditioning  # noqa: F401


class VPObjective(Objective):
    """Discrete-time VP diffusion (DDPM): t uniform over the schedule's T integer steps, the
    network sees x_t = alpha x0 + sigma eps (alpha = sqrt(abar_t), alpha^2 + sigma^2 = 1) and t.

    A subclass says what the network predicts, with exact conversions both ways: `target` for
    (x0, eps), `to_estimate` back from an output at the VP state x_t, and `denoise_ve` from an
    output at the VE state x = x0 + sigma_ve eps (the network saw x * c_in, c_in = 1/sqrt(1 + sigma_ve^2)).
    """

    def denoise_vp(self, raw, x_vp, alpha, sigma):
        return self.to_estimate(raw(x_vp), x_vp, alpha, sigma)

    def denoise(self, raw, x, sigma):
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:  # per-sample sigmas [B]
            s = bcast(sigma, x)
            c_in = (1 + s**2).rsqrt()
        else:  # one level for the whole batch: plain floats, no tensor bookkeeping per step
            s = float(sigma)
            c_in = 1 / math.sqrt(1 + s * s)
        return self.denoise_ve(raw(x * c_in), x, s, c_in)

    def input_scale_vp(self, alpha, sigma):
        return 1.0

    def draw_t(self, draws: Draws) -> torch.Tensor:
        return draws.randint(self.schedule.T).to(torch.float64).cpu()

    def network_input(self, x0, t, noise):
        return self.schedule.add_noise(x0, t, noise), t.to(x0.device, torch.float32)

    def training_target(self, x0, t, noise):
        ab = self.schedule.alpha_bar_at(t)
        return self.target(x0, noise, ab.sqrt(), (1 - ab).sqrt())

    def snr(self, t):
        return self.schedule.snr(t)

    @staticmethod
    def target(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def to_estimate(out: torch.Tensor, x_vp: torch.Tensor, alpha, sigma) -> Estimate:
        raise NotImplementedError

    @staticmethod
    def denoise_ve(out: torch.Tensor, x: torch.Tensor, sigma, c_in) -> torch.Tensor:
        raise NotImplementedError


class EpsPrediction(VPObjective):
    """The network predicts the noise eps (Ho et al. 2020)."""

    name = "eps"
    defined_at_pure_noise = False  # x0 = (x - sigma eps) / alpha with alpha = 0

    @staticmethod
    def target(x0, eps, alpha, sigma):
        return eps

    @staticmethod
    def to_estimate(out, x_vp, alpha, sigma):
        return Estimate((x_vp - bcast(sigma, x_vp) * out) / bcast(alpha, x_vp), out)

    @staticmethod
    def denoise_ve(out, x, sigma, c_in):
        return x - sigma * out  # written in VE form, where it is exact

    @staticmethod
    def min_snr_weight(snr, gamma):
        # min(SNR, gamma) / SNR (eps-MSE = SNR * x0-MSE) -> 1 as SNR -> 0, the pure-noise step of a
        # zero-terminal-SNR schedule
        clipped = snr.clamp(max=gamma)
        return torch.where(snr > 0, clipped / snr.clamp(min=1e-20), torch.ones_like(snr))


class X0Prediction(VPObjective):
    """The network predicts the clean signal x0."""

    name = "x0"

    @staticmethod
    def target(x0, eps, alpha, sigma):
        return x0

    @staticmethod
    def to_estimate(out, x_vp, alpha, sigma):
        return Estimate(out, (x_vp - bcast(alpha, x_vp) * out) / bcast(sigma, x_vp))

    @staticmethod
    def denoise_ve(out, x, sigma, c_in):
        return out

    @staticmethod
    def min_snr_weight(snr, gamma):
        return snr.clamp(max=gamma)


class VPrediction(VPObjective):
    """The network predicts v = alpha eps - sigma x0 (Salimans & Ho 2022)."""

    name = "v"

    @staticmethod
    def target(x0, eps, alpha, sigma):
        return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0

    @staticmethod
    def to_estimate(out, x_vp, alpha, sigma):
        a, s = bcast(alpha, x_vp), bcast(sigma, x_vp)
        return Estimate(a * x_vp - s * out, s * x_vp + a * out)

    @staticmethod
    def denoise_ve(out, x, sigma, c_in):
        return x * c_in**2 - (sigma * c_in) * out  # x0 = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v

    @staticmethod
    def min_snr_weight(snr, gamma):
        return snr.clamp(max=gamma) / (snr + 1)  # v-MSE = (SNR + 1) * x0-MSE


VP_PREDICTIONS: dict[str, type[VPObjective]] = {cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction)}
PREDICTIONS = tuple(VP_PREDICTIONS)
# every objective by name: the VP prediction types, then the continuous-time objectives
OBJECTIVES: dict[str, type[Objective]] = {**VP_PREDICTIONS, "flow": FlowMatching, "edm": EDM}


def check_prediction(prediction: str) -> str:
    if prediction not in VP_PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
    return prediction


def build_objective(schedule, prediction: str = "eps", weighting: str = "uniform", *,
                    min_snr_gamma: float = 5.0, loss_type: str = "l2", **options) -> Objective:
    """The objective named `prediction` (eps | x0 | v over a Schedule, flow over a FlowSchedule, edm
    over an EDMSchedule); `options` are the objective's own keywords (FlowMatching, EDM)."""
    if prediction not in OBJECTIVES:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS} "
                         f"(or an objective of {tuple(OBJECTIVES)[len(PREDICTIONS):]} over its own schedule)")
    cls = OBJECTIVES[prediction]
    if not isinstance(schedule, cls.schedule_type):
        raise ValueError(f"objective {prediction!r} runs over a {cls.schedule_type.__name__}, got "
                         f"{type(schedule).__name__} (DiffusionConfig.build_schedule() makes the right one)")
    return cls(schedule, weighting, min_snr_gamma, loss_type, **options)


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023), expressed for each target so that every prediction type
    gets the x0-space weight min(SNR, gamma): eps-MSE = SNR * x0-MSE, v-MSE = (SNR + 1) * x0-MSE."""
    return VP_PREDICTIONS[check_prediction(prediction)].min_snr_weight(snr, gamma)


def diffusion_loss(model, sched, x0: torch.Tensor, prediction: str = "eps", weighting: str = "uniform", *,
                   min_snr_gamma: float = 5.0, loss_type: str = "l2", mask: torch.Tensor | None = None,
                   reduction: str = "mean", t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, cond: dict | None = None,
                   error_map=None) -> torch.Tensor:
    """`Objective.loss` in one call, t (uniform integer steps) and noise (N(0, I), in x0's dtype)
    drawn from `generator` unless given."""
    objective = build_objective(sched, prediction, weighting, min_snr_gamma=min_snr_gamma, loss_type=loss_type)
    check_batch(x0)
    draws = GeneratorDraws(x0.shape[0], generator, x0.dtype)
    return objective.loss(model, x0, draws, t=t, noise=noise, cond=cond, mask=mask, error_map=error_map,
                          reduction=reduction)
