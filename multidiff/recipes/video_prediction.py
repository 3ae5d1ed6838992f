"""Video prediction and interpolation: complete a clip from some known frames, two ways, compared on
the same held-out clips.

  conditioned   a 3-D U-Net trained with [known-frame mask, known frames] as extra input channels
                ([video] known_patterns: prefix = prediction, ends = interpolation); this recipe's run
  replace       the plain video model of another run (predict.unconditional_run) with the core's
                known-region replacement at every step
  repaint       the same model with RePaint's resampling jumps

All three go through the same function as image inpainting (`image_inpainting.inpaint`): a known-frame
mask is just a mask [B, 1, T, 1, 1]. The plain model is trained first, by its own recipe
(predict.unconditional_recipe, prepare + train stages), when its run has no checkpoint yet. It is
sampled without a class label: the known frames are the only information both methods get.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import torch

from ..data.frame_masks import frames_mask, parse_known_frames, pattern_mask
from ..data.video import build_video_dataset, save_video_grid
from ..metrics import psnr, ssim
from ..metrics.video import frames_of, motion
from ..engine import latest_checkpoint
from ..engine.config import ConfigError
from ..engine.precision import resolve_precision
from ..utils import write_json, write_text
from . import video
from .image_inpainting import CompletionSampling
from ..engine.runs import Run, load_recipe, load_run, save_resolved

METHODS = ("conditioned", "replace", "repaint", "reconstruction")


@dataclass
class PredictConfig(CompletionSampling):
    """The [predict] section: image inpainting's sampler keys (with defaults sized for clips) + these."""
    SECTION: ClassVar[str] = "predict"
    METHODS: ClassVar[tuple[str, ...]] = METHODS
    repaint_steps: int = 25
    jump_n_sample: int = 3
    reconstruction_weight: float = 10.0
    unconditional_run: str = "runs/video_moving_digits"
    unconditional_recipe: str = "recipes/video_moving_digits"
    tasks: list[str] = field(default_factory=lambda: ["prefix:4", "ends"])  # prefix:K | ends | frames e.g. 0,7
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    eval_n: int = 50
    batch: int = 50


SCHEMA = {**video.SCHEMA, "predict": PredictConfig}


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


def plain_model(run: Run, dist, resume: bool, train: bool = True):
    """The unconditional run's sections, model and latent codec (None in pixel space), training it by its
    recipe first if needed (and `train`)."""
    p = run["predict"]
    run_dir = Path(p.unconditional_run)
    if latest_checkpoint(run_dir / "checkpoints") is None or not (run_dir / "stages" / "train.json").is_file():
        if not p.unconditional_recipe or not train:
            raise ConfigError(f"predict.unconditional_run '{run_dir}' holds no trained model: train it first "
                              f"(multidiff train {p.unconditional_recipe or 'RECIPE'} --out {run_dir})")
        from . import registry

        file, sections = load_recipe(p.unconditional_recipe, [], registry.schemas())
        if sections["recipe"].kind != "video" or video.is_conditioned(sections):
            raise ConfigError(f"predict.unconditional_recipe '{file}' must be a plain video recipe (kind = \"video\", "
                              "no video.known_patterns)")
        run.log(f"[unconditional] training {file} into {run_dir} (its prepare and train stages)")
        if dist.is_main:
            save_resolved(run_dir, sections)
        video.run_recipe(Run(run_dir, sections, run.log, run.main), dist, resume, stages=video.TRAIN_STAGES)
    from . import registry

    sections = load_run(run_dir, registry.schemas())
    mine, theirs = run["data"], sections["data"]
    diff = [k for k in ("frames", "size", "channels") if getattr(mine, k) != getattr(theirs, k)]
    if sections["recipe"].kind != "video" or video.is_conditioned(sections) or diff:
        raise ConfigError(f"predict.unconditional_run '{run_dir}' does not fit this recipe: it must be a plain video "
                          "run on clips like this recipe's" + (f" (data.{', data.'.join(diff)} differ)" if diff else ""))
    codec = video.codec_of(sections, getattr(dist, "device", None), bf16=False)
    return sections, video.load_trained(run_dir, sections, codec)[0], codec


