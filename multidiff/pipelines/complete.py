"""Completion: fill the unknown part (mask == 0) of a signal -- image holes, audio gaps, video frames --
with one table of methods. A new method is one entry in METHODS; every modality gets it at once.

  replace          known-region replacement at every step (any sampler)
  repaint          RePaint's resampling jumps on top of replacement (Lugmayr et al. 2022; ddpm/ddim)
  reconstruction   replacement + reconstruction guidance (Ho et al. 2022): the unknown part follows the
                   gradient that makes the model's estimate of the known part match it
  conditioned      a model trained with [mask, masked signal] as extra input channels
  ddnm             DDNM (Wang et al. 2023): every clean estimate's known part replaced by the known signal
                   (range/null-space decomposition for A = mask), with its time travel (RePaint's jumps)
  pigdm            Pi-GDM (Song et al. 2023): every clean estimate moved along J^T m (known - x0), one
                   vector-Jacobian product through the model per call (core/inverse.py)
                   (both as in their papers: no replacement of the noisy state's known part; the known part
                   reaches the sample through the clean estimates, and is pasted into the result)

In an autoencoder's latent space the known signal is encoded, the mask min-pooled to latent cells,
the result decoded, and the known part pasted back (the decoder only approximates it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..core.samplers import ETA_SAMPLERS, VP_SAMPLERS
from ..errors import UserError
from ..modalities.base import Trained
from ..utils import added_key


@dataclass
class CompletionSampling:
    """How each completion method samples: the keys the [inpaint] (images) and [predict] (video frames)
    sections share; audio gap filling uses these defaults with the modality's own steps."""
    SECTION: ClassVar[str] = "inpaint"
    repaint_sampler: str = "ddpm"     # RePaint: ddpm (the paper) or ddim steps with resampling jumps
    repaint_steps: int = 50
    jump_length: int = 5
    jump_n_sample: int = 5
    replace_sampler: str = "ddpm"     # plain known-region replacement, no resampling
    replace_steps: int = 50
    reconstruction_sampler: str = "ddpm"  # replacement + reconstruction guidance (Ho et al. 2022)
    reconstruction_steps: int = 50
    reconstruction_weight: float = 20.0
    conditioned_sampler: str = "dpmpp_2m"
    conditioned_steps: int = 20
    ssim_window: int = 7
    seed: int = 2
    # (keys added later: at their defaults they leave existing runs' hashes alone)
    ddnm_sampler: str = added_key("ddim")     # DDNM: null-space projection of every clean estimate
    ddnm_steps: int = added_key(50)
    ddnm_eta: float = added_key(0.85)         # the paper's DDIM eta (used by ddim / euler_ancestral)
    ddnm_travel_length: int = added_key(5)    # time travel: go back this many steps ...
    ddnm_travel_repeat: int = added_key(2)    # ... so that each window is sampled this often (1 = no travel)
    pigdm_sampler: str = added_key("ddpm")    # Pi-GDM guidance (one vector-Jacobian product per model call)
    pigdm_steps: int = added_key(50)
    pigdm_weight: float = added_key(1.0)      # 1 = the paper's guidance

    def __post_init__(self):
        bad = [m for m in getattr(self, "methods", ()) if m not in METHODS]  # the sections list methods
        if bad:
            raise ValueError(f"{self.SECTION}.methods: unknown {bad}; choose from {tuple(METHODS)}")
        s = self.SECTION
        for key in ("ddnm_steps", "ddnm_travel_length", "ddnm_travel_repeat", "pigdm_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{s}.{key} = {getattr(self, key)}: it must be >= 1")
        if not self.ddnm_eta >= 0:
            raise ValueError(f"{s}.ddnm_eta = {self.ddnm_eta}: it must be >= 0 (0 = deterministic DDIM)")
        if not self.pigdm_weight > 0:
            raise ValueError(f"{s}.pigdm_weight = {self.pigdm_weight}: it must be > 0 (1 = the paper's guidance)")
        if self.ddnm_travel_repeat > 1 and self.ddnm_sampler not in VP_SAMPLERS:
            raise ValueError(f"{s}.ddnm_sampler = {self.ddnm_sampler!r}: DDNM's time travel "
                             f"({s}.ddnm_travel_repeat > 1) steps with {' or '.join(VP_SAMPLERS)}; choose one, "
                             f"or set {s}.ddnm_travel_repeat = 1")


