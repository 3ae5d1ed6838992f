"""The train stage of any modality: its dataset, model and loss task in the shared Trainer, with the
previews the modality writes."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from ..engine.precision import resolve_precision
from ..engine.trainer import Trainer
from ..modalities.base import Modality, check_labels_fit
from .generate import previewer


def train_model(run, modality: Modality, dist, resume: bool, *, run_dir: Path | None = None, dataset=None,
                **options) -> dict:
    """Train `modality`'s model on the run's train split (or `dataset`) into `run_dir` (default: the run's).
    `options` go to the modality's task and fingerprint (e.g. mask_kinds for a mask-conditioned model)."""
    sections = run.sections
    dataset = dataset if dataset is not None else modality.dataset(run, "train")
    check_labels_fit(sections, dataset, modality.num_classes(sections))
    torch.manual_seed(sections["train"].seed)  # the initial weights come from train.seed, whatever ran before
    model = modality.build_model(sections)
    modality.fit_model(run, model, dataset)
    bf16 = resolve_precision(sections["train"].precision, dist.device)
    preview = (previewer(modality, sections, dist.device, bf16, modality.preview_count)
               if modality.preview_count and "sample" in sections else None)
    task = modality.task(sections, dist.device, bf16, preview=preview, model=model, **options)
    trainer = Trainer(model, dataset, task, sections["train"], run_dir or run.dir, dist=dist,
                      fingerprint=modality.fingerprint(sections, **options))
    ckpt = trainer.fit(resume=resume)
    return {"checkpoint": str(ckpt), "precision": "bf16" if trainer.bf16 else "fp32"}


def archive_training(run_dir: Path) -> Path | None:
    """Move a run's checkpoints and training log aside (to retrain with `--force train`): kept, never deleted,
    with a copy of the config.toml they were trained with (call it before the new config is written)."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").exists():
        return None
    dest = run_dir / f"previous_training_{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True)
    for name in ("checkpoints", "metrics.jsonl", "loss.png"):
        if (run_dir / name).exists():
            (run_dir / name).rename(dest / name)
    if (run_dir / "config.toml").is_file():
        shutil.copy2(run_dir / "config.toml", dest / "config.toml")
    return dest
