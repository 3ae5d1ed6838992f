"""Drift of long clips: clips of [long_video] frames (64) made window by window by a model trained on
short ones (pipelines/extend.py: autoregressive, and overlapping-window fusion), scored frame index by
frame index next to real clips of the same length (the opt-in stage `--stage long_video`).

Curves over the frame index t (RUN/long_video.png; the numbers in long_video.json, block means in
long_video.md):
  fd                 Frechet distance of the frames in [t, t + fd_bin) to real train-clip frames, in the
                     feature space of the run's digit classifier (evaluation/video.py); generated and real
                     curves use the same number of clips, so their small-sample bias is the same
  label_accuracy     share of clips whose frame t the classifier reads as the class the clip was asked for
  identity           share of clips whose frame t carries the clip's most common label in its first window
                     (1.0: the digit never turns into another one)
  confidence         the classifier's mean top probability (a digit that fades or smears loses it)
  speed, jerk        |p_t - p_t-1| and |p_t - 2 p_t-1 + p_t-2| of the frame's intensity centroid (px/frame,
                     px/frame^2): real digits glide at constant speed, so drift shows as slowing or jitter
The digit curves need a Moving-digits run (one labelled digit per clip); any video run gets the motion
curves. Real reference clips of `frames` frames: Moving-digits runs build their test clips beside
data.root (<data.root>_long<frames>, held-out digit scans, like the recipe's test split); other runs read
their test split at that length (shorter videos are left out).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep import PrepError, moving_digits

from ..data.video import VideoDataError, build_video_dataset
from ..data.video_write import save_frame_grid, save_video_grid
from ..engine.config import ConfigError
from ..metrics.frechet import feature_stats, frechet_distance
from ..metrics.video import centroids, frames_of
from ..modalities.base import Trained
from ..pipelines.extend import Extension, class_labels, extend
from ..utils import atomic_path
from .tables import markdown_table, write_result
from .video import frame_classifier, is_digit_video, real_clips

MODES = {"autoregressive": dict(fusion=False), "fusion": dict(fusion=True),
         "fusion_rescheduled": dict(fusion=True, noise="rescheduled")}
CURVES = ("fd", "label_accuracy", "identity", "confidence", "speed", "jerk")


@dataclass
class LongVideoConfig:
    """The [long_video] section: the opt-in stage `multidiff train RECIPE --stage long_video`."""
    frames: int = 64               # length of the generated and the real clips
    n: int = 50                    # clips per mode (labels 0..K-1 cycling), and real clips
    batch: int = 50
    context: int = 0               # frames consecutive windows share; 0 = half the trained clip
    modes: list[str] = field(default_factory=lambda: ["autoregressive", "fusion"])  # + fusion_rescheduled
    fd_bin: int = 4                # frames pooled per FD point
    seed: int = 1

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"long_video.modes: unknown {bad}; choose from {tuple(MODES)}")
        for key, low in (("frames", 3), ("n", 2), ("batch", 1), ("context", 0), ("fd_bin", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"long_video.{key} must be >= {low}, got {getattr(self, key)}")


def real_long_clips(run, cfg: LongVideoConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cfg.n real test clips of cfg.frames frames and their labels, or None (logged) where there are none."""
    d, p = run["data"], run["prep"]
    data = dataclasses.replace(d, frames=cfg.frames, start="first")
    if p.build == "moving_digits":
        root = Path(f"{str(d.root).rstrip('/')}_long{cfg.frames}")
        try:
            made = moving_digits.build(root, n=10, n_test=cfg.n, frames=cfg.frames, size=d.size,
                                       digit_size=p.digit_size or None, digits=p.digits, seed=p.seed,
                                       progress=run.main)
        except PrepError as e:
            raise ConfigError(str(e)) from None
        if made["written"]:
            run.log(f"[long_video] {made['written']} real clips of {cfg.frames} frames written to {root}")
        data = dataclasses.replace(data, root=str(root))
    else:
        data = dataclasses.replace(data, on_error="skip")
    try:
        ds = build_video_dataset(data, "test")
    except VideoDataError as e:
        run.log(f"[long_video] no real clips of {cfg.frames} frames to compare with: {e}")
        return None
    return real_clips(ds, cfg.n)


