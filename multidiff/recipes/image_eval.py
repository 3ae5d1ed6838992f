"""Image recipe evaluation: sample quality for each (sampler, steps) row of [eval] table.

Digits: Frechet distance in the feature space of a digit classifier trained on the real train
split (there are no Inception weights offline), its confidence and class coverage. Other data:
FID when eval.inception_weights points to local Inception-v3 weights.
"""
from __future__ import annotations

import time

import torch

from ..data.image import build_image_dataset, save_image_grid
from ..metrics import (InceptionFeatures, digit_metrics, feature_stats, frechet_distance, load_classifier,
                       save_classifier, train_digit_classifier)
from ..engine.precision import resolve_precision
from ..utils import write_json, write_text
from .image import generate, load_trained
from ..engine.runs import Run


def parse_row(row: str) -> tuple[str, int]:
    try:
        sampler, steps = row.split(":")
        return sampler, int(steps)
    except ValueError:
        raise ValueError(f"eval.table entries look like 'sampler:steps' (e.g. 'ddim:50'), got {row!r}") from None


def nfe(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def stack(ds, limit: int | None = None) -> torch.Tensor:
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i][0] for i in range(n)])


def digit_classifier(run: Run):
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


class _Scorer:
    def __init__(self, run: Run):
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
        if "feature_extractor" in self.header and self.header["feature_extractor"]:
            return {"fid": frechet_distance(*feature_stats(self._features(x)), *self.ref_stats)}
        return {}


def evaluate(run: Run, dist, gen_sections: dict | None = None, decode=None) -> dict:
    """`gen_sections` + `decode`: a latent model (its latent view of the config, and the decoder);
    samples are scored as images against run["data"] either way."""
    ev = run["eval"]
    gen_sections = gen_sections or run.sections
    model, ckpt = load_trained(run.dir, gen_sections)
    bf16 = resolve_precision(run["train"].precision, dist.device)
    score = _Scorer(run)
    rows = []
    for entry in ev.table:
        sampler, steps = parse_row(entry)
        t0 = time.perf_counter()
        x = generate(gen_sections, model, run["sample"], ev.n, dist.device, bf16, seed=ev.seed, batch=ev.batch,
                     sampler_kw={"sampler": sampler, "steps": steps,
                                 "spacing": "leading" if sampler in ("ddpm", "ddim") else "karras"}, decode=decode)
        secs = (time.perf_counter() - t0) / ev.n
        save_image_grid(x[:100], run.dir / "samples" / f"eval_{sampler}_{steps}.png", nrow=10)
        rows.append({"sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps),
                     "seconds_per_image": secs, **score(x)})
        run.log(f"[evaluate] {entry}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()
                                                     if isinstance(v, float)))
    result = {**score.header, "checkpoint": str(ckpt), "n": ev.n, "precision": "bf16" if bf16 else "fp32",
              "rows": rows}
    write_json(run.dir / "eval.json", result)
    write_text(run.dir / "eval.md", markdown(result))
    return {"eval": str(run.dir / "eval.json")}


def markdown(result: dict) -> str:
    rows = result["rows"]
    keys = [k for k in ("fd", "fid", "confidence", "coverage") if rows and k in rows[0]]
    lines = ["| sampler | steps | NFE | " + " | ".join(keys) + " | s/image |",
             "|---|---|---|" + "---|" * len(keys) + "---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | "
                     + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {r['seconds_per_image']:.4f} |")
    if "real_test_vs_train" in result:
        f = result["real_test_vs_train"]
        lines.append("| real test images | - | - | " + " | ".join(f"{f[k]:.3f}" for k in keys) + " | - |")
    return "\n".join(lines) + "\n"
