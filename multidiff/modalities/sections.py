"""The [diffusion] and [sample] sections every recipe shares, and the training loss of one batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import Schedule, diffusion_loss
from ..core.denoiser import PREDICTIONS
from ..core.losses import LOSS_TYPES, WEIGHTINGS
from ..core.samplers import SAMPLERS
from ..core.schedule import SPACINGS

SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")


@dataclass
class DiffusionConfig:
    schedule: str = "linear"        # linear | cosine | scaled_linear | sigmoid
    timesteps: int = 1000
    beta_start: float = 1e-4        # linear / scaled_linear only
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    prediction: str = "eps"         # eps | x0 | v
    weighting: str = "uniform"      # uniform | min_snr
    min_snr_gamma: float = 5.0
    loss_type: str = "l2"           # l2 | l1

    def __post_init__(self):
        for name, allowed in (("schedule", SCHEDULES), ("prediction", PREDICTIONS), ("weighting", WEIGHTINGS),
                              ("loss_type", LOSS_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"diffusion.{name} = {getattr(self, name)!r} is not one of {allowed}")

    def build_schedule(self) -> Schedule:
        T = self.timesteps
        if self.schedule == "linear":
            s = Schedule.linear(T, self.beta_start, self.beta_end)
        elif self.schedule == "scaled_linear":
            s = Schedule.scaled_linear(T, self.beta_start, self.beta_end)
        elif self.schedule == "cosine":
            s = Schedule.cosine(T)
        else:
            s = Schedule.sigmoid(T)
        return s.rescale_zero_terminal_snr() if self.zero_terminal_snr else s


@dataclass
class SampleConfig:
    """The [sample] section: how previews and the recipe's sample stage draw samples."""
    sampler: str = "dpmpp_2m"
    steps: int = 20
    spacing: str = "karras"
    eta: float = -1.0               # < 0: the sampler's default
    n: int = 64
    seed: int = 0
    guidance_scale: float = 1.0
    clip_x0: float = 1.0            # clamp clean estimates to [-c, c] (data lives in [-1, 1]); 0 = off

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sample.sampler = {self.sampler!r} is not one of {SAMPLERS}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing = {self.spacing!r} is not one of {SPACINGS}")

    def kwargs(self) -> dict:
        kw = dict(sampler=self.sampler, steps=self.steps, spacing=self.spacing,
                  clip_x0=self.clip_x0 if self.clip_x0 > 0 else None)
        if self.eta >= 0:
            kw["eta"] = self.eta
        return kw


def batch_loss(net, cfg: DiffusionConfig, sched: Schedule, x0: torch.Tensor, rand, cond: dict | None = None,
               mask: torch.Tensor | None = None, noise_color=None, error_map=None) -> torch.Tensor:
    """diffusion_loss with t and noise taken from the step's BatchRandom (so it is resumable and the
    same for any number of processes); `noise_color` / `error_map`: a noise prior (core/noise.py)."""
    t = rand.randint(sched.T).to(torch.float64).cpu()
    noise = rand.randn(*x0.shape[1:]).to(x0.device, x0.dtype)
    for ndim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x0.ndim == ndim and x0.is_contiguous(memory_format=fmt):
            noise = noise.contiguous(memory_format=fmt)  # x_t keeps the fast layout
    if noise_color is not None:
        noise = noise_color(noise)
    return diffusion_loss(net, sched, x0, cfg.prediction, cfg.weighting, min_snr_gamma=cfg.min_snr_gamma,
                          loss_type=cfg.loss_type, mask=mask, t=t, noise=noise, cond=cond, error_map=error_map)
