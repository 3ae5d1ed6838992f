"""The [diffusion] and [sample] sections every recipe shares, and the training loss of one batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.objectives import LOSS_TYPES, OBJECTIVES, WEIGHTINGS, Objective, build_objective
from ..core.samplers import SAMPLERS
from ..core.schedule import SCHEDULES, SPACINGS, Schedule


@dataclass
class DiffusionConfig:
    schedule: str = "linear"        # linear | cosine | scaled_linear | sigmoid
    timesteps: int = 1000
    beta_start: float = 1e-4        # linear / scaled_linear only
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    prediction: str = "eps"         # eps | x0 | v: the training objective (core/objectives.py)
    weighting: str = "uniform"      # uniform | min_snr
    min_snr_gamma: float = 5.0
    loss_type: str = "l2"           # l2 | l1

    def __post_init__(self):
        for name, allowed in (("schedule", tuple(SCHEDULES)), ("prediction", tuple(OBJECTIVES)),
                              ("weighting", WEIGHTINGS), ("loss_type", LOSS_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"diffusion.{name} = {getattr(self, name)!r} is not one of {allowed}")

    def build_schedule(self) -> Schedule:
        return Schedule.named(self.schedule, self.timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                              zero_terminal_snr=self.zero_terminal_snr)

    def build_objective(self, sched: Schedule | None = None) -> Objective:
        """The training objective over `sched` (default: this section's schedule)."""
        return build_objective(sched if sched is not None else self.build_schedule(), self.prediction,
                               self.weighting, min_snr_gamma=self.min_snr_gamma, loss_type=self.loss_type)


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
    """The [diffusion] objective's loss with t and noise drawn from the step's BatchRandom (so it is
    resumable and the same for any number of processes); `noise_color` / `error_map`: a noise prior
    (core/noise.py)."""
    return cfg.build_objective(sched).loss(net, x0, rand, cond=cond, mask=mask, noise_color=noise_color,
                                           error_map=error_map)
