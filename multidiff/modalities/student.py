"""A distilled few-step student as a modality: its teacher's in every way but how it samples.

A student (pipelines/distill.py, kinds/distill.py) is an ordinary run of its teacher's kind whose
[distill] section names its teacher. kinds.ModelRef wraps the modality of every such run in
`StudentModality`, so `multidiff sample / inpaint / vocode`, the sample stage and the evaluations
sample it on the levels it was distilled for, with the update it learned:

  progressive   deterministic DDIM on progressive_timesteps(N) (euler is the same update), and only the
                N it was distilled for: a 2-step student has learned two particular jumps, and 4 steps
                of it are not a finer version of them (asked for another N, it refuses, naming its N).
                DDIM's eta > 0 (--eta, [sample] / [vocode] eta) keeps the jumps' clean estimates and
                draws part of the noise between them afresh: it learned eta 0, but fresh noise undoes
                some of a jump's error instead of carrying it into the next (measured: docs/distillation.md)
  consistency   multistep consistency sampling on consistency_levels(n) for any n >= 1 (its view is the
                consistency function, core/distillation.py); [distill] steps are the n it was evaluated with

Everything else (data, outputs, noise prior, mel conditioning, completion inputs) is the teacher's modality's.
"""
from __future__ import annotations

import dataclasses

from ..core import Denoiser
from ..core.distillation import (SIGMA_DATA, ConsistencyObjective, consistency_levels, consistency_range,
                                 progressive_timesteps)
from ..engine.runs import section_hash
from ..errors import UserError
from .sections import DistillConfig

# the samplers a student takes (the first: its own, the one its config names)
STUDENT_SAMPLERS = {"progressive": ("ddim", "euler"), "consistency": ("consistency",)}
# the [distill] keys that change what a student learns (its fingerprint; the teacher's path is not one: runs move;
# keys added later join them only when not their defaults, so older students keep their fingerprints)
IDENTITY_KEYS = ("method", "steps", "guidance", "start_steps", "grid", "ode", "target_ema", "teacher_checkpoint")
ADDED_IDENTITY_KEYS = {k: DistillConfig.__dataclass_fields__[k].default
                       for k in ("teacher_solver", "level_power", "adversarial", "adversarial_lr", "adversarial_jumps",
                                 "adversarial_noise")}
# sections that say what the weights are, or how they were trained, rather than how the model samples
NOT_SAMPLING = {"recipe", "data", "model", "diffusion", "train", "distill", "prep", "video", "latent", "loss"}


def is_student(sections: dict) -> bool:
    d = sections.get("distill")
    return d is not None and bool(d.teacher)


def student_identity(sections: dict) -> str:
    """What a student's weights are besides its model, data and diffusion: how, and from which teacher checkpoint,
    it was distilled ("" for a run that is not a student)."""
    if not is_student(sections):
        return ""
    d = sections["distill"]
    keys = [*IDENTITY_KEYS, *(k for k, default in ADDED_IDENTITY_KEYS.items() if getattr(d, k) != default)]
    return "student:" + section_hash(sections, [f"distill.{k}" for k in keys])


def student_sampler(method: str) -> str:
    return STUDENT_SAMPLERS[method][0]


def default_steps(d) -> int:
    """The steps a student samples with when none are asked for: its one N (progressive), its most (consistency)."""
    return max(d.steps)


