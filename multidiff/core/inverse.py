"""Zero-shot completion as a linear inverse problem y = A x0 with A = the mask (1 = known): an
unconditional model's clean estimate is made to agree with the known part, for any [B, C, *dims].

* DDNM (Wang et al. 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model"):
  range/null-space decomposition of every clean estimate, x0 <- A^+ y + (I - A^+ A) x0. For a mask
  A = A^+ = diag(m), so x0 <- m known + (1 - m) x0; the sampler's step then goes on from the
  corrected x0 (eps re-derived from it). Its "time travel" is RePaint's resampling schedule
  (core/guidance.repaint), used on top of it.
* Pi-GDM (Song et al. 2023, "Pseudoinverse-Guided Diffusion Models for Inverse Problems"): with
  p(x0 | x_t) taken as N(x0_hat, r_t^2 I), the likelihood score of a noiseless observation is
  g = J^T A^T (r_t^2 A A^T)^-1 (y - A x0_hat), J = d x0_hat / d x_t: one vector-Jacobian product
  through the model per call. Added to the model's score it moves the clean estimate by Tweedie's
  formula (VP x_t = alpha x0 + sigma eps, r_t^2 = sigma^2 as for unit-variance data):

      x0 <- x0 + w (sigma^2 / alpha) g = x0 + (w / alpha) J_z^T m (known - x0)

  and in VE coordinates x = z / alpha (J_x = alpha J_z, 1 / alpha^2 = 1 + sigma_ve^2) the same
  x0 <- x0 + w (1 + sigma_ve^2) J_x^T m (known - x0). For Gaussian data N(mu, I) this is the exact
  conditional posterior mean (tests/test_inverse.py); w = 1 is the paper's guidance.
"""
from __future__ import annotations

import torch

from .denoiser import Denoiser, Estimate, bcast
from .guidance import _alpha_sigma, _Differentiable


def null_space_projection(mask: torch.Tensor, known: torch.Tensor):
    """DDNM's projection of a clean estimate for a mask (an `x0_projection` for sample()): the known
    part of x0 becomes the known signal (A^+ y), the rest is x0's null-space part, kept."""
    keep = mask.bool()

    def project(x0: torch.Tensor, sigma) -> torch.Tensor:
        return torch.where(keep, known.to(x0.dtype), x0)

    return project


class PseudoinverseGuided(Denoiser):
    """Pi-GDM guidance for masked generation (module docstring): every clean estimate moved by
    (w / alpha) J_z^T m (known - x0), one backward pass per model call, then clamped."""

    def __init__(self, den: Denoiser, mask: torch.Tensor, known: torch.Tensor, weight: float = 1.0):
        super().__init__(den.model, objective=den.objective, clip_x0=den.clip_x0)
        if not weight > 0:
            raise ValueError(f"Pi-GDM guidance weight must be > 0, got {weight}")
        self.mask, self.known, self.weight = mask, known, float(weight)
        # unclamped: a clamp before the vector-Jacobian product would zero it where x0 is clamped
        self._plain = Denoiser.of(_Differentiable(den.model), den.objective)

    def with_clip(self, clip_x0):
        return PseudoinverseGuided(Denoiser.of(self.model, self.objective, clip_x0), self.mask, self.known,
                                   self.weight)

    def _guided(self, x: torch.Tensor, estimate, scale) -> torch.Tensor:
        """x0 = estimate(x) + scale * J^T m (known - x0), J = d x0 / d x, then clamped."""
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            x0 = estimate(z)
            residual = (self.mask * (self.known - x0)).detach()
            (vjp,) = torch.autograd.grad(x0, z, grad_outputs=residual)
        x0 = x0.detach()
        moved = x0 + bcast(scale, x0) * vjp.to(x0.dtype)
        return moved if self.clip_x0 is None else moved.clamp(-self.clip_x0, self.clip_x0)

    def vp(self, x_vp, t, abar, **cond):
        alpha, sigma = _alpha_sigma(abar)
        if isinstance(alpha, torch.Tensor):  # per-sample levels; no guidance at pure noise (alpha = 0)
            scale = torch.where(alpha > 0, self.weight / alpha.clamp_min(1e-300), torch.zeros_like(alpha))
        else:
            scale = self.weight / alpha if alpha > 0 else 0.0
        x0 = self._guided(x_vp, lambda z: self._plain.vp(z, t, abar, **cond).x0, scale)
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def __call__(self, x, sigma, t=None, **cond):
        s2 = sigma.to(torch.float64) ** 2 if isinstance(sigma, torch.Tensor) else float(sigma) ** 2
        return self._guided(x, lambda z: self._plain(z, sigma, t, **cond), self.weight * (1 + s2))
