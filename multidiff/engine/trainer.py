"""One Trainer for every denoiser, dataset and loss (image, audio, video).

Determinism is by construction, not by saved generator state: the data order of epoch e is
a permutation seeded by (seed, e) (streamed, data_order.py) and every random draw of step s
comes from a generator seeded by (seed, s). So a run killed at any moment and resumed from its
last checkpoint replays exactly what the uninterrupted run would have done, and N processes
(each taking its slice of the same global batch and of the same random draws) match one process.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..utils import write_text
from .checkpoint import latest_checkpoint, load_checkpoint, read_extra, read_state, save_checkpoint
from .data_order import DataOrder, StepBatches, seed_of
from .distributed import DistInfo, barrier, to_device
from .ema import EMA
from .plots import plot_loss_curve
from .precision import autocast, resolve_precision


@dataclass
class TrainConfig:
    """The [train] section of a recipe."""
    steps: int = 2000
    batch_size: int = 64            # global batch per optimizer step (split across processes and accumulation)
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    lr_schedule: str = "cosine"     # cosine | constant (after the linear warm-up)
    min_lr_ratio: float = 0.1       # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0          # max global grad norm; 0 = off
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: str = "auto"         # auto (bf16 where the hardware is fast at it) | bf16 | fp32
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    sample_every: int = 0           # EMA sample grids every N steps (0 = only at the end)
    num_workers: int = 0            # DataLoader worker processes
    threads: int = 0                # torch CPU threads per process (0 = cores / local processes)

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "keep_checkpoints", "num_workers", "threads", "grad_clip",
                     "weight_decay"):  # 0 means off / all / automatic
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


class Task(Protocol):
    """What a modality supplies: the loss of a micro-batch and a preview of samples. A task may set
    `collate` (list of dataset items -> batch) when the default stacking does not fit, e.g.
    variable-length audio that the loss crops with the step's random draws."""

    channels_last: bool

    def loss(self, model, batch, rand: "BatchRandom") -> torch.Tensor: ...

    def preview(self, model, path: Path) -> None: ...

    # Optional, for tasks that train more than the model (e.g. an autoencoder's discriminator):
    #   after_step(step)        called on every process after the model's optimizer step
    #   extra_state() -> dict   tensors saved in each checkpoint (extra.safetensors) ...
    #   load_extra_state(dict)  ... and handed back on resume
    #   log_values() -> dict    extra numbers for metrics.jsonl, averaged since the last call


class TrainingDiverged(RuntimeError):
    pass


class BatchRandom:
    """The random draws of one micro-batch: made for the step's whole global batch, then sliced to
    this micro-batch and process, so the result depends neither on the number of processes nor on
    gradient accumulation. Draws are made on the CPU (the same numbers on every device), then moved."""

    def __init__(self, seed: int, step: int, global_n: int, part: slice, device):
        self.generator = torch.Generator().manual_seed(seed_of(seed, step))
        self.step = step  # for losses that switch on after a warm-up (e.g. an autoencoder's GAN term)
        self.global_n, self.part, self.device = global_n, part, device

    def _take(self, t: torch.Tensor) -> torch.Tensor:
        return to_device(t[self.part], self.device)

    def randn(self, *shape) -> torch.Tensor:
        return self._take(torch.randn(self.global_n, *shape, generator=self.generator))

    def rand(self, *shape) -> torch.Tensor:
        return self._take(torch.rand(self.global_n, *shape, generator=self.generator))

    def randint(self, high: int, *shape) -> torch.Tensor:
        return self._take(torch.randint(0, high, (self.global_n, *shape), generator=self.generator))


