"""The one view samplers have of a model: the estimate of the clean signal.

`Denoiser` owns a network, its schedule and its prediction type. The network is
called as `model(x_t, t, **cond)` with the VP-scaled input x_t and float
timesteps t [B]; whatever it predicts (eps, x0 or v) is turned into an (x0, eps)
pair with exact formulas, so no sampler ever needs to know the prediction type.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .schedule import Schedule

PREDICTIONS = ("eps", "x0", "v")


class Estimate(NamedTuple):
    x0: torch.Tensor
    eps: torch.Tensor


def bcast(v, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample [B] quantity shaped to broadcast over [B, C, *dims]."""
    if isinstance(v, float | int) or (isinstance(v, torch.Tensor) and v.ndim == 0):
        return float(v)  # python scalars broadcast for free and keep the tensor's dtype
    v = torch.as_tensor(v, dtype=torch.float64)
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
    return prediction


def to_estimate(out: torch.Tensor, x_vp: torch.Tensor, alpha, sigma, prediction: str) -> Estimate:
    """Exact conversion of a raw prediction at x_t = alpha x0 + sigma eps (VP, alpha^2 + sigma^2 = 1)."""
    a, s = bcast(alpha, x_vp), bcast(sigma, x_vp)
    if prediction == "eps":
        return Estimate((x_vp - s * out) / a, out)
    if prediction == "x0":
        return Estimate(out, (x_vp - a * out) / s)
    return Estimate(a * x_vp - s * out, s * x_vp + a * out)  # v = alpha eps - sigma x0


def target_for(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """What a network of this prediction type should output for (x0, eps) at level (alpha, sigma)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0


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
            raise ValueError(f"the model returned {got}, but its output must have the input's shape {tuple(x_vp.shape)}")
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
        if self.prediction == "eps" and pure_noise:
            raise ValueError("a zero-terminal-SNR schedule (abar = 0) cannot be sampled with prediction='eps': "
                             "x0 = (x - eps)/0 is undefined; train with prediction='v' or 'x0'")
        est = to_estimate(self.raw(x_vp, t, **cond), x_vp, alpha, sigma, self.prediction)
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
        out = self.raw(x * c_in, t, **cond)
        if self.prediction == "eps":  # written in VE form, where it is exact: x0 = x - sigma eps
            x0 = x - s * out
        elif self.prediction == "x0":
            x0 = out
        else:  # v: x0 = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v
            x0 = x * c_in**2 - (s * c_in) * out
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0
