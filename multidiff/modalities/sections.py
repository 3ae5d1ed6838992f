"""The [diffusion], [sample] and [distill] sections every recipe shares, and the training loss of one batch."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from ..core.denoiser import Denoiser
from ..core.objectives import LOSS_TYPES, PREDICTIONS, T_SAMPLINGS, WEIGHTINGS, Objective, build_objective
from ..core.samplers import ALL_SAMPLERS
from ..core.schedule import SCHEDULES, SPACINGS, EDMSchedule, FlowSchedule, Schedule
from ..utils import added_key

DIFFUSION_OBJECTIVES = ("vp", "flow", "edm")
# the keys that mean something for one objective only (others must stay at their defaults)
OBJECTIVE_KEYS = {"vp": ("schedule", "beta_start", "beta_end", "zero_terminal_snr", "prediction"),
                  "flow": ("t_sampling", "logit_mean", "logit_std"),
                  "edm": ("sigma_data", "p_mean", "p_std"),
                  "flow/edm": ("sigma_min", "sigma_max")}


@dataclass
class DiffusionConfig:
    """The [diffusion] section: the training objective and its noise levels. `objective` picks the
    family (core/objectives.py): vp = discrete-time DDPM over `schedule`, predicting `prediction`;
    flow = flow matching (x_t = (1 - t) x0 + t eps, velocity target); edm = Karras et al.'s
    preconditioned VE. Every network takes its noise input on the scale [0, timesteps - 1]."""
    schedule: str = "linear"        # vp: linear | cosine | scaled_linear | sigmoid
    timesteps: int = 1000           # vp: the T training steps; flow / edm: the network's noise input spans [0, T - 1]
    beta_start: float = 1e-4        # vp, linear / scaled_linear only
    beta_end: float = 0.02
    zero_terminal_snr: bool = False  # vp
    prediction: str = "eps"         # vp: eps | x0 | v
    weighting: str = "uniform"      # uniform | min_snr (min(SNR, gamma) in x0 space, every objective)
    min_snr_gamma: float = 5.0
    loss_type: str = "l2"           # l2 | l1
    objective: str = added_key("vp")        # vp | flow | edm
    t_sampling: str = added_key("uniform")  # flow: uniform | logit_normal (t = sigmoid(logit_mean + logit_std z), SD3)
    logit_mean: float = added_key(0.0)
    logit_std: float = added_key(1.0)
    sigma_data: float = added_key(0.5)      # edm: the data's standard deviation in the preconditioning
    p_mean: float = added_key(-1.2)         # edm: training levels ln sigma ~ N(p_mean, p_std^2)
    p_std: float = added_key(1.2)
    sigma_min: float = added_key(0.002)     # flow / edm: the range of 'karras' sampling levels (edm: and of c_noise)
    sigma_max: float = added_key(80.0)

    def __post_init__(self):
        for name, allowed in (("objective", DIFFUSION_OBJECTIVES), ("schedule", tuple(SCHEDULES)),
                              ("prediction", PREDICTIONS), ("weighting", WEIGHTINGS), ("loss_type", LOSS_TYPES),
                              ("t_sampling", T_SAMPLINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"diffusion.{name} = {getattr(self, name)!r} is not one of {allowed}")
        for name in ("logit_std", "sigma_data", "p_std", "sigma_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"diffusion.{name} = {getattr(self, name)!r} must be > 0")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"diffusion.sigma_max = {self.sigma_max!r} must exceed diffusion.sigma_min = "
                             f"{self.sigma_min!r}")
        defaults = {f.name: f.default for f in fields(self)}
        for owner, keys in OBJECTIVE_KEYS.items():
            if self.objective in owner.split("/"):
                continue
            for key in keys:
                if getattr(self, key) != defaults[key]:
                    raise ValueError(f"diffusion.{key} = {getattr(self, key)!r} applies to objective "
                                     f"{' or '.join(map(repr, owner.split('/')))}, not to diffusion.objective = "
                                     f"{self.objective!r}; remove it (or change the objective)")

    def build_schedule(self) -> Schedule | FlowSchedule | EDMSchedule:
        """The noise levels: a VP Schedule, or the flow / EDM level map."""
        if self.objective == "flow":
            return FlowSchedule(self.timesteps, self.sigma_min, self.sigma_max)
        if self.objective == "edm":
            return EDMSchedule(self.timesteps, self.sigma_min, self.sigma_max)
        return Schedule.named(self.schedule, self.timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                              zero_terminal_snr=self.zero_terminal_snr)

    def build_objective(self, sched=None) -> Objective:
        """The training objective over `sched` (default: this section's schedule)."""
        sched = sched if sched is not None else self.build_schedule()
        common = dict(min_snr_gamma=self.min_snr_gamma, loss_type=self.loss_type)
        if self.objective == "flow":
            return build_objective(sched, "flow", self.weighting, t_sampling=self.t_sampling,
                                   logit_mean=self.logit_mean, logit_std=self.logit_std, **common)
        if self.objective == "edm":
            return build_objective(sched, "edm", self.weighting, sigma_data=self.sigma_data, p_mean=self.p_mean,
                                   p_std=self.p_std, **common)
        return build_objective(sched, self.prediction, self.weighting, **common)

    def build_denoiser(self, model, clip_x0: float | None = None) -> Denoiser:
        """`model(x_in, c_noise, **cond)` as the samplers' view, for any objective."""
        return Denoiser.of(model, self.build_objective(), clip_x0)


class SamplerEta:
    """A config's `eta` field as the core sampler takes it: < 0 (the configs' default) leaves the sampler's own
    (None); shared by [sample] and [vocode]."""
    eta: float

    def eta_or_none(self) -> float | None:
        return self.eta if self.eta >= 0 else None


@dataclass
class SampleConfig(SamplerEta):
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
        if self.sampler not in ALL_SAMPLERS:
            raise ValueError(f"sample.sampler = {self.sampler!r} is not one of {ALL_SAMPLERS}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing = {self.spacing!r} is not one of {SPACINGS}")

    def kwargs(self) -> dict:
        kw = dict(sampler=self.sampler, steps=self.steps, spacing=self.spacing,
                  clip_x0=self.clip_x0 if self.clip_x0 > 0 else None)
        if self.eta_or_none() is not None:
            kw["eta"] = self.eta
        return kw


DISTILL_METHODS = ("progressive", "consistency")
CONSISTENCY_ODES = ("heun", "euler")
PROGRESSIVE_SOLVERS = ("ddim", "dpmpp_2s")
ADVERSARIAL_JUMPS = ("all", "last", "sampled")


@dataclass
class DistillConfig:
    """The [distill] section: few-step students of the run's model (pipelines/distill.py, kinds/distill.py).
    In a recipe, `steps` lists the students `multidiff train` distills after training (empty: none; `multidiff
    distill RUN` makes them from any trained run); in a student's own run it says how the student was made:
    `teacher` is then set, and `steps` holds the step counts it was distilled for."""
    method: str = "progressive"     # progressive (Salimans & Ho 2022) | consistency (Song et al. 2023)
    steps: list[int] = field(default_factory=list)
    guidance: float = -1.0          # classifier-free guidance distilled in (class-conditional); < 0: [sample]'s
    start_steps: int = 64           # progressive: the teacher's DDIM steps the first round's student halves
    round_steps: int = 0            # optimizer steps per progressive round / of consistency; 0: train.steps / 3
    lr: float = 0.0                 # 0: half of train.lr
    warmup_steps: int = 20
    grid: int = 18                  # consistency: Karras levels of the teacher's ODE (N of Song et al.: 18)
    ode: str = "heun"               # consistency: the teacher's step between neighbouring levels: heun | euler
    # progressive: the first round's teacher steps (later rounds' teachers are students: their DDIM jumps):
    # ddim (Salimans & Ho) | dpmpp_2s (DPM-Solver++(2S): second order, twice the teacher calls)
    teacher_solver: str = added_key("ddim")
    # progressive: the students' levels (T - 1) x^p on an even grid x (1: even in t; > 1: shorter jumps near
    # clean data; < 1: at high noise, video_moving_digits' best at 0.5); every round of a chain keeps its first round's
    level_power: float = added_key(1.0)
    # progressive: > 0 adds a GAN term to every round (SDXL-Lightning's progressive adversarial distillation): a
    # trained copy of the teacher's network read to its middle block, with a head, judges the student's landing
    # point against real data; the number is the GAN gradient's share of the distillation loss's at the
    # student's output (adaptive weight)
    adversarial: float = added_key(0.0)
    adversarial_lr: float = added_key(0.0)      # the discriminator head's lr (its network copy's: a tenth); 0: the round's
    # what the GAN term judges: all (every jump's landing point from noised real data) | last (only the batch's
    # samples at its lowest jump, nearly always the last, to clean data) | sampled (the student's own samples: a
    # quarter of the batch generated from noise by the student, its last jump trained through the GAN)
    adversarial_jumps: str = added_key("all")
    # how noisy the judged clips may be: u is drawn between the jump's end and this share of the way to the
    # teacher's midpoint (1: up to the midpoint; 0.5: the half nearer the jump's end; 0: the landing point itself)
    adversarial_noise: float = added_key(1.0)
    target_ema: float = 0.95        # consistency: EMA decay of the target network (mu)
    teacher: str = ""               # a student: the run it was distilled from (its previous round, for progressive)
    teacher_checkpoint: str = ""    # a student: that run's checkpoint and the sha256 of its EMA weights

    def __post_init__(self):
        if self.method not in DISTILL_METHODS:
            raise ValueError(f"distill.method = {self.method!r} is not one of {DISTILL_METHODS}")
        if self.teacher_solver not in PROGRESSIVE_SOLVERS:
            raise ValueError(f"distill.teacher_solver = {self.teacher_solver!r} is not one of {PROGRESSIVE_SOLVERS}")
        if self.ode not in CONSISTENCY_ODES:
            raise ValueError(f"distill.ode = {self.ode!r} is not one of {CONSISTENCY_ODES}")
        bad = [n for n in self.steps if n < 1]
        if bad or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"distill.steps = {self.steps}: give distinct step counts >= 1, e.g. [4, 2, 1]")
        for name in ("start_steps", "grid"):
            if getattr(self, name) < 2:
                raise ValueError(f"distill.{name} must be >= 2, got {getattr(self, name)}")
        for name in ("round_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"distill.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.level_power > 0 and self.level_power < float("inf")):
            raise ValueError(f"distill.level_power must be a number > 0 (1: levels even in t), got {self.level_power}")
        if not (self.adversarial >= 0 and self.adversarial < float("inf")):
            raise ValueError(f"distill.adversarial must be a number >= 0 (0: no GAN term), got {self.adversarial}")
        if not (self.adversarial_lr >= 0 and self.adversarial_lr < float("inf")):
            raise ValueError(f"distill.adversarial_lr must be >= 0 (0: the round's lr), got {self.adversarial_lr}")
        if self.adversarial_jumps not in ADVERSARIAL_JUMPS:
            raise ValueError(f"distill.adversarial_jumps = {self.adversarial_jumps!r} is not one of {ADVERSARIAL_JUMPS}")
        if not 0 <= self.adversarial_noise <= 1:
            raise ValueError(f"distill.adversarial_noise must be in [0, 1] (1: up to the teacher's midpoint), got "
                             f"{self.adversarial_noise}")
        if self.adversarial > 0 and self.method != "progressive":
            raise ValueError(f"distill.adversarial = {self.adversarial} applies to progressive distillation's rounds; "
                             f"drop it for --method {self.method}")
        if not (self.lr >= 0 and self.lr < float("inf")):
            raise ValueError(f"distill.lr must be >= 0 (0: half of train.lr), got {self.lr}")
        if not 0 <= self.target_ema < 1:
            raise ValueError(f"distill.target_ema must be in [0, 1), got {self.target_ema}")
        if self.guidance != self.guidance or self.guidance == float("inf"):
            raise ValueError(f"distill.guidance must be a finite number, got {self.guidance}")


def batch_loss(net, cfg: DiffusionConfig, sched: Schedule, x0: torch.Tensor, rand, cond: dict | None = None,
               mask: torch.Tensor | None = None, noise_color=None, error_map=None) -> torch.Tensor:
    """The [diffusion] objective's loss with t and noise drawn from the step's BatchRandom (so it is
    resumable and the same for any number of processes); `noise_color` / `error_map`: a noise prior
    (core/noise.py)."""
    return cfg.build_objective(sched).loss(net, x0, rand, cond=cond, mask=mask, noise_color=noise_color,
                                           error_map=error_map)