class Curves:
    """Per-frame-index curves of clips [N, C, F, H, W] (module docstring)."""

    def __init__(self, run, block: int, fd_bin: int):
        self.block, self.fd_bin, self.clf = block, fd_bin, None
        if is_digit_video(run):
            train_clips, train_labels = real_clips(build_video_dataset(run["data"], "train"))
            self.clf = frame_classifier(run, train_clips, train_labels).eval()
            ref = frames_of(train_clips[:, :, ::max(1, train_clips.shape[2] // run["eval"].classifier_frames)])
            self.ref_stats = feature_stats(self._features(ref)[0])

    @torch.no_grad()
    def _features(self, frames: torch.Tensor):
        feats, probs = [], []
        for i in range(0, len(frames), 512):
            f = self.clf.features(frames[i:i + 512])
            feats.append(f)
            probs.append(self.clf.head(f).softmax(1))
        return torch.cat(feats), torch.cat(probs)

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor | None) -> dict[str, list[float]]:
        N, F = clips.shape[0], clips.shape[2]
        p = centroids(clips)                                                  # [N, F, 2]
        v = (p[:, 1:] - p[:, :-1]).norm(dim=-1)
        a = (p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).norm(dim=-1)
        nan = float("nan")
        out = {"speed": [nan] + v.mean(0).tolist(), "jerk": [nan, nan] + a.mean(0).tolist()}
        if self.clf is None:
            return out
        feats, probs = self._features(frames_of(clips))
        pred = probs.argmax(1).view(N, F)
        first = pred[:, :min(self.block, F)].mode(1).values
        out["identity"] = (pred == first[:, None]).double().mean(0).tolist()
        out["confidence"] = probs.max(1).values.view(N, F).double().mean(0).tolist()
        if labels is not None:
            out["label_accuracy"] = (pred == labels[:, None]).double().mean(0).tolist()
        feats = feats.view(N, F, -1)
        fd = []
        for t0 in range(0, F, self.fd_bin):
            chunk = feats[:, t0:t0 + self.fd_bin].reshape(-1, feats.shape[-1])
            d = frechet_distance(*feature_stats(chunk), *self.ref_stats) if len(chunk) >= 2 else nan
            fd += [d] * min(self.fd_bin, F - t0)
        out["fd"] = fd
        return out


def evaluate(run, trained: Trained, device, bf16: bool) -> dict:
    cfg, m, s = run["long_video"], trained.modality, trained.sections
    block = m.block_length(s)
    context = cfg.context or block // 2
    if not 1 <= context < block:
        raise ConfigError(f"long_video.context = {cfg.context}: windows of the model's {block} frames can share 1 to "
                          f"{block - 1} frames")
    labels = class_labels(trained.num_classes, cfg.n, None)
    curves = Curves(run, block, cfg.fd_bin)
    result = {"frames": cfg.frames, "block": block, "context": context, "n": cfg.n, "fd_bin": cfg.fd_bin,
              "checkpoint": str(trained.checkpoint), "precision": "bf16" if bf16 else "fp32", "modes": {}}
    real = real_long_clips(run, cfg)
    if real is not None:
        result["real"] = curves(*real)
        result["real_clips"] = len(real[0])
    for mode in cfg.modes:
        ext = Extension(block, context, **MODES[mode])
        t0 = time.perf_counter()
        x = extend(trained, cfg.n, cfg.frames, ext, run["sample"], device, bf16, labels=labels, seed=cfg.seed,
                   batch=cfg.batch)
        secs = (time.perf_counter() - t0) / cfg.n
        result["modes"][mode] = {"seconds_per_clip": secs, **curves(x, labels)}
        show = x[:10]
        save_frame_grid(show, run.dir / "samples" / f"long_{mode}.png")
        save_video_grid(show, run.dir / "samples" / f"long_{mode}.gif", nrow=5, fps=run["sample"].fps)
        run.log(f"[long_video] {mode}: {cfg.n} clips of {cfg.frames} frames, {secs:.2f} s/clip")
    plot_curves(result, run.dir / "long_video.png")
    return write_result(run.dir, result, summary_table(result), name="long_video")


def _block_mean(values: list[float], a: int, b: int) -> float:
    vals = [v for v in values[a:b] if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def summary_table(result: dict) -> str:
    """Block means (frames 0..block-1, block.., ...) of every curve, per mode and for the real clips."""
    F, B = result["frames"], result["block"]
    series = {**result["modes"], **({"real clips": result["real"]} if "real" in result else {})}
    rows = []
    for name, c in series.items():
        for a in range(0, F, B):
            row = {"mode": name, "frames": f"{a}-{min(a + B, F) - 1}"}
            row.update({k: _block_mean(c[k], a, a + B) for k in CURVES if k in c})
            rows.append(row)
    cols = {"mode": "mode", "frames": "frames", "fd": "FD", "label_accuracy": "label accuracy",
            "identity": "identity (vs first window)", "confidence": "confidence", "speed": "speed (px/frame)",
            "jerk": "jerk (px/frame^2)"}
    return markdown_table(rows, cols) + (f"\n{result['n']} clips per row; windows of {B} frames sharing "
                                         f"{result['context']}; FD over {result['fd_bin']}-frame bins.\n")


def plot_curves(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {**result["modes"], **({"real clips": result["real"]} if "real" in result else {})}
    names = [k for k in ("fd", "label_accuracy", "identity", "speed", "jerk") if any(k in c for c in series.values())]
    titles = {"fd": "FD to real frames", "label_accuracy": "label accuracy", "identity": "identity vs first window",
              "speed": "speed (px/frame)", "jerk": "jerk (px/frame^2)"}
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, names):
        for label, c in series.items():
            if k in c:
                style = dict(color="black", ls="--", lw=1.2) if label == "real clips" else dict(lw=1.4)
                ax.plot(range(len(c[k])), c[k], label=label, **style)
        ax.axvline(result["block"] - 0.5, color="gray", lw=0.8, ls=":")
        ax.set_title(titles[k], fontsize=10)
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(names) < rows * cols:  # the legend in the empty panel
        axes.flat[-1].legend(handles, labels, loc="center", fontsize=10)
    else:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{result['frames']}-frame clips from a model trained on {result['block']} frames "
                 f"(windows share {result['context']})", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