@dataclass(frozen=True)
class Method:
    """One completion method: whether it needs a model conditioned on the known part, and how it samples:
    `options(cfg)` -> (sampler, steps, further core.sample keywords), `spacing` None = the sampler's default."""
    conditioned: bool
    options: Callable[[CompletionSampling], tuple[str, int, dict]]  # cfg -> (sampler, steps, extra sample() keys)
    spacing: str | None = None


METHODS: dict[str, Method] = {
    "repaint": Method(False, lambda c: (c.repaint_sampler, c.repaint_steps,
                                       {"repaint": (c.jump_length, c.jump_n_sample)})),
    "replace": Method(False, lambda c: (c.replace_sampler, c.replace_steps, {})),
    "reconstruction": Method(False, lambda c: (c.reconstruction_sampler, c.reconstruction_steps,
                                               {"reconstruction": c.reconstruction_weight})),
    "conditioned": Method(True, lambda c: (c.conditioned_sampler, c.conditioned_steps, {}), spacing="karras"),
    "ddnm": Method(False, lambda c: (c.ddnm_sampler, c.ddnm_steps, {
        "null_space": True, "replace": False, **({"eta": c.ddnm_eta} if c.ddnm_sampler in ETA_SAMPLERS else {}),
        **({"repaint": (c.ddnm_travel_length, c.ddnm_travel_repeat)} if c.ddnm_travel_repeat > 1 else {})})),
    "pigdm": Method(False, lambda c: (c.pigdm_sampler, c.pigdm_steps, {"pigdm": c.pigdm_weight, "replace": False})),
}


def with_steps(cfg, steps: int):
    """cfg ([inpaint] or [predict]) with every method's sampling steps set to `steps` (--steps)."""
    return dataclasses.replace(cfg, **{f.name: steps for f in dataclasses.fields(cfg) if f.name.endswith("_steps")})


def complete(trained: Trained, method: str, known: torch.Tensor, mask: torch.Tensor, cfg: CompletionSampling,
             device, bf16: bool, generator: torch.Generator, cond: dict | None = None) -> torch.Tensor:
    """Fill mask == 0 of `known` [B, C, *dims] (mask [B or 1, 1, *dims], 1 = known) with `method`; the
    known part of the result is `known` exactly."""
    if method not in METHODS:
        raise ValueError(f"unknown completion method {method!r}; choose one of {tuple(METHODS)}")
    if not bool(torch.isfinite(known).all()):  # caught here, or the sampler would blame the model for the NaN
        raise UserError("the input to complete holds NaN or inf values: give a file of finite samples")
    m, s, spec = trained.modality, trained.sections, METHODS[method]
    # (a conditioned model that also generates -- trained with nothing known too -- serves the plain methods)
    if m.conditioned(s) != spec.conditioned and not (m.conditioned(s) and m.generates(s)):
        need = f"a {m.conditioned_name} model" if spec.conditioned else "an unconditional model"
        raise ValueError(f"method '{method}' needs {need}; this run's model is "
                         f"{m.conditioned_name if m.conditioned(s) else 'unconditional'}")
    mask = mask.expand(known.shape[0], 1, *known.shape[2:]).to(known.dtype)
    z_known, z_mask = m.encode(known), m.encode_mask(mask)
    z_mask = z_mask.expand(z_known.shape[0], 1, *z_known.shape[2:]).to(z_known.dtype)
    clip = m.estimate_clip(s)
    sampler, steps, extra = spec.options(cfg)
    cond = dict(cond or {})
    if spec.conditioned:
        cond["concat"] = torch.cat([z_mask, z_known * z_mask], 1)
    else:
        cond.update(m.generation_cond(s, z_known.shape))
    den = trained.denoiser(device, bf16)
    noise = torch.randn(z_known.shape, generator=generator)
    x = trained.sample(den, noise, generator, cond, device, mask=z_mask, known=z_known, clip_x0=clip,
                       **m.sampling(s, sampler, steps, spec.spacing), **extra)
    x = m.decode(x.clamp(-clip, clip) if clip else x).clamp(-1, 1)
    return mask * known + (1 - mask) * x