def for_student(obj, sampler: str, steps: list[int], default: int):
    """A sampling section (a dataclass: [sample], [vocode], [eval], [inpaint], [predict]) with every sampler and
    step setting the student's: `sampler` / `*_sampler`; `steps` / `*_steps` (a number: `default`, a list: all of
    `steps`); an eval `table` of 'sampler:steps' rows (its `full` table off); eta at the sampler's default (a
    method's own `*_eta`: 0, the deterministic jumps the student learned); and
    guidance 1, since a student's guidance is in its weights."""
    changes = {}
    for f in dataclasses.fields(obj):
        n, v = f.name, getattr(obj, f.name)
        if (n == "sampler" or n.endswith("_sampler")) and isinstance(v, str):
            changes[n] = sampler
        elif (n == "steps" or n.endswith("_steps")) and isinstance(v, int) and not isinstance(v, bool):
            changes[n] = default
        elif n == "steps" and isinstance(v, list):
            changes[n] = list(steps)
        elif n == "table" and isinstance(v, list):
            changes[n] = [f"{sampler}:{k}" for k in steps]
        elif n == "full" and isinstance(v, bool):
            changes[n] = False
        elif n == "eta" and isinstance(v, float):
            changes[n] = -1.0
        elif n.endswith("_eta") and isinstance(v, float):  # a method's own eta (DDNM's 0.85): a student learned eta 0
            changes[n] = 0.0
        elif n in ("guidance_scale", "guidance") and isinstance(v, float):
            changes[n] = 1.0
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError:  # a setting the section refuses for this sampler (e.g. DDNM's time travel): that one stays
        for n, v in changes.items():
            try:
                obj = dataclasses.replace(obj, **{n: v})
            except ValueError:
                pass
        return obj


def student_completion(cfg, sections: dict):
    """A kind's completion settings (CompletionSampling) for a run: a student's sampler and steps where it is one."""
    if not is_student(sections):
        return cfg
    d = sections["distill"]
    return for_student(cfg, student_sampler(d.method), d.steps, default_steps(d))


class StudentModality:
    """The modality of a distilled student: `inner`'s (every protocol method and attribute is forwarded to it),
    except its sampling levels and update, its default sampling settings, its denoiser view and its fingerprint."""

    def __init__(self, inner, sections: dict):
        self.inner, self.distill = inner, sections["distill"]

    def __getattr__(self, name):
        if name == "inner":  # (not set yet: a copy being made)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def sampling(self, sections: dict, sampler: str, steps: int, spacing=None, eta=None) -> dict:
        d, sched = self.distill, sections["diffusion"].build_schedule()
        own = STUDENT_SAMPLERS[d.method]
        if sampler not in own:
            raise UserError(f"this {d.method} student samples with {' or '.join(own)} (what it was distilled for), "
                            f"not {sampler}: drop --sampler, or name {own[0]}")
        if d.method == "consistency":
            if eta:
                raise UserError("a consistency student already draws fresh noise at each of its levels: drop --eta")
            return {"sampler": sampler, "sigmas": consistency_levels(sched, steps)}
        if steps not in d.steps:
            raise UserError(f"this progressive student was distilled for {d.steps[0]} sampling steps and cannot take "
                            f"{steps}: use --steps {d.steps[0]} (or distill a {steps}-step student: multidiff distill "
                            f"TEACHER --steps {steps})")
        kw = {"sampler": sampler, "timesteps": progressive_timesteps(sched, steps, d.level_power)}
        if eta is not None:  # its jumps' clean estimates, with fresh noise of DDIM's eta between them
            kw["eta"] = eta
        return kw

    def sample_settings(self, sections: dict):
        d = self.distill
        return dataclasses.replace(self.inner.sample_settings(sections), sampler=student_sampler(d.method),
                                   steps=default_steps(d), eta=-1.0)

    def completion_steps(self, sections: dict, known) -> int:
        return default_steps(self.distill)

    def build_denoiser(self, sections: dict, model) -> Denoiser:
        if self.distill.method != "consistency":
            return self.inner.build_denoiser(sections, model)
        sched_min = consistency_range(sections["diffusion"].build_schedule())[0]
        objective = ConsistencyObjective(sections["diffusion"].build_objective(), sched_min, SIGMA_DATA)
        return Denoiser.of(model, objective)

    def fingerprint(self, sections: dict, **options) -> str:
        return f"{self.inner.fingerprint(sections, **options)}+{student_identity(sections)}"
