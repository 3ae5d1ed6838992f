"""Video evaluation: per-frame quality and temporal consistency for each (sampler, steps) row of the
[eval] table, next to the same numbers for real held-out clips.

Digit videos (Moving-digits with one labelled digit per clip): a digit classifier trained on frames
of the real train clips (at the clips' own size, so it reads a digit anywhere on the canvas) gives
per-frame Frechet distance, confidence and class coverage, the share of frames showing the class the
clip was asked for, and the identity agreement across a clip's frames. Every video: centroid motion
(speed, jerk; multidiff.metrics.video). FVD when eval.i3d_weights names local I3D weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.samplers import default_spacing, nfe
from ..data.video import build_video_dataset
from ..data.video_write import save_clips, save_frame_grid
from ..metrics import digit_metrics, load_classifier, save_classifier, train_digit_classifier
from ..metrics.video import I3DFeatures, fvd, frames_of, identity_agreement, motion
from ..modalities.base import Trained
from ..pipelines.generate import generate
from ..utils import added_key
from .image import parse_row
from .tables import check_repeats, markdown_table, mean_over_draws, write_result


@dataclass
class VideoEvalConfig:
    """The [eval] section."""
    n: int = 100                 # generated clips per table row
    batch: int = 50
    table: list[str] = field(default_factory=lambda: ["dpmpp_2m:20", "ddim:50"])
    classifier_epochs: int = 4
    classifier_frames: int = 4   # frames per real train clip the digit classifier learns from
    i3d_weights: str = ""        # local TorchScript I3D (i3d_torchscript.pt): FVD
    seed: int = 1
    repeats: int = added_key(1)  # draws per row (seeds seed, seed + 1, ...): their mean, and fd_sd, their spread

    def __post_init__(self):
        check_repeats(self.repeats)


def is_digit_video(run) -> bool:
    return run["prep"].build == "moving_digits" and run["prep"].digits == "1"


def real_clips(ds, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n items' fixed clips (ds[i] draws nothing) and their labels, evenly spread over the dataset (the
    items are in class-folder order: the first n would leave classes out)."""
    n = len(ds) if n is None else min(n, len(ds))
    items = [ds[int(i)] for i in torch.linspace(0, len(ds) - 1, n).round().long()] if n else []
    return torch.stack([c for c, _ in items]), torch.tensor([y for _, y in items])


def frame_classifier(run, train_clips: torch.Tensor, train_labels: torch.Tensor):
    """A digit classifier on frames of the real train clips; trained once, cached in the run."""
    path = run.dir / "eval" / "frame_classifier.safetensors"
    if path.exists():
        return load_classifier(path)
    T, k = train_clips.shape[2], run["eval"].classifier_frames
    pick = torch.linspace(0, T - 1, min(k, T)).round().long().unique()
    frames = frames_of(train_clips[:, :, pick])
    clf = train_digit_classifier(frames, train_labels.repeat_interleave(len(pick)), size=run["data"].size,
                                 epochs=run["eval"].classifier_epochs, seed=0)
    save_classifier(clf, path)
    return clf


class Scorer:
    def __init__(self, run):
        ev = run["eval"]
        self.digits = is_digit_video(run)
        test_clips, self.test_labels = real_clips(build_video_dataset(run["data"], "test"), ev.n)
        self.header = {"real_clips": len(test_clips)}
        if self.digits:
            train_clips, train_labels = real_clips(build_video_dataset(run["data"], "train"))
            self.clf = frame_classifier(run, train_clips, train_labels)
            self.ref = frames_of(train_clips[:, :, ::max(1, train_clips.shape[2] // ev.classifier_frames)])
            with torch.no_grad():
                acc = (self.clf(frames_of(test_clips)).argmax(1)
                       == self.test_labels.repeat_interleave(test_clips.shape[2])).double().mean()
            self.header.update(feature_extractor="digit classifier trained on real train-clip frames",
                               classifier_test_frame_accuracy=float(acc))
        self.i3d = I3DFeatures(ev.i3d_weights) if ev.i3d_weights else None
        self.real_clips = test_clips
        self.header["real_test"] = self(test_clips, self.test_labels)

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor | None) -> dict:
        out = motion(clips)
        N, T = clips.shape[0], clips.shape[2]
        if self.digits:
            frames = frames_of(clips)
            out.update({k: v for k, v in digit_metrics(self.clf, frames, self.ref).items() if k != "class_counts"})
            with torch.no_grad():
                pred = self.clf(frames).argmax(1).view(N, T)
            out["identity_agreement"] = float(identity_agreement(pred).mean())
            if labels is not None:
                out["label_accuracy"] = float((pred == labels[:, None]).double().mean())
        if self.i3d is not None:
            out["fvd"] = fvd(self.i3d, self.real_clips, clips)
        return out


def evaluate(run, trained: Trained, device, bf16: bool) -> dict:
    ev = run["eval"]
    score = Scorer(run)
    K = trained.num_classes
    labels = torch.arange(ev.n) % K if K else None
    rows = []
    for entry in ev.table:
        sampler, steps = parse_row(entry)
        draws = []
        for seed in range(ev.seed, ev.seed + ev.repeats):
            t0 = time.perf_counter()
            x = generate(trained, ev.n, run["sample"], device, bf16, seed=seed, batch=ev.batch, labels=labels,
                         sampler_kw={"sampler": sampler, "steps": steps, "spacing": default_spacing(sampler)})
            draws.append({"seconds_per_clip": (time.perf_counter() - t0) / ev.n, **score(x, labels)})
            if seed == ev.seed:  # the first draw is the one shown (the draw of a single-seed evaluation)
                shown = x
                save_frame_grid(x[:20], run.dir / "samples" / f"eval_{sampler}_{steps}.png")
        rows.append({"sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps), **mean_over_draws(draws)})
        run.log(f"[evaluate] {entry}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()
                                                     if isinstance(v, float)))
    save_clips(shown[:20], run.dir / "samples" / "eval_last_row", run["sample"].fps, nrow=10 if K == 10 else None)
    result = {**score.header, "checkpoint": str(trained.checkpoint), "n": ev.n, "frames": shown.shape[2],
              "precision": "bf16" if bf16 else "fp32", "rows": rows}
    real = {"sampler": "real test clips", **result["real_test"]}
    return write_result(run.dir, result, markdown_table(rows + [real], COLUMNS))


COLUMNS = {"sampler": "sampler", "steps": "steps", "nfe": "NFE", "fd": "fd", "fd_sd": "fd sd",
           "confidence": "confidence", "coverage": "coverage", "label_accuracy": "label_accuracy",
           "identity_agreement": "identity_agreement", "speed": "speed", "jerk": "jerk", "fvd": "fvd",
           "seconds_per_clip": "s/clip"}
