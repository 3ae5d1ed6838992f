"""Classifier-free guidance and masked (inpainting) generation, for any [B, C, *dims].

A mask is 1 where the signal is known. The same functions fill a hole in an
image, a gap in a waveform and missing frames of a video.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .denoiser import Denoiser, Estimate, bcast
from .noise import randn_like
from .samplers import ddim_step, ddpm_step, vp_coefficients
from .schedule import Levels


class GuidedModel(torch.nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) as a model wrapper:
    out = out_uncond + scale * (out_cond - out_uncond), both halves in one batched call.

    Every prediction type (eps, x0, v) maps to the clean estimate by the same affine
    formula at a given level, so guiding the raw output is the same as guiding eps or x0.
    """

    def __init__(self, model, scale: float, uncond: dict):
        super().__init__()
        self.model, self.scale, self.uncond = model, float(scale), dict(uncond)

    def forward(self, x, t, **cond):
        if set(cond) != set(self.uncond):
            raise ValueError(f"guidance needs the same keys in cond {sorted(cond)} and uncond {sorted(self.uncond)}")
        both = {}
        for k in cond:
            c, u = torch.as_tensor(cond[k]), torch.as_tensor(self.uncond[k])
            if u.shape != c.shape:
                u = u.expand_as(c) if u.numel() == 1 or u.shape[1:] == c.shape[1:] else u
            if u.shape != c.shape:
                raise ValueError(f"uncond[{k!r}] has shape {tuple(u.shape)}, cond[{k!r}] has {tuple(c.shape)}")
            both[k] = torch.cat([c, u.to(c.device, c.dtype)])
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **both)
        out_c, out_u = out.chunk(2)
        return out_u + self.scale * (out_c - out_u)