def evaluate(run: Run, dist) -> dict:
    from .video_eval import frame_classifier, is_digit_video, real_clips

    p, T = run["predict"], run["data"].frames
    bf16 = resolve_precision(run["train"].precision, dist.device)
    clips, labels = real_clips(build_video_dataset(run["data"], "test"), p.eval_n)
    clf = None
    if is_digit_video(run):
        clf = frame_classifier(run, *real_clips(build_video_dataset(run["data"], "train")))
    codec = video.codec_of(run.sections, dist.device, bf16)
    models = {"conditioned": (run.sections, video.load_trained(run.dir, run.sections, codec)[0], codec)}
    if {"replace", "repaint", "reconstruction"} & set(p.methods):
        models["plain"] = plain_model(run, dist, resume=False)
    rows, panels = [], []
    show = torch.linspace(0, len(clips) - 1, min(4, len(clips))).round().long()  # 4 clips of different digits
    for task in p.tasks:
        m = task_mask(task, T)
        unknown = (m[0, 0, :, 0, 0] == 0)
        shown = [clips[show], clips[show] * m - (1 - m)]  # unknown frames drawn black
        for method in p.methods:
            sections, model, codec = models["conditioned" if method == "conditioned" else "plain"]
            t0 = time.perf_counter()
            x = torch.cat([video.complete(method, sections, model, clips[i:i + p.batch], m, p, dist.device, bf16,
                                          torch.Generator().manual_seed(p.seed + i), codec)
                           for i in range(0, len(clips), p.batch)])
            secs = (time.perf_counter() - t0) / len(x)
            gen, real = frames_of(x[:, :, unknown]), frames_of(clips[:, :, unknown])
            row = {"task": task, "method": method, "n": len(x), "seconds_per_clip": secs,
                   "psnr": float(psnr(gen, real).mean()), "ssim": float(ssim(gen, real, window=p.ssim_window).mean()),
                   "jerk": motion(x)["jerk"] if T >= 3 else float("nan")}
            if clf is not None:
                with torch.no_grad():
                    pred = clf(gen).argmax(1).view(len(x), -1)
                row["label_accuracy"] = float((pred == labels[:, None]).double().mean())
            rows.append(row)
            shown.append(x[show])
            run.log(f"[evaluate] {task}/{method}: psnr {row['psnr']:.2f} ssim {row['ssim']:.3f}"
                    + (f" labels {row['label_accuracy']:.3f}" if clf is not None else ""))
        panels.append(torch.cat(shown))
    out = run.dir / "samples"
    panel = torch.cat(panels)
    video.save_frame_grid(panel, out / "prediction.png")
    save_video_grid(panel, out / "prediction.gif", nrow=len(show), fps=run["sample"].fps)
    result = {"rows": rows, "clips": len(clips), "frames": T, "precision": "bf16" if bf16 else "fp32",
              "real_jerk": motion(clips)["jerk"] if T >= 3 else None,
              "layout": "per task: 4 real clips, the known frames (unknown ones black), then 4 per method "
                        f"({', '.join(p.methods)}); prediction.png has one row per clip"}
    write_json(run.dir / "eval.json", result)
    write_text(run.dir / "eval.md", markdown(rows, result["real_jerk"]))
    return {"eval": str(run.dir / "eval.json")}


def markdown(rows, real_jerk) -> str:
    has_labels = rows and "label_accuracy" in rows[0]
    lines = ["| known frames | method | PSNR (dB) | SSIM |" + (" label accuracy |" if has_labels else "")
             + " jerk (px/frame^2) | s/clip |", "|---|---|---|---|" + ("---|" if has_labels else "") + "---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} |"
                     + (f" {r['label_accuracy']:.3f} |" if has_labels else "")
                     + f" {r['jerk']:.3f} | {r['seconds_per_clip']:.3f} |")
    if real_jerk is not None:
        lines.append(f"\nReal clips: jerk {real_jerk:.3f} px/frame^2. PSNR/SSIM over the unknown frames only.")
    return "\n".join(lines) + "\n"


def run_recipe(run: Run, dist, resume: bool) -> None:
    video.check_model_fits_data(run.sections)
    if not video.is_conditioned(run.sections):
        raise ConfigError("a video_prediction recipe trains a frame-conditioned model: set video.known_patterns "
                          "(e.g. [\"prefix\", \"ends\"]) and model.extra_in_channels = data.channels + 1")
    video.run_recipe(run, dist, resume, stages=video.TRAIN_STAGES)
    if dist.is_main:
        run.stage("evaluate", ["data", "model", "diffusion", "video", "train", "predict"], lambda: evaluate(run, dist))