def lr_at(cfg: TrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.lr_schedule == "constant" or step < cfg.warmup_steps:
        return cfg.lr * warm
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(self, model: torch.nn.Module, dataset, task: Task, cfg: TrainConfig, run_dir,
                 dist: DistInfo | None = None, fingerprint: str = ""):
        self.cfg, self.task, self.dataset = cfg, task, dataset
        self.dist = dist or DistInfo()
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.fingerprint = fingerprint
        per_step = cfg.batch_size
        if per_step % (self.dist.world_size * cfg.grad_accum):
            raise ValueError(f"train.batch_size={per_step} must divide evenly over {self.dist.world_size} "
                             f"process(es) x train.grad_accum={cfg.grad_accum}")
        if len(dataset) < per_step:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than train.batch_size={per_step}")
        self.order = DataOrder(len(dataset), per_step, cfg.grad_accum, self.dist.world_size, self.dist.rank,
                               cfg.seed, seeded_items=getattr(dataset, "seeded_items", False))

        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // self.dist.local_world_size))
        self.bf16 = resolve_precision(cfg.precision, self.dist.device)
        self.model = model.to(self.dist.device)
        if task.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           weight_decay=cfg.weight_decay)
        self.net = DistributedDataParallel(self.model) if self.dist.enabled else self.model

    # ---- data order (data_order.py) ------------------------------------------------------
    def _indices(self, step: int, micro: int) -> list:
        """This process's dataset indices (or (index, seed) pairs) for (step, micro-batch)."""
        return self.order.indices(step, micro)

    def _batch_sampler(self, start_step: int) -> StepBatches:
        return StepBatches(self.order, start_step, self.cfg.steps, self.cfg.grad_accum)

    def _loader(self, start_step: int):
        cfg = self.cfg
        # on CUDA, pinned batches let the tasks' to_device copies run asynchronously
        return iter(torch.utils.data.DataLoader(self.dataset, batch_sampler=self._batch_sampler(start_step),
                                                num_workers=cfg.num_workers,
                                                collate_fn=getattr(self.task, "collate", None),
                                                pin_memory=self.dist.device.type == "cuda",
                                                persistent_workers=cfg.num_workers > 0))

    # ---- the loop --------------------------------------------------------------------
    def fit(self, resume: bool = False) -> Path:
        cfg, main = self.cfg, self.dist.is_main
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = self._restore(resume)
        if start >= cfg.steps:
            return latest_checkpoint(self.ckpt_root)
        batches = self._loader(start)
        bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not main, dynamic_ncols=True)
        t_log, window = time.perf_counter(), []
        self.model.train()
        for step in range(start, cfg.steps):
            lr = lr_at(cfg, step)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(seed_of(cfg.seed, step, 1 + self.dist.rank))  # dropout & co. inside the model
            total = 0.0
            for m in range(cfg.grad_accum):
                batch = next(batches)
                rand = BatchRandom(cfg.seed, step, cfg.batch_size, self.order.part(m), self.dist.device)
                sync = m == cfg.grad_accum - 1 or not self.dist.enabled
                with (self.net.no_sync() if not sync else nullcontext()), autocast(self.dist.device, self.bf16):
                    loss = self.task.loss(self.net, batch, rand)
                (loss / cfg.grad_accum).backward()
                total += float(loss.detach()) / cfg.grad_accum
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            # checked after the all-reduce, so every process sees a bad step and stops together
            if not math.isfinite(total):
                self._diverged(step, total)
            if not torch.isfinite(gnorm):
                self._diverged(step, float(gnorm), what="gradient norm")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if hasattr(self.task, "after_step"):
                self.task.after_step(step)
            done = step + 1
            if main:
                self.ema.update(self.model, step)
            window.append(total)
            bar.update(1)
            if main and (done % cfg.log_every == 0 or done == cfg.steps):
                now = time.perf_counter()
                rec = {"step": done, "loss": sum(window) / len(window), "lr": lr, "grad_norm": float(gnorm),
                       "it_s": len(window) / (now - t_log), "time": time.time()}
                if hasattr(self.task, "log_values"):
                    rec.update(self.task.log_values())
                self._log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}")
                t_log, window = now, []
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                self._checkpoint(done)
            if main and cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                self._preview(done)
        bar.close()
        if main:
            self._preview(cfg.steps)
            plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        barrier(self.dist)
        return latest_checkpoint(self.ckpt_root)

    # ---- pieces ----------------------------------------------------------------------
    def _restore(self, resume: bool) -> int:
        ckpt = latest_checkpoint(self.ckpt_root)
        if ckpt is None:
            if self.dist.is_main and (self.run_dir / "metrics.jsonl").exists():
                (self.run_dir / "metrics.jsonl").unlink()  # a run that died before its first checkpoint
            return 0
        state = read_state(ckpt)
        if state.get("fingerprint", "") != self.fingerprint:
            raise ValueError(f"'{ckpt}' was trained with a different model/data/diffusion config than "
                             f"'{self.run_dir / 'config.toml'}' now says; use another --out directory")
        if state["step"] < self.cfg.steps and not resume:
            raise FileExistsError(f"'{self.run_dir}' already holds a run stopped at step {state['step']} of "
                                  f"{self.cfg.steps}: pass --resume to continue it, or --out another directory")
        load_checkpoint(ckpt, self.model, self.ema, self.optimizer)
        if hasattr(self.task, "load_extra_state"):
            self.task.load_extra_state(read_extra(ckpt))
        if self.dist.is_main:
            self._truncate_log(state["step"])
        return state["step"]

    def _checkpoint(self, step: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_root, step, self.model, self.ema, self.optimizer,
                            {"fingerprint": self.fingerprint, "seed": self.cfg.seed,
                             "data_order": "randperm(seed, epoch), drop-last", "precision":
                             "bf16" if self.bf16 else "fp32", "world_size": self.dist.world_size},
                            keep=self.cfg.keep_checkpoints,
                            extra=self.task.extra_state() if hasattr(self.task, "extra_state") else None)
            plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        barrier(self.dist)

    def _preview(self, step: int) -> None:
        ema_model = self.ema.model_copy(self.model)
        self.task.preview(ema_model, self.run_dir / "samples" / f"step_{step:07d}.png")

    def _log(self, rec: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _truncate_log(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
            write_text(path, "".join(ln + "\n" for ln in keep))

    def _diverged(self, step: int, value: float, what: str = "loss") -> None:
        last = latest_checkpoint(self.ckpt_root)
        kept = f"the last good checkpoint is '{last}'" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training stopped: the {what} became {value} at step {step + 1}; {kept}. Try a lower train.lr, "
            "train.grad_clip = 1.0, or train.precision = \"fp32\"")