def check_mask(mask: torch.Tensor, known: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    if known is None or mask is None:
        raise ValueError("masked generation needs both `mask` (1 = known) and `known` (the signal to keep)")
    if tuple(known.shape) != tuple(shape):
        raise ValueError(f"`known` has shape {tuple(known.shape)} but the output has shape {tuple(shape)}")
    try:
        torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        raise ValueError(f"`mask` of shape {tuple(mask.shape)} does not broadcast to the output "
                         f"{tuple(shape)}") from None
    if len(mask.shape) != len(shape):
        raise ValueError(f"`mask` needs {len(shape)} dims like the output {tuple(shape)} (size-1 dims broadcast), "
                         f"got {tuple(mask.shape)}")
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("`mask` must be binary (1 = known, 0 = to generate)")
    return mask.to(known.dtype), known


def known_region_projection(mask: torch.Tensor, known: torch.Tensor, generator=None):
    """A `project` hook for any sampler: replace the known region by the known signal noised to the
    current level with fresh noise, x <- m (alpha k + sigma z) + (1 - m) x (Lugmayr et al. 2022, eq. 8).
    At sigma = 0 this is the known signal itself, so the output keeps it exactly."""

    def project(x, alpha: float, sigma: float):
        k = alpha * known if sigma == 0 else alpha * known + sigma * randn_like(known, generator)
        return torch.where(mask.bool(), k, x)

    return project


def _alpha_sigma(abar):
    """VP coefficients sqrt(abar), sqrt(1 - abar): floats, or float64 [B] for per-sample levels."""
    if isinstance(abar, torch.Tensor) and abar.ndim > 0:
        ab = abar.to(torch.float64)
        return ab.sqrt(), (1 - ab).sqrt()
    return math.sqrt(float(abar)), math.sqrt(1 - float(abar))


def _ve_sigma(alpha, sigma):
    """sigma / alpha, inf at pure noise (alpha = 0)."""
    if isinstance(alpha, torch.Tensor):
        return sigma / alpha  # tensor division gives inf there
    return sigma / alpha if alpha > 0 else math.inf


class _Differentiable(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, **cond):
        out = self.model(x, t, **cond)
        if x.requires_grad and not out.requires_grad:
            raise ValueError(f"reconstruction guidance needs gradients through the model, but "
                             f"{type(self.model).__name__} returned an output without them (is its forward "
                             f"wrapped in torch.no_grad() or inference_mode?)")
        return out


class ReconstructionGuided(Denoiser):
    """Reconstruction guidance (Ho et al. 2022, "Video Diffusion Models", eq. 7) for masked generation
    with an unconditional model: the clean estimate of the unknown region is moved along the
    gradient that makes the estimate of the *known* region match the known signal,

        x0_b <- x0_b - (w alpha_t / 2) grad_{z_t} || m (known - x0(z_t)) ||^2    (VP z_t = alpha x0 + sigma eps),

    which couples the generated part to the known part through the network (replacement alone only
    sets z_t's known region, which the unknown region's estimate may ignore). Used together with the
    known-region projection, as in the paper. The VE view gets the same correction: with x = z / alpha,
    (w alpha / 2) grad_z = (w / 2) grad_x. One backward pass per model call, so a step costs ~3 forwards."""

    def __init__(self, den: Denoiser, mask: torch.Tensor, known: torch.Tensor, weight: float):
        super().__init__(den.model, objective=den.objective, clip_x0=den.clip_x0)
        if not weight > 0:
            raise ValueError(f"reconstruction guidance weight must be > 0, got {weight}")
        self.mask, self.known, self.weight = mask, known, float(weight)
        # unclamped (clamping before the gradient would zero it where x0 is clamped), and checked:
        # a net that runs under no_grad would leave only x0's identity path in z, a silent no-op
        self._plain = Denoiser.of(_Differentiable(den.model), den.objective)

    def with_clip(self, clip_x0):
        return ReconstructionGuided(Denoiser.of(self.model, self.objective, clip_x0), self.mask, self.known,
                                    self.weight)

    def _guided(self, x: torch.Tensor, estimate, scale) -> torch.Tensor:
        """x0 = estimate(x) moved by -scale * grad_x ||m (known - x0(x))||^2 where mask = 0, then clamped."""
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            x0 = estimate(z)
            err = ((self.known - x0) * self.mask).float().pow(2).sum()
            (grad,) = torch.autograd.grad(err, z)
        x0 = x0.detach()
        moved = x0 - (1 - self.mask) * bcast(scale, x0) * grad.to(x0.dtype)
        return moved if self.clip_x0 is None else moved.clamp(-self.clip_x0, self.clip_x0)

    def vp(self, x_vp, t, abar, **cond):
        alpha, sigma = _alpha_sigma(abar)
        x0 = self._guided(x_vp, lambda z: self._plain.vp(z, t, abar, **cond).x0, self.weight * alpha / 2)
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def __call__(self, x, sigma, t=None, **cond):
        return self._guided(x, lambda z: self._plain(z, sigma, t, **cond), self.weight / 2)


class ProjectedEstimate(Denoiser):
    """Data consistency on the clean estimate: x0 <- project(x0, sigma) after every model call, with
    eps re-derived from the projected x0 so the sampler's pair stays consistent (as clip_x0 does for
    a clamp). `project` maps an estimate onto (or towards) the signals that agree with an
    observation, e.g. a vocoder's mel (GLA-Grad, Liu et al. 2024, puts Griffin-Lim steps here); it
    gets the VE noise level sigma (a float or [B]) and may leave early, noisy estimates alone."""

    def __init__(self, den: Denoiser, project):
        super().__init__(den.model, objective=den.objective, clip_x0=den.clip_x0)
        self.inner, self.project = den, project

    def with_clip(self, clip_x0):
        return ProjectedEstimate(self.inner.with_clip(clip_x0), self.project)

    def vp(self, x_vp, t, abar, **cond):
        alpha, sigma = _alpha_sigma(abar)
        x0 = self.project(self.inner.vp(x_vp, t, abar, **cond).x0, _ve_sigma(alpha, sigma))
        return Estimate(x0, (x_vp - bcast(alpha, x_vp) * x0) / bcast(sigma, x_vp))

    def __call__(self, x, sigma, t=None, **cond):
        return self.project(self.inner(x, sigma, t, **cond), sigma)


def repaint_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """RePaint's time schedule (Lugmayr et al. 2022, Alg. 1 with jumps): times steps-1 .. -1 going
    down, and every `jump_length` steps going back up `jump_length` steps, `jump_n_sample - 1` times."""
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError("repaint needs steps, jump_length and jump_n_sample >= 1")
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, ts = steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return ts


def repaint(den: Denoiser, x: torch.Tensor, levels: Levels, mask: torch.Tensor, known: torch.Tensor, *,
            jump_length: int = 10, jump_n_sample: int = 10, sampler: str = "ddpm", eta: float = 0.0,
            variance: str = "posterior", generator=None, cond=None, callback=None, progress=False,
            replace: bool = True) -> torch.Tensor:
    """RePaint resampling on top of ddpm (the paper) or ddim steps, VP coordinates (x starts as noise).

    Time k of the RePaint schedule is level index N-1-k; a step down is one sampler step with
    known-region replacement (replace=False: none, e.g. DDNM's time travel, whose denoiser keeps the
    known part), a step up re-noises by the forward process q(x_up | x_down)."""
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"RePaint resampling works with sampler 'ddpm' or 'ddim', not {sampler!r}")
    project = known_region_projection(mask, known, generator) if replace else (lambda x, alpha, sigma: x)
    n = len(levels)
    abar = levels.alphas_cumprod.tolist()
    sched = repaint_schedule(n, jump_length, jump_n_sample)
    x = project(x, *vp_coefficients(abar[0]))
    for j, (k, k_next) in enumerate(tqdm(list(zip(sched[:-1], sched[1:])), desc="repaint", disable=not progress,
                                         leave=False)):
        i = n - 1 - k
        if k_next < k:  # denoise level i -> i + 1
            if sampler == "ddpm":
                x, x0 = ddpm_step(den, x, levels.ts[i], abar[i], abar[i + 1], variance=variance,
                                  generator=generator, cond=cond, last=i == n - 1)
            else:
                x, x0 = ddim_step(den, x, levels.ts[i], abar[i], abar[i + 1], eta=eta, generator=generator,
                                  cond=cond)
            x = project(x, *vp_coefficients(abar[i + 1]))
            if callback is not None:
                callback({"i": j, "x": x, "denoised": x0, "sigma": float(levels.sigmas[i]), "t": float(levels.ts[i])})
        else:  # re-noise level i -> i - 1 with q(x_{i-1} | x_i)
            ratio = abar[i - 1] / abar[i]
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * randn_like(x, generator)
    return x

