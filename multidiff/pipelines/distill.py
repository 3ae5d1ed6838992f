"""Distillation of a trained model into a few-step student: the trainer's tasks and the training of one student.

Both tasks wrap the modality's own task: its `prepare_batch` gives the micro-batch exactly as the
teacher was trained on it (crops, latents, labels, mels, known frames, the noise prior's coloring and
whitening), from the step's random draws; so a distillation resumes exactly and runs under DDP like
every training. The teacher is frozen (EMA weights, eval mode) and seen through the view samplers see
(its objective's clean estimate), classifier-free guided at the student's [distill] guidance: the
student learns the guided model and samples unguided (Meng et al. 2023's first stage).

ProgressiveTask   Salimans & Ho 2022: one student DDIM step on progressive_timesteps(N) matches two
                  teacher DDIM steps; x0-space target, truncated-SNR weight (core/distillation.py).
ConsistencyTask   Song et al. 2023's consistency distillation, with iCT's pseudo-Huber metric: f(x_{n+1},
                  sigma_{n+1}) against the target network's f at the teacher's ODE step down to sigma_n.
                  The target network is an EMA (distill.target_ema) of the student, updated after every
                  optimizer step and saved with each checkpoint.

Why consistency *distillation* and not improved consistency training (iCT, Song & Dhariwal 2023): we start
from a trained teacher, whose ODE step gives a low-variance target at every level, so a student converges
in a few thousand steps on a CPU; iCT learns from data alone and needs a curriculum over hundreds of
thousands of steps to reach comparable quality. Of iCT we keep what helps distillation too: the
pseudo-Huber metric (no LPIPS network, which exists for images only).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

import torch

from ..core import Denoiser, GuidedModel
from ..core.distillation import (ConsistencyObjective, consistency_grid, consistency_range, ddim_move, dpmpp_2s_move,
                                 grid_alpha_bar, grid_timesteps, noised, ode_step, progressive_target, pseudo_huber,
                                 renoise, truncated_snr_weight)
from ..core.objective_base import Estimate, bcast
from ..engine.adversarial import AdversarialTerm
from ..engine.checkpoint import load_weights_into
from ..engine.precision import resolve_precision
from ..engine.trainer import Trainer
from ..errors import UserError
from ..modalities.base import Trained
from ..modalities.student import NOT_SAMPLING, StudentModality, default_steps, for_student, is_student, student_sampler
from ..nn.conditioning import null_condition
from ..nn.discriminator import FeatureDiscriminator, middle_block
from .generate import previewer


def teacher_identity(checkpoint: Path) -> str:
    """A checkpoint's name and the sha256 (first 16 hex digits) of its EMA weights: what a student is made of."""
    h = hashlib.sha256()
    with open(Path(checkpoint) / "ema.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{Path(checkpoint).name}:{h.hexdigest()[:16]}"


def resolve_guidance(base: dict, guidance: float, num_classes: int) -> float:
    """The guidance scale a student distils in: distill.guidance, else (< 0) the one its teacher samples with."""
    if is_student(base):
        return base["distill"].guidance  # already in the teacher's weights
    if guidance < 0:
        return float(base["sample"].guidance_scale) if num_classes and "sample" in base else 1.0
    if guidance != 1.0 and not num_classes:
        raise ValueError(f"distill.guidance = {guidance} needs a class-conditional teacher ([model] num_classes > 0); "
                         "leave it out")
    return float(guidance)


def student_sections(base: dict, cfg, steps: list[int], teacher_dir, identity: str, num_classes: int) -> dict:
    """A student's config: its teacher's (`base`) with [distill] saying how it is made (`cfg` resolved: guidance,
    the optimizer steps and lr of its training), [train] those, [model] without class dropout (the task drops
    labels itself where the student keeps an unconditional branch), and every sampling section (sample, eval,
    vocode, inpaint, predict) on the student's sampler and steps."""
    train = base["train"]
    if is_student(base):  # a student distilled further: its own round length and lr, not a third of them
        rounds, lr = cfg.round_steps or base["distill"].round_steps, cfg.lr or base["distill"].lr
    else:
        rounds, lr = cfg.round_steps or max(1, train.steps // 3), cfg.lr or train.lr / 2
    d = dataclasses.replace(cfg, steps=list(steps), guidance=resolve_guidance(base, cfg.guidance, num_classes),
                            round_steps=rounds, lr=lr, teacher=str(teacher_dir), teacher_checkpoint=identity)
    sampler, default = student_sampler(d.method), default_steps(d)
    out = {}
    for name, sec in base.items():
        if name == "distill":
            out[name] = d
        elif name == "recipe":
            what = f"{'/'.join(map(str, steps))}-step {d.method} student of {teacher_dir}"
            out[name] = dataclasses.replace(sec, description=what)
        elif name == "train":
            out[name] = dataclasses.replace(sec, steps=rounds, lr=lr, warmup_steps=min(d.warmup_steps, rounds - 1),
                                            sample_every=0)
        elif name == "model" and num_classes and hasattr(sec, "class_dropout"):
            out[name] = dataclasses.replace(sec, class_dropout=0.0)
        elif name in NOT_SAMPLING or not dataclasses.is_dataclass(sec):
            out[name] = sec
        else:
            out[name] = for_student(sec, sampler, d.steps, default)
    return out


def _rows(cond: dict, keep: torch.Tensor, n: int) -> dict:
    """The model inputs `cond` of the batch's rows `keep` (values with other shapes, e.g. None, kept whole)."""
    return {k: v[keep.to(v.device)] if isinstance(v, torch.Tensor) and v.ndim and len(v) == n else v
            for k, v in cond.items()}


def _cat_rows(cond: dict, extra: dict, n: int, g: int) -> dict:
    """The model inputs of a batch of n rows followed by g more (`extra`, the same keys; whole values kept)."""
    return {k: torch.cat([v, extra[k]]) if isinstance(v, torch.Tensor) and v.ndim and len(v) == n
            and len(extra[k]) == g else v for k, v in cond.items()}


def _per_sample(err: torch.Tensor, mask) -> torch.Tensor:
    if mask is None:
        return err.flatten(1).mean(1)
    m = torch.broadcast_to(mask.to(err.dtype), err.shape)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)


class DistillTask:
    """What both distillations share: the modality's prepared batch, the noise of its prior, and the teacher
    guided at `guidance` (or, when nothing is distilled in, labels dropped alike for teacher and student with
    probability `label_dropout`, so the student keeps an unconditional branch for guidance)."""

    def __init__(self, inner, teacher: Denoiser, objective, guidance: float, num_classes: int, label_dropout: float):
        self.inner, self.teacher, self.objective = inner, teacher, objective
        self.guidance, self.K, self.label_dropout = float(guidance), int(num_classes), float(label_dropout)
        self.channels_last = inner.channels_last
        if getattr(inner, "collate", None) is not None:
            self.collate = inner.collate

    def preview(self, model, path: Path) -> None:
        self.inner.preview(model, path)

    def draws(self, batch, rand, draw_level):
        """(prepared batch, the level draw, noise, both models' cond, the teacher's view), in one order of draws."""
        p = self.inner.prepare_batch(batch, rand)
        level = draw_level()
        noise = self.noise(rand, p)
        cond, teacher = dict(p.cond), self.teacher
        if self.K and self.guidance != 1.0:
            teacher = teacher.with_model(GuidedModel(teacher.model, self.guidance, null_condition(cond, self.K)))
        elif self.K and self.label_dropout > 0 and cond.get("y") is not None:
            y = torch.as_tensor(cond["y"])
            drop = rand.rand().to(y.device) < self.label_dropout
            cond["y"] = torch.where(drop, torch.full_like(y, self.K), y)
        return p, level, noise, cond, teacher

    def noise(self, rand, p):
        """Standard noise of the batch's shape, colored as the modality's prior colors the training noise."""
        n = self.objective.draw_noise(rand, p.x0)
        return p.loss_kw["noise_color"](n) if p.loss_kw.get("noise_color") is not None else n

    def error(self, p, err: torch.Tensor) -> torch.Tensor:
        err = err.float()
        return p.loss_kw["error_map"](err) if p.loss_kw.get("error_map") is not None else err


class ProgressiveTask(DistillTask):
    """A student of `steps` steps whose one DDIM step matches two of its teacher's (the teacher samples on the
    2 * steps grid: the student's levels and their midpoints), each a DDIM step or (solver "dpmpp_2s") a
    DPM-Solver++(2S) step (two teacher calls). With `gan` (an AdversarialTerm whose discriminator is a
    FeatureDiscriminator made from the teacher's network), the student's landing point is also judged against
    real data (`adversarial_loss`): at every jump, or (`gan_jumps` "last") at the batch's lowest one only, or
    (`gan_jumps` "sampled") the student's own samples: a quarter of the batch's clips generated from noise by
    the student itself, without gradient down to its last jump, which it then takes with the batch (DMD2's
    backward simulation: the last jump judged on the inputs it gets when sampling). The judged level u lies
    between the jump's end and the share `gan_noise` of the way to the teacher's midpoint."""

    def __init__(self, inner, teacher, objective, steps: int, guidance, num_classes, label_dropout,
                 solver: str = "ddim", power: float = 1.0, gan: AdversarialTerm | None = None,
                 gan_jumps: str = "all", gan_noise: float = 1.0):
        super().__init__(inner, teacher, objective, guidance, num_classes, label_dropout)
        sched = objective.schedule
        self.steps, self.solver = int(steps), solver
        self.abar = grid_alpha_bar(sched, 2 * self.steps, power)                # [2N + 1], j = 0: clean
        self.ts = grid_timesteps(sched, 2 * self.steps, power)
        self.gan, self.gan_jumps, self.gan_noise = gan, gan_jumps, gan_noise

    def loss(self, net, batch, rand):
        p, k, noise, cond, teacher = self.draws(batch, rand, lambda: rand.randint(self.steps).cpu() + 1)
        x0 = p.x0
        j = 2 * k                                           # the student steps from grid level j to j - 2
        ab_t, ab_m, ab_s = self.abar[j], self.abar[j - 1], self.abar[j - 2]
        z_t = noised(x0, ab_t, noise)
        with torch.no_grad():
            z_m = self.move(teacher, z_t, (self.ts[j], ab_t), ab_m, cond)
            z_s = self.move(teacher, z_m, (self.ts[j - 1], ab_m), ab_s, cond)
            target = progressive_target(z_t.double(), z_s.double(), ab_t, ab_s)
        student = Denoiser.of(net, self.objective)
        own = self.own_last_jump_start(student, p, cond, rand) if self.gan_jumps == "sampled" and self.gan else None
        if own is None:
            est = student.vp(z_t, self.ts[j], ab_t, **cond)
        else:  # the student's own last jumps ride in the batch's forward: one call, one output for the GAN weight
            z_own, cond_own = own
            n, g = len(x0), len(z_own)
            both = student.vp(torch.cat([z_t, z_own]), torch.cat([self.ts[j], self.ts[2].expand(g)]),
                              torch.cat([ab_t, self.abar[2].expand(g)]), **_cat_rows(cond, cond_own, n, g))
            est = Estimate(both.x0[:n], both.eps[:n])
        per = _per_sample(self.error(p, est.x0 - target.to(est.x0.dtype)).square(), p.loss_kw.get("mask"))
        loss = (per * truncated_snr_weight(ab_t).to(per.device, per.dtype)).mean()
        if self.gan is None:
            return loss
        self.gan.record(distill_loss=loss.detach())  # the logged `loss` is the total, GAN term included
        if own is not None:
            return loss + self.sampled_adversarial_loss(p, both, cond_own, rand, loss)
        return loss + self.adversarial_loss(p, est, z_t, j, cond, rand, loss)

    def own_last_jump_start(self, student, p, cond, rand):
        """(z, cond) of the first quarter of the batch's clips (at least one) at the student's last jump's start
        (grid level 2), reached by the student's own jumps from pure noise, without gradient; their labels
        and known frames are those clips'. The noise is drawn for the whole batch (one draw order for all)."""
        g = max(1, len(p.x0) // 4)
        z, cond_own = self.noise(rand, p)[:g], _rows(cond, torch.arange(g), len(p.x0))
        with torch.no_grad():
            for j in range(2 * self.steps, 2, -2):
                est = student.vp(z, self.ts[j].expand(g), self.abar[j].expand(g), **cond_own)
                z = ddim_move(est, self.abar[j - 2].expand(g), z).to(p.x0.dtype)
        return z, cond_own

    def sampled_adversarial_loss(self, p, both, cond_own, rand, rec):
        """The GAN term of the student's own samples: the clean ends of its last jumps (the rows after the
        batch's in `both`), noised to a level u drawn between clean data and the teacher's midpoint of that
        jump, against the batch's first clips noised to the same u."""
        n = len(p.x0)
        fake_0 = both.x0[n:]
        g = len(fake_0)
        u = self.gan_noise * self.ts[1] * rand.rand().cpu().double()[:g]
        ab_u = self.objective.schedule.alpha_bar_at(u)
        fake = noised(fake_0, ab_u, self.noise(rand, p)[:g])
        real = noised(p.x0[:g], ab_u, self.noise(rand, p)[:g])
        return self.gan.generator_loss((fake, u, ab_u, cond_own), (real, u, ab_u, cond_own), rec=rec, last=both.x0)

    def adversarial_loss(self, p, est, z_t, j, cond, rand, rec):
        """The GAN term of the student's jump from grid level j to j - 2 (SDXL-Lightning's progressive adversarial
        distillation): its landing point, noised further to a level u drawn between the jump's end and the
        teacher's midpoint, against real data noised to u. At the last jump (to clean data) u starts at 0, so the
        discriminator sees detail; the noise added on the way up keeps real and fake overlapping (instance
        noise). It compares distributions, not pairs, so the student may end up closer to the data than its
        teacher's trajectory, which the distillation loss keeps it near."""
        x0, ab_s = p.x0, self.abar[j - 2]
        fake_s = ddim_move(est, ab_s, z_t)                                      # the student's landing point
        u = self.ts[j - 2] + self.gan_noise * (self.ts[j - 1] - self.ts[j - 2]) * rand.rand().cpu().double()
        ab_u = self.objective.schedule.alpha_bar_at(u)
        fake = renoise(fake_s, ab_s, ab_u, self.noise(rand, p))
        real = noised(x0, ab_u, self.noise(rand, p))
        if self.gan_jumps == "last":  # (after every draw: the random stream stays that of "all")
            keep = (j == j.min()).nonzero().flatten()
            fake, real, u, ab_u = fake[keep.to(fake.device)], real[keep.to(real.device)], u[keep], ab_u[keep]
            cond = _rows(cond, keep, len(x0))
        return self.gan.generator_loss((fake, u, ab_u, cond), (real, u, ab_u, cond), rec=rec, last=est.x0)

    def after_step(self, step: int) -> None:
        if self.gan is not None:
            self.gan.after_step()

    def log_values(self) -> dict:
        return self.gan.log_values() if self.gan is not None else {}

    def extra_state(self) -> dict:
        return self.gan.extra_state() if self.gan is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.gan is not None:
            self.gan.load_extra_state(state)

    def move(self, teacher, z, start, abar_to, cond):
        """The teacher's step from level start = (t, abar) to the level abar_to, both per sample (the solvers
        need only the end's abar: a 2S midpoint's network input comes from its sigma)."""
        est = teacher.vp(z, start[0], start[1], **cond)
        if self.solver == "ddim":
            return ddim_move(est, abar_to, z)

        def clean_at(u, ab):  # the teacher's clean estimate at any level: its VE view finds the network's input
            a = bcast(ab.sqrt(), u)
            return teacher(u / a, ((1 - ab) / ab).sqrt(), **cond)
        return dpmpp_2s_move(est, clean_at, z, start[1], abar_to)


class ConsistencyTask(DistillTask):
    """Consistency distillation on a Karras grid of `grid` levels: the student's f at a level against the target
    network's f one teacher ODE step (heun | euler) below. `student` is the model being trained (the trainer
    passes its DDP wrapper to loss(); the target follows the model itself)."""

    def __init__(self, inner, teacher, objective: ConsistencyObjective, student: torch.nn.Module, grid: int,
                 ode: str, target_ema: float, guidance, num_classes, label_dropout):
        super().__init__(inner, teacher, objective, guidance, num_classes, label_dropout)
        self.sigmas = consistency_grid(objective.schedule, grid)            # ascending, sigmas[0] = sigma_min
        self.ode, self.mu, self.student = ode, float(target_ema), student
        self.target = copy.deepcopy(student).eval().requires_grad_(False)

    def loss(self, net, batch, rand):
        p, n, noise, cond, teacher = self.draws(batch, rand, lambda: rand.randint(len(self.sigmas) - 1).cpu())
        x0 = p.x0
        lo, hi = self.sigmas[n], self.sigmas[n + 1]
        x_hi = x0 + bcast(hi, x0) * noise
        with torch.no_grad():
            x_lo = ode_step(teacher, x_hi, hi, lo, self.ode, cond)
            target = Denoiser.of(self.target, self.objective)(x_lo, lo, **cond)
        pred = Denoiser.of(net, self.objective)(x_hi, hi, **cond)
        err = self.error(p, pred - target.to(pred.dtype))
        if p.loss_kw.get("mask") is not None:
            err = err * torch.broadcast_to(p.loss_kw["mask"].to(err.dtype), err.shape)
        return pseudo_huber(err).mean()

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        for t, s in zip(self.target.parameters(), self.student.parameters()):
            t.lerp_(s.detach().to(t.dtype), 1 - self.mu)
        for t, s in zip(self.target.buffers(), self.student.buffers()):
            t.copy_(s)

    def extra_state(self) -> dict:
        return {f"target.{k}": v for k, v in self.target.state_dict().items()}

    def load_extra_state(self, state: dict) -> None:
        self.target.load_state_dict({k[len("target."):]: v for k, v in state.items() if k.startswith("target.")})


def feature_adversary(network: torch.nn.Module, objective, num_classes: int, lr: float, weight: float, device,
                      bf16: bool) -> AdversarialTerm:
    """distill.adversarial's GAN term: a FeatureDiscriminator made from `network` (the round's teacher's; a copy
    is trained at a tenth of the head's `lr`, read up to its middle block), hinge loss, adaptive weight; refused
    for a network without a middle block."""
    if middle_block(network) is None:
        raise UserError(f"distill.adversarial needs a teacher whose network has a middle block for the discriminator "
                        f"to read (the image and video U-Nets do); {type(network).__name__} has none: drop "
                        "distill.adversarial")
    return AdversarialTerm(FeatureDiscriminator(network, objective, num_classes).to(device), lr, weight, device, bf16)


def train_student(run, modality, teacher: Trained, data_run, dist, resume: bool, label_dropout: float = 0.0,
                  options: dict | None = None) -> dict:
    """Train the student `run` (its config from student_sections) from `teacher` on the training split of
    `data_run` (the original teacher's run: its data, caches, latents) in the shared Trainer. `modality` is the
    kind's modality for the student's config (not wrapped); `options` go to its task (e.g. mask kinds)."""
    s, d = run.sections, run["distill"]
    bf16 = resolve_precision(s["train"].precision, dist.device)
    dataset = modality.dataset(data_run, "train")
    torch.manual_seed(s["train"].seed)
    student = modality.build_model(s)
    load_weights_into(student, teacher.model.state_dict(), teacher.checkpoint / "ema.safetensors")
    student = student.to(dist.device)
    if modality.channels_last:
        student = student.to(memory_format=torch.channels_last)
    wrapped = StudentModality(modality, s)
    preview = (previewer(wrapped, s, dist.device, bf16, modality.preview_count)
               if modality.preview_count and "sample" in s else None)
    inner = modality.task(s, dist.device, bf16, preview=preview, model=student, **(options or {}))
    if not hasattr(inner, "prepare_batch"):
        raise UserError(f"a {modality.name} model cannot be distilled: its training task has no prepare_batch(batch, "
                        "rand) giving the batch its loss trains on (docs/extending.md)")
    teacher.model.requires_grad_(False)
    teacher_den = teacher.denoiser(dist.device, bf16)
    K = modality.num_classes(s)
    guidance = 1.0 if is_student(teacher.sections) else d.guidance  # a student teacher has it in its weights
    drop = label_dropout if K and guidance == 1.0 else 0.0
    objective = s["diffusion"].build_objective()
    if d.method == "progressive":
        # a student teacher learned DDIM jumps: its own steps are its DDIM; only the original teacher has an ODE
        solver = "ddim" if is_student(teacher.sections) else d.teacher_solver
        gan = feature_adversary(teacher.model, objective, K, d.adversarial_lr or s["train"].lr, d.adversarial,
                                dist.device, bf16) if d.adversarial > 0 else None
        task = ProgressiveTask(inner, teacher_den, objective, d.steps[0], guidance, K, drop, solver, d.level_power,
                               gan, d.adversarial_jumps, d.adversarial_noise)
    else:
        sigma_min = consistency_range(objective.schedule)[0]
        task = ConsistencyTask(inner, teacher_den, ConsistencyObjective(objective, sigma_min), student, d.grid, d.ode,
                               d.target_ema, guidance, K, drop)
    trainer = Trainer(student, dataset, task, s["train"], run.dir, dist=dist,
                      fingerprint=wrapped.fingerprint(s, **(options or {})))
    ckpt = trainer.fit(resume=resume)
    return {"checkpoint": str(ckpt), "teacher": d.teacher, "teacher_checkpoint": d.teacher_checkpoint,
            "precision": "bf16" if trainer.bf16 else "fp32"}
