"""Video prediction and interpolation: complete held-out clips from some known frames with every
completion method, and compare them on the unknown frames.

  conditioned   the frame-conditioned 3-D U-Net of this run ([video] known_patterns)
  replace / repaint / reconstruction   the plain video model of another run (predict.unconditional_run)

A known-frame mask is just a mask [B, 1, T, 1, 1] for the shared completion table. The plain model is
sampled without a class label: the known frames are the only information every method gets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..data.frame_masks import frames_mask, parse_known_frames, pattern_mask
from ..data.video import build_video_dataset, save_video_grid
from ..data.video_write import save_frame_grid
from ..metrics import psnr, ssim
from ..metrics.video import frames_of, motion
from ..modalities.base import Trained
from ..pipelines.complete import METHODS, CompletionSampling, complete
from ..utils import added_key
from .tables import markdown_table, write_result
from .video import frame_classifier, is_digit_video, real_clips

PREDICTION_METHODS = ("conditioned", "replace", "repaint", "reconstruction")


@dataclass
class PredictConfig(CompletionSampling):
    """The [predict] section: image inpainting's sampler keys (with defaults sized for clips) + these."""
    SECTION: ClassVar[str] = "predict"
    repaint_steps: int = 25
    jump_n_sample: int = 3
    reconstruction_weight: float = 10.0
    unconditional_run: str = "runs/video_moving_digits"
    unconditional_recipe: str = "recipes/video_moving_digits"
    unconditional_overrides: list[str] = added_key([])  # key=value overrides of that recipe (e.g. a plain model)
    tasks: list[str] = field(default_factory=lambda: ["prefix:4", "ends"])  # prefix:K | ends | frames e.g. 0,7
    methods: list[str] = field(default_factory=lambda: list(PREDICTION_METHODS))
    eval_n: int = 50
    batch: int = 50


def task_mask(task: str, frames: int) -> torch.Tensor:
    """'prefix:K' | 'ends' | a --known-frames spec -> [1, 1, T, 1, 1]."""
    if task.startswith("prefix:"):
        k = int(task.split(":", 1)[1])
        if not 1 <= k < frames:
            raise ValueError(f"predict.tasks: {task!r} needs 1 <= K < {frames} (the clip length)")
        return pattern_mask("prefix", frames, k)
    if task == "ends":
        return pattern_mask("ends", frames)
    return frames_mask(parse_known_frames(task, frames), frames)


def evaluate(run, models: dict[str, Trained], device, bf16: bool, name: str = "eval") -> dict:
    """models: "conditioned" (this run's) and, for the other methods, "plain"; writes RUN/<name>.json / .md
    and samples/<name = eval: prediction, else name>.png / .gif."""
    p, T = run["predict"], run["data"].frames
    clips, labels = real_clips(build_video_dataset(run["data"], "test"), p.eval_n)
    clf = frame_classifier(run, *real_clips(build_video_dataset(run["data"], "train"))) if is_digit_video(run) else None
    rows, real_rows, panels = [], [], []
    show = torch.linspace(0, len(clips) - 1, min(4, len(clips))).round().long()  # 4 clips of different digits
    for task in p.tasks:
        m = task_mask(task, T)
        unknown = (m[0, 0, :, 0, 0] == 0)
        shown = [clips[show], clips[show] * m - (1 - m)]  # unknown frames drawn black
        if clf is not None:  # the reference: how often the classifier reads the real unknown frames right
            real_rows.append({"task": task, "method": "real clips",
                              "label_accuracy": _label_accuracy(clf, frames_of(clips[:, :, unknown]), labels)})
        for method in p.methods:
            trained = models["conditioned" if METHODS[method].conditioned else "plain"]
            t0 = time.perf_counter()
            x = torch.cat([complete(trained, method, clips[i:i + p.batch], m, p, device, bf16,
                                    torch.Generator().manual_seed(p.seed + i))
                           for i in range(0, len(clips), p.batch)])
            secs = (time.perf_counter() - t0) / len(x)
            gen, real = frames_of(x[:, :, unknown]), frames_of(clips[:, :, unknown])
            row = {"task": task, "method": method, "n": len(x), "seconds_per_clip": secs,
                   "psnr": float(psnr(gen, real).mean()), "ssim": float(ssim(gen, real, window=p.ssim_window).mean()),
                   "jerk": motion(x)["jerk"] if T >= 3 else float("nan")}
            if clf is not None:
                row["label_accuracy"] = _label_accuracy(clf, gen, labels)
            rows.append(row)
            shown.append(x[show])
            run.log(f"[evaluate] {task}/{method}: psnr {row['psnr']:.2f} ssim {row['ssim']:.3f}"
                    + (f" labels {row['label_accuracy']:.3f}" if clf is not None else ""))
        panels.append(torch.cat(shown))
    out, picture = run.dir / "samples", "prediction" if name == "eval" else name
    panel = torch.cat(panels)
    save_frame_grid(panel, out / f"{picture}.png")
    save_video_grid(panel, out / f"{picture}.gif", nrow=len(show), fps=run["sample"].fps)
    real_jerk = motion(clips)["jerk"] if T >= 3 else None
    result = {"rows": rows, "real_rows": real_rows, "clips": len(clips), "frames": T,
              "precision": "bf16" if bf16 else "fp32", "real_jerk": real_jerk,
              "layout": "per task: 4 real clips, the known frames (unknown ones black), then 4 per method "
                        f"({', '.join(p.methods)}); prediction.png has one row per clip"}
    md = markdown_table(rows + real_rows, COLUMNS)
    if real_jerk is not None:
        md += f"\nReal clips: jerk {real_jerk:.3f} px/frame^2. PSNR/SSIM over the unknown frames only.\n"
    return write_result(run.dir, result, md, name)


def _label_accuracy(clf, frames: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of frames (clip by clip, [N * k, C, H, W]) the classifier reads as their clip's label."""
    with torch.no_grad():
        pred = clf(frames).argmax(1).view(len(labels), -1)
    return float((pred == labels[:, None]).double().mean())


COLUMNS = {"task": "known frames", "method": "method", "psnr": ("PSNR (dB)", ".2f"), "ssim": "SSIM",
           "label_accuracy": "label accuracy", "jerk": "jerk (px/frame^2)", "seconds_per_clip": "s/clip"}
