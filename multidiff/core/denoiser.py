"""The one view samplers have of a model: the estimate of the clean signal.

`Denoiser` owns a network, its schedule and its prediction type. The network is
called as `model(x_t, t, **cond)` with the VP-scaled input x_t and float
timesteps t [B]; whatever it predicts (eps, x0 or v) is turned into an (x0, eps)
pair by its objective's exact formulas (core/objectives.py), so no sampler ever
needs to know the prediction type.
"""
from __future__ import annotations

import math

import torch

from .objectives import PREDICTIONS, Estimate, bcast, build_objective, check_prediction
from .schedule import Schedule

__all__ = ["Denoiser", "Estimate", "PREDICTIONS", "bcast", "check_prediction"]


class Denoiser:
    """Wraps `model(x_t, t, **cond)` + a Schedule + a prediction type.

    Two calls, one model evaluation each:
      den.vp(x_t, t, abar, **cond)  -> Estimate(x0, eps)   (x_t = sqrt(abar) x0 + sqrt(1-abar) eps)
      den(x, sigma, t=None, **cond) -> x0                  (x = x0 + sigma eps, VE / k-diffusion view)
    `clip_x0` clamps the clean estimate to [-c, c] (eps is re-derived from it so the pair stays
    consistent).
    """

    def __init__(self, model, schedule: Schedule, prediction: str = "eps", clip_x0: float | None = None):
        self.model = model
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        self.objective = build_objective(schedule, prediction)  # only its output conversions are used here
        self.clip_x0 = clip_x0

    def with_clip(self, clip_x0: float | None) -> "Denoiser":
        return Denoiser(self.model, self.schedule, self.prediction, clip_x0)

    def raw(self, x_vp: torch.Tensor, t, **cond) -> torch.Tensor:
        """The network's own output, validated."""
        B = x_vp.shape[0]
        if isinstance(t, float | int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
            t = torch.full((B,), float(t), dtype=torch.float32, device=x_vp.device)
        else:
            t = torch.as_tensor(t).to(x_vp.device, torch.float32).expand(B)
        out = self.model(x_vp, t, **cond)
        if not isinstance(out, torch.Tensor) or out.shape != x_vp.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model returned {got}, but its output must have the input's shape "
                             f"{tuple(x_vp.shape)}")
        # one reduction: NaN and inf both survive a sum
        if not math.isfinite(float(out.detach().sum())):
            raise ValueError(
                f"the model returned NaN/inf at timestep t={t[0].item():.4g}; check the weights "
                "(a diverged checkpoint?) and the input range ([-1, 1] data)")
        return out if out.dtype == x_vp.dtype else out.to(x_vp.dtype)

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
        est = self.objective.to_estimate(self.raw(x_vp, t, **cond), x_vp, alpha, sigma)
        if self.clip_x0 is None:
            return est
        x0 = est.x0.clamp(-self.clip_x0, self.clip_x0)
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def __call__(self, x: torch.Tensor, sigma, t=None, **cond) -> torch.Tensor:
        if t is None:
            t = self.schedule.t_at(sigma)
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:  # per-sample sigmas [B]
            s = bcast(sigma, x)
            c_in = (1 + s**2).rsqrt()
        else:  # one level for the whole batch: plain floats, no tensor bookkeeping per step
            s = float(sigma)
            c_in = 1 / math.sqrt(1 + s * s)
        x0 = self.objective.denoise_ve(self.raw(x * c_in, t, **cond), x, s, c_in)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0
