"""Evaluation of unconditional (and class-conditional) audio runs: spoken words such as SC09's digits.

Generated clips are scored the way DiffWave's SC09 table scores them (FID, IS, mIS), in the feature
space of a classifier trained on the real train clips: no pretrained audio classifier can be
downloaded here, so, as for the digits image and video recipes, a small DigitClassifier is trained
on the clips' mel spectrograms (resized to a square image) and cached in the run. Rows: the real
held-out clips (the floor: what real speech scores against the train clips), then the generated
clips per step count: Frechet distance of classifier features, inception score, modified inception
score, mean confidence, class coverage, the share predicted as the label they were generated for
(class-conditional models), and the real-time factor. Numbers compare runs scored with the same
classifier file only. Data with one class or more than ten (e.g. LJSpeech) gets samples and the
real-time factor only.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..data.audio import write_wav
from ..data.mel import mel_spectrogram
from ..metrics import digit_metrics, load_classifier, save_classifier, train_digit_classifier
from ..metrics.audio import real_time_factor
from ..modalities.audio import AUDIO, mel_config
from ..modalities.base import Trained
from ..pipelines.generate import generate
from .tables import markdown_table, write_result

IMAGE_SIZE = 32            # the classifier's view of a clip: its mel resized to 32 x 32
MIN_CLASSIFIER_STEPS = 80  # a small corpus gets more epochs: 12 epochs of 100 clips (24 steps) underfit
HIFIGAN_RANGE = (math.log(1e-5), 2.0)   # log-mel values of the hifigan style mapped onto [-1, 1]


def mel_images(mels: list[torch.Tensor] | torch.Tensor, style: str) -> torch.Tensor:
    """Mel spectrograms [n_mels, frames] (any lengths) -> images [N, 1, S, S] in [-1, 1], low
    frequencies at the bottom row. lmnt-style mels are in [0, 1] already; hifigan-style log-mels are
    mapped from [log 1e-5, 2] and clamped. The level is kept (no per-clip normalisation), so quiet
    noise and loud noise do not look alike to the classifier."""
    out = []
    for m in mels:
        m = m.float()
        if style == "lmnt":
            x = m * 2 - 1
        else:
            lo, hi = HIFIGAN_RANGE
            x = ((m - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
        x = F.interpolate(x.flip(0)[None, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                          align_corners=False, antialias=True)
        out.append(x[0])
    return torch.stack(out).clamp(-1, 1)


def classifier_epochs(n_clips: int, epochs: int, batch_size: int = 64) -> int:
    """`epochs`, or more when that is under MIN_CLASSIFIER_STEPS optimizer steps."""
    return max(epochs, math.ceil(MIN_CLASSIFIER_STEPS / math.ceil(n_clips / batch_size)))


def _real(ds, style: str) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(len(ds))]
    return mel_images([m for _, m, _ in items], style), torch.tensor([y for _, _, y in items])


class _Scorer:
    """A classifier on the real train clips' mel images (trained once, cached in the run) and the
    reference features it scores generated clips against."""

    def __init__(self, run):
        s, ev = run.sections, run["eval"]
        self.style, self.mel_cfg = s["data"].mel, mel_config(s)
        train = AUDIO.dataset(run, "train")
        self.active = 2 <= train.num_classes <= 10
        self.header, self.real_row = {"classes": train.num_classes}, None
        if not self.active:
            self.header["note"] = (f"{train.num_classes} class(es) in the data: the classifier scores need "
                                   "2-10 labelled classes (e.g. SC09's digit words)")
            return
        self.ref, labels = _real(train, self.style)
        path = run.dir / "eval" / "mel_classifier.safetensors"
        if path.exists():
            self.clf = load_classifier(path)
        else:
            self.clf = train_digit_classifier(self.ref, labels, size=IMAGE_SIZE, seed=0, threads=None,
                                              epochs=classifier_epochs(len(labels), ev.classifier_epochs))
            save_classifier(self.clf, path)
        try:
            held = AUDIO.dataset(run, "eval")
        except ValueError:  # a corpus without an eval split: no reference row
            held = None
        self.header.update(feature_extractor="classifier trained on the real train clips' mel spectrograms",
                           train_clips=len(train))
        if held is not None and len(held) >= 2:
            images, y = _real(held, self.style)
            real = self.score(images, y)
            self.header.update(held_out_clips=len(held), classifier_held_out_accuracy=real["label_accuracy"])
            self.real_row = {"method": "real held-out clips", **real}

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        out = {k: v for k, v in digit_metrics(self.clf, images, self.ref).items() if k != "class_counts"}
        if labels is not None:
            with torch.no_grad():
                out["label_accuracy"] = float((self.clf(images).argmax(1) == labels).double().mean())
        return out

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor | None) -> dict:
        if not self.active:
            return {}
        return self.score(mel_images(mel_spectrogram(clips[:, None], self.mel_cfg), self.style), labels)


def evaluate_unconditional(run, trained: Trained, device, bf16: bool) -> dict:
    s, ev = run.sections, run["eval"]
    sr, hop = s["data"].sample_rate, s["model"].hop_length
    n_samples = int(sr * ev.seconds) // hop * hop
    score = _Scorer(run)
    K = trained.num_classes
    labels = torch.arange(ev.n) % K if K else None
    rows = [score.real_row] if score.real_row else []
    settings = AUDIO.sample_settings(s)
    for steps in ev.steps:
        t0 = time.perf_counter()
        x = generate(trained, ev.n, settings, device, bf16, seed=0, labels=labels, batch=ev.batch,
                     guidance=ev.guidance if labels is not None else 1.0, progress=False, length=n_samples,
                     sampler_kw={"steps": steps})[:, 0]
        secs = time.perf_counter() - t0
        for i in range(min(len(x), ev.save_wavs)):
            write_wav(run.dir / "samples" / f"steps{steps}_{i:02d}.wav", x[i], sr)
        rows.append({"method": f"diffwave_{steps}", **score(x, labels),
                     "rtf": real_time_factor(secs, len(x) * n_samples, sr)})
    result = {"checkpoint": str(trained.checkpoint), "clips": ev.n, "seconds": n_samples / sr, **score.header,
              "rows": rows}
    for r in rows:
        run.log(f"[evaluate] {r['method']}: " + ", ".join(f"{k} {r[k]:.3f}" for k in COLUMNS if k in r))
    return write_result(run.dir, result, markdown_table(rows, {"method": "clips", **COLUMNS}))


COLUMNS = {"fd": "FD (classifier features)", "inception_score": "IS", "modified_inception_score": "mIS",
           "confidence": "confidence", "coverage": "class coverage", "label_accuracy": "label accuracy",
           "rtf": "real-time factor"}

