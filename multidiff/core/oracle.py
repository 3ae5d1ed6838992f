"""The exact optimal denoiser for Gaussian data x0 ~ N(mean, std^2 I), as a raw network of any
objective.

With x_t = alpha x0 + sigma eps, the posterior mean is closed form:
E[x0 | x_t] = mean + alpha std^2 (x_t - alpha mean) / (alpha^2 std^2 + sigma^2),
and E[eps | x_t] = (x_t - alpha E[x0 | x_t]) / sigma. Every objective's optimal output is its
target at these two (eps / x0 / v; flow matching's exact velocity field E[eps - x0 | x_t]; EDM's
F = (E[x0 | x] - c_skip x) / c_out), so the oracle reads the level off the network's noise input
and undoes the objective's input scaling. It is the yardstick for samplers: every error left is
the sampler's own, and the probability-flow ODE has the exact solution
x0 = mean + std (x_T - mean) / sqrt(std^2 + sigma_T^2) in VE coordinates, for every objective.
"""
from __future__ import annotations

import torch

from .objectives import Objective, build_objective, check_prediction


class GaussianOracle(torch.nn.Module):
    """`GaussianOracle(schedule, mean, std, prediction)` for a VP schedule and prediction type, or
    `GaussianOracle(objective, mean, std)` for any objective (flow matching, EDM)."""

    def __init__(self, schedule, mean: float = 0.0, std: float = 1.0, prediction: str = "eps"):
        super().__init__()
        if isinstance(schedule, Objective):
            self.objective = schedule
        else:
            self.objective = build_objective(schedule, check_prediction(prediction))
        self.schedule, self.mean, self.std = self.objective.schedule, float(mean), float(std)
        self.prediction = self.objective.name

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        ab = self.schedule.alpha_bar_at(t.double().cpu()).to(x_t.device)
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        a, s = ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)
        xd = x_t.double()
        scale = self.objective.input_scale_vp(a, s)
        if not (isinstance(scale, float) and scale == 1.0):
            xd = xd / scale  # the network saw scale * x_vp
        x0 = self.mean + a * self.std**2 * (xd - a * self.mean) / (a**2 * self.std**2 + s**2)
        eps = (xd - a * x0) / s
        return self.objective.target(x0, eps, a, s).to(x_t.dtype)

    def ode_solution(self, x_T_ve: torch.Tensor, sigma_T: float) -> torch.Tensor:
        """Where the exact probability-flow ODE takes the VE state x_T at sigma_T."""
        return self.mean + self.std * (x_T_ve - self.mean) / (self.std**2 + sigma_T**2) ** 0.5

    def posterior_mean(self, x_ve: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x = x0 + sigma eps], the exact denoiser D(x; sigma)."""
        return self.mean + self.std**2 * (x_ve - self.mean) / (self.std**2 + sigma**2)
