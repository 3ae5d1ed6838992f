"""Image evaluation: sample quality for each (sampler, steps) row of the [eval] table.

Digits: Frechet distance in the feature space of a digit classifier trained on the real train split
(there are no Inception weights offline), its confidence and class coverage. Other data: FID when
eval.inception_weights points to local Inception-v3 weights.

The default table is a few rows that finish in minutes on a CPU; `eval.full = true` adds the full
sampler comparison (`full_table`, with the 1,000-step ancestral row).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core.samplers import default_spacing, nfe
from ..data.image import build_image_dataset, save_image_grid
from ..metrics import (InceptionFeatures, digit_metrics, feature_stats, frechet_distance, load_classifier,
                       save_classifier, train_digit_classifier)
from ..modalities.base import Trained
from ..pipelines.generate import generate
from ..utils import added_key
from .tables import check_repeats, markdown_table, mean_over_draws, write_result


@dataclass
class ImageEvalConfig:
    """The [eval] section: sample quality vs sampler and steps."""
    n: int = 500                       # samples per table row
    batch: int = 250
    table: list[str] = field(default_factory=lambda: ["ddim:50", "dpmpp_2m:20", "dpmpp_2m:10"])
    full: bool = added_key(False)      # also the rows of full_table (minutes to an hour more on a CPU)
    full_table: list[str] = added_key(["ddpm:1000", "ddim:50", "ddim:20", "ddim:10", "dpmpp_2m:20", "dpmpp_2m:10",
                                       "heun:10"])
    classifier_epochs: int = 12
    inception_weights: str = ""        # local torchvision Inception-v3 weights: FID for non-digit data
    seed: int = 1
    repeats: int = added_key(1)        # draws per row (seeds seed, seed + 1, ...): their mean, and fd_sd, their spread

    def __post_init__(self):
        check_repeats(self.repeats)

    def rows(self) -> list[str]:
        """The table's rows: `table`, then (with full = true) the rows of `full_table` not in it yet."""
        extra = [r for r in self.full_table if r not in self.table] if self.full else []
        return [parse_row(r) for r in self.table + extra]


def parse_row(row: str) -> tuple[str, int]:
    try:
        sampler, steps = row.split(":")
        return sampler, int(steps)
    except ValueError:
        raise ValueError(f"eval.table entries look like 'sampler:steps' (e.g. 'ddim:50'), got {row!r}") from None


def stack(ds, limit: int | None = None) -> torch.Tensor:
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i][0] for i in range(n)])


def digit_classifier(run):
    """Trained once on the real train split and cached in the run directory."""
    path = run.dir / "eval" / "digit_classifier.safetensors"
    train, test = build_image_dataset(run["data"], "train"), build_image_dataset(run["data"], "test")
    if path.exists():
        clf = load_classifier(path)
    else:
        clf = train_digit_classifier(stack(train), torch.tensor(train.labels), epochs=run["eval"].classifier_epochs,
                                     seed=0)
        save_classifier(clf, path)
    with torch.no_grad():
        acc = (clf(stack(test)).argmax(1) == torch.tensor(test.labels)).double().mean().item()
    return clf, stack(train), stack(test), acc


class Scorer:
    def __init__(self, run):
        self.digits = run["data"].source == "digits"
        if self.digits:
            self.clf, self.ref, test, self.acc = digit_classifier(run)
            floor = digit_metrics(self.clf, test, self.ref)
            self.header = {"feature_extractor": "digit classifier (trained on the real train split)",
                           "classifier_test_accuracy": self.acc, "real_test_vs_train": floor}
        elif run["eval"].inception_weights:
            self.inc = InceptionFeatures(run["eval"].inception_weights)
            ref = stack(build_image_dataset(run["data"], "train"), 10_000)
            self.ref_stats = feature_stats(self._features(ref))
            self.header = {"feature_extractor": f"Inception-v3 from {run['eval'].inception_weights}"}
        else:
            self.header = {"feature_extractor": None, "note": "no feature extractor for this data: set "
                           "eval.inception_weights to local Inception-v3 weights for FID"}

    def _features(self, x):
        with torch.no_grad():
            return torch.cat([self.inc(x[i:i + 100]) for i in range(0, len(x), 100)])

    def __call__(self, x) -> dict:
        if self.digits:
            return digit_metrics(self.clf, x, self.ref)
        if self.header.get("feature_extractor"):
            return {"fid": frechet_distance(*feature_stats(self._features(x)), *self.ref_stats)}
        return {}


def evaluate(run, trained: Trained, device, bf16: bool) -> dict:
    """Samples of `trained` (pixel or latent model; scored as images of run["data"]) for every table row."""
    ev = run["eval"]
    score = Scorer(run)
    rows = []
    for sampler, steps in ev.rows():
        draws = []
        for seed in range(ev.seed, ev.seed + ev.repeats):
            t0 = time.perf_counter()
            x = generate(trained, ev.n, run["sample"], device, bf16, seed=seed, batch=ev.batch,
                         sampler_kw={"sampler": sampler, "steps": steps, "spacing": default_spacing(sampler)})
            draws.append({"seconds_per_image": (time.perf_counter() - t0) / ev.n, **score(x)})
            if seed == ev.seed:  # the first draw is the one shown (the draw of a single-seed evaluation)
                save_image_grid(x[:100], run.dir / "samples" / f"eval_{sampler}_{steps}.png", nrow=10)
        rows.append({"sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps), **mean_over_draws(draws)})
        run.log(f"[evaluate] {sampler}:{steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()
                                                               if isinstance(v, float)))
    result = {**score.header, "checkpoint": str(trained.checkpoint), "n": ev.n, "precision": "bf16" if bf16 else "fp32",
              "rows": rows}
    shown = rows + ([{"sampler": "real test images", **result["real_test_vs_train"]}]
                    if "real_test_vs_train" in result else [])
    return write_result(run.dir, result, markdown_table(shown, COLUMNS))


COLUMNS = {"sampler": "sampler", "steps": "steps", "nfe": "NFE", "fd": "fd", "fd_sd": "fd sd", "fid": "fid",
           "confidence": "confidence", "coverage": "coverage", "seconds_per_image": ("s/image", ".4f")}
