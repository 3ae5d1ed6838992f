"""The exact optimal denoiser for Gaussian data x0 ~ N(mean, std^2 I).

With x_t = alpha x0 + sigma eps, the posterior mean is closed form:
E[x0 | x_t] = mean + alpha std^2 (x_t - alpha mean) / (alpha^2 std^2 + sigma^2).
It is the yardstick for samplers: every error left is the sampler's own, and the
probability-flow ODE has the exact solution x0 = mean + std (x_T - mean) / sqrt(std^2 + sigma_T^2)
in VE coordinates.
"""
from __future__ import annotations

import torch

from .objectives import OBJECTIVES, check_prediction
from .schedule import Schedule


class GaussianOracle(torch.nn.Module):
    def __init__(self, schedule: Schedule, mean: float = 0.0, std: float = 1.0, prediction: str = "eps"):
        super().__init__()
        self.schedule, self.mean, self.std = schedule, float(mean), float(std)
        self.prediction = check_prediction(prediction)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        ab = self.schedule.alpha_bar_at(t.double().cpu()).to(x_t.device)
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        a, s = ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)
        xd = x_t.double()
        x0 = self.mean + a * self.std**2 * (xd - a * self.mean) / (a**2 * self.std**2 + s**2)
        eps = (xd - a * x0) / s
        return OBJECTIVES[self.prediction].target(x0, eps, a, s).to(x_t.dtype)

    def ode_solution(self, x_T_ve: torch.Tensor, sigma_T: float) -> torch.Tensor:
        """Where the exact probability-flow ODE takes the VE state x_T at sigma_T."""
        return self.mean + self.std * (x_T_ve - self.mean) / (self.std**2 + sigma_T**2) ** 0.5
