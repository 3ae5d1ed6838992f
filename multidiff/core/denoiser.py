"""The one view samplers have of a model: the estimate of the clean signal.

`Denoiser` owns a network and its training objective (core/objectives.py), which owns the level
map (`den.schedule`: the levels samplers walk and the network's noise input at each). The
network is called as `model(x_in, c_noise, **cond)`; what it predicts (eps, x0 or v of a VP
schedule, a flow velocity, EDM's preconditioned F) is turned into the clean estimate by the
objective's exact formulas, so no sampler ever needs to know the objective.
"""
from __future__ import annotations

import math

import torch

from .objectives import PREDICTIONS, Estimate, Objective, bcast, build_objective, check_prediction

__all__ = ["Denoiser", "Estimate", "PREDICTIONS", "bcast", "check_prediction"]


class Denoiser:
    """Wraps `model(x_in, c_noise, **cond)` and an objective: `Denoiser(model, schedule, prediction)`
    for a VP schedule and its prediction type (eps | x0 | v), or `Denoiser.of(model, objective)` for
    any objective (flow matching, EDM, ...).

    Two calls, one model evaluation each:
      den.vp(x_t, t, abar, **cond)  -> Estimate(x0, eps)   (x_t = sqrt(abar) x0 + sqrt(1-abar) eps)
      den(x, sigma, t=None, **cond) -> x0                  (x = x0 + sigma eps, VE / k-diffusion view)
    t is the network's noise input at the level (Levels.ts; den.schedule.t_at(sigma) when None).
    `clip_x0` clamps the clean estimate to [-c, c] (eps is re-derived from it so the pair stays
    consistent).
    """

    def __init__(self, model, schedule=None, prediction: str = "eps", clip_x0: float | None = None, *,
                 objective: Objective | None = None):
        if objective is None:
            if schedule is None:
                raise ValueError("give a schedule and its prediction type, or an objective")
            objective = build_objective(schedule, prediction)  # only its output conversions are used here
        elif schedule is not None and schedule is not objective.schedule:
            raise ValueError("give either a schedule (with a prediction type) or an objective, not both")
        self.model = model
        self.objective = objective
        self.schedule = objective.schedule
        self.prediction = objective.name
        self.clip_x0 = clip_x0

    @classmethod
    def of(cls, model, objective: Objective, clip_x0: float | None = None) -> "Denoiser":
        return cls(model, objective=objective, clip_x0=clip_x0)

    def with_clip(self, clip_x0: float | None) -> "Denoiser":
        return Denoiser(self.model, objective=self.objective, clip_x0=clip_x0)

    def with_model(self, model) -> "Denoiser":
        """The same objective and clamp around another network (e.g. a guidance wrapper of this one)."""
        return Denoiser(model, objective=self.objective, clip_x0=self.clip_x0)

    def raw(self, x_in: torch.Tensor, t, **cond) -> torch.Tensor:
        """The network's own output, validated."""
        B = x_in.shape[0]
        if isinstance(t, float | int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t = torch.full((B,), float(t), dtype=torch.float32, device=x_in.device)
        else:
            t = torch.as_tensor(t).to(x_in.device, torch.float32).expand(B)
        out = self.model(x_in, t, **cond)
        if not isinstance(out, torch.Tensor) or out.shape != x_in.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model returned {got}, but its output must have the input's shape "
                             f"{tuple(x_in.shape)}")
        # one reduction: NaN and inf both survive a sum
        if not math.isfinite(float(out.detach().sum())):
            raise ValueError(
                f"the model returned NaN/inf at timestep t={t[0].item():.4g}; check the weights "
                "(a diverged checkpoint?) and the input range ([-1, 1] data)")
        return out if out.dtype == x_in.dtype else out.to(x_in.dtype)

    def vp(self, x_vp: torch.Tensor, t, abar, **cond) -> Estimate:
        """abar: a float, or per-sample [B]."""
        if isinstance(abar, torch.Tensor) and abar.ndim > 0:
            abar = abar.to(torch.float64)
            alpha, sigma, pure_noise = abar.sqrt(), (1 - abar).sqrt(), bool((abar == 0).any())
        else:
            abar = float(abar)
            alpha, sigma, pure_noise = math.sqrt(abar), math.sqrt(1 - abar), abar == 0
        if pure_noise and not self.objective.defined_at_pure_noise:
            raise ValueError(f"a zero-terminal-SNR schedule (abar = 0) cannot be sampled with "
                             f"prediction={self.prediction!r}: its clean estimate is undefined there "
                             "(x0 = (x - eps)/0); train with prediction='v' or 'x0'")
        est = self.objective.denoise_vp(lambda x_in: self.raw(x_in, t, **cond), x_vp, alpha, sigma)
        if self.clip_x0 is None:
            return est
        x0 = est.x0.clamp(-self.clip_x0, self.clip_x0)
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def __call__(self, x: torch.Tensor, sigma, t=None, **cond) -> torch.Tensor:
        if t is None:
            t = self.schedule.t_at(sigma)
        x0 = self.objective.denoise(lambda x_in: self.raw(x_in, t, **cond), x, sigma)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0
