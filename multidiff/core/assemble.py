"""`sample`: the one entry point that turns standard normal noise into data.

It only assembles pieces: the levels from the schedule, guidance as a model
wrapper, the known-region projection for masked generation, then one pure
sampler function. Inputs are never mutated.
"""
from __future__ import annotations

import math

import torch

from .denoiser import Denoiser
from .noise import ColoredNoise
from .guidance import (GuidedModel, ProjectedEstimate, ReconstructionGuided, check_mask, known_region_projection,
                       repaint as repaint_loop)
from .inverse import PseudoinverseGuided, null_space_projection
from .samplers import DDPM_VARIANCES, ETA_SAMPLERS, sampler_spec, ve_sigmas


@torch.no_grad()
def sample(den: Denoiser, noise: torch.Tensor, sampler: str = "ddim", steps: int | None = 50,
           spacing: str = "leading", *, timesteps=None, sigmas=None, rho: float = 7.0, eta: float | None = None,
           variance: str = "beta", generator: torch.Generator | None = None, clip_x0: float | None = None,
           cond: dict | None = None, guidance_scale: float = 1.0, uncond: dict | None = None,
           mask: torch.Tensor | None = None, known: torch.Tensor | None = None,
           repaint: tuple[int, int] | None = None, reconstruction: float | None = None, x0_projection=None,
           noise_color=None, callback=None, progress: bool = False, null_space: bool = False,
           pigdm: float | None = None, replace: bool = True) -> torch.Tensor:
    """Generate data from `noise` ~ N(0, I) of the output's shape [B, C, *dims].

    sampler:   ddpm | ddim | euler | euler_ancestral | heun | dpmpp_2m; consistency for a consistency model
    levels:    `steps` with `spacing` (leading | trailing | linspace | karras), or explicit
               descending `timesteps` and/or `sigmas` (both: paired, e.g. DiffWave fast sampling);
               den.schedule makes them (flow / EDM: karras over [sigma_min, sigma_max], the other
               spacings uniform in the objective's own time; see schedule.ContinuousSchedule)
    eta:       ddim's (default 0) or euler_ancestral's (default 1) noise scale
    variance:  ddpm's step variance, 'beta' (sigma_t^2 = beta_t) or 'posterior'
    clip_x0:   clamp every clean estimate to [-clip_x0, clip_x0]
    cond / guidance_scale / uncond: model kwargs; classifier-free guidance when scale != 1
    mask / known: masked generation (mask 1 = known); `repaint=(jump_length, jump_n_sample)` adds
               RePaint resampling (ddpm/ddim); `reconstruction=w` adds reconstruction guidance of
               weight w (Ho et al. 2022; any sampler; a backward pass per model call);
               `null_space=True` projects every clean estimate onto the known part (DDNM, Wang et al.
               2023; with `repaint` for its time travel); `pigdm=w` adds Pi-GDM guidance of weight w
               (Song et al. 2023; any sampler; a vector-Jacobian product per model call); core/inverse.py.
               `replace=False` leaves out the known-region replacement of the state at every step, so
               the known part reaches the sample only through those (as in the DDNM and Pi-GDM papers)
    x0_projection: `f(x0, sigma) -> x0` applied to every clean estimate (after clip_x0 and guidance),
               e.g. consistency with an observation; eps follows the projected x0
    noise_color: a linear map L for a noise prior N(0, L L^T): `noise` and every fresh draw go
               through it (core/noise.py); the model must have been trained with the same prior
    """
    spec = sampler_spec(sampler)
    if not isinstance(noise, torch.Tensor) or noise.ndim < 2:
        raise ValueError(f"noise must be a tensor [B, C, *dims], got {getattr(noise, 'shape', type(noise))}")
    if not noise.is_floating_point() or not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must be a finite floating-point tensor (standard normal)")
    if (spec.model == "consistency") != bool(getattr(getattr(den, "objective", None), "consistency", False)):
        raise ValueError(f"sampler {sampler!r} samples " + ("consistency models (distilled students); this model is a "
                         "diffusion model" if spec.model == "consistency" else "diffusion models; this model is a "
                         "consistency model: use sampler 'consistency'"))
    if eta is not None and spec.eta is None:
        raise ValueError(f"eta applies to {ETA_SAMPLERS}, not to {sampler!r}")
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown ddpm variance {variance!r}; choose one of {DDPM_VARIANCES}")

    if clip_x0 is not None:
        den = den.with_clip(clip_x0)
    if guidance_scale != 1.0:
        if uncond is None or not cond:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs both `cond` and `uncond`")
        den = den.with_model(GuidedModel(den.model, guidance_scale, uncond))
    levels = den.schedule.levels(steps, spacing, timesteps=timesteps, sigmas=sigmas, rho=rho)
    if noise_color is not None:
        noise = noise_color(noise)
        generator = ColoredNoise(noise_color, generator)

    project = None
    if mask is not None or known is not None:
        mask, known = check_mask(mask, known, noise.shape)
        mask, known = mask.to(noise.device, noise.dtype), known.to(noise.device, noise.dtype)
        project = known_region_projection(mask, known, generator) if replace else None
        if not replace and reconstruction is None and pigdm is None and not null_space:
            raise ValueError("replace=False needs another use of the known part (null_space, pigdm or "
                             "reconstruction); without one the mask would be ignored")
        if reconstruction is not None:
            den = ReconstructionGuided(den, mask, known, reconstruction)
        if pigdm is not None:
            den = PseudoinverseGuided(den, mask, known, pigdm)
        if null_space:
            den = ProjectedEstimate(den, null_space_projection(mask, known))
    elif reconstruction is not None or pigdm is not None or null_space:
        what = ("reconstruction guidance" if reconstruction is not None else
                "Pi-GDM guidance" if pigdm is not None else "the null-space projection (DDNM)")
        raise ValueError(f"{what} needs `mask` and `known`")
    if x0_projection is not None:
        den = ProjectedEstimate(den, x0_projection)
    common = dict(generator=generator, cond=cond, callback=callback, progress=progress)

    if repaint is not None:
        if mask is None:
            raise ValueError("RePaint resampling needs `mask` and `known`")
        jump_length, jump_n_sample = repaint
        return repaint_loop(den, noise.clone(), levels, mask, known, jump_length=jump_length,
                            jump_n_sample=jump_n_sample, sampler=sampler, eta=eta or 0.0, variance=variance,
                            replace=replace, **common)

    if spec.family == "ve":
        s0 = ve_sigmas(levels)[0]
        x = noise * math.sqrt(1 + s0**2)
        if project is not None:
            x = project(x, 1.0, s0)
    else:
        x = noise.clone()
        if project is not None:
            ab0 = float(levels.alphas_cumprod[0])
            x = project(x, math.sqrt(ab0), math.sqrt(1 - ab0))
    opts = {}
    if spec.eta is not None and eta is not None:
        opts["eta"] = eta
    if sampler == "ddpm":
        opts["variance"] = variance
    return spec.fn(den, x, levels, project=project, **opts, **common)
