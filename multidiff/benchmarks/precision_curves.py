"""bf16 autocast vs fp32 training: same recipe, seed, data order and noise; loss curves side by side.

Run: `multidiff bench precision [--recipe recipes/image_digits] [--steps 300]`. Prints the mean
loss per window of steps for both runs, their ratio, and the wall-clock time, and writes a PNG
with both curves. bf16 keeps fp32 master weights, so the curves should agree within the
noise of the loss itself.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from .. import kinds
from ..engine.distributed import DistInfo
from ..engine.runs import Run, load_recipe
from ..pipelines.train import train_model


def train_once(recipe: str, precision: str, steps: int, out: Path) -> tuple[list[float], float]:
    overrides = [f"train.precision={precision}", f"train.steps={steps}", f"train.checkpoint_every={steps}",
                 "train.sample_every=0", "train.log_every=1"]
    _, sections = load_recipe(recipe, overrides, kinds.schema_of)
    t0 = time.perf_counter()
    train_model(Run(out, sections, log=lambda *a: None), kinds.kind_of(sections).base, DistInfo(), resume=False)
    secs = time.perf_counter() - t0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], secs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="multidiff bench precision", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/image_digits")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--png", default="precision_curves.png")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        curves = {p: train_once(args.recipe, p, args.steps, Path(tmp) / p) for p in ("fp32", "bf16")}
    w = args.window
    print(f"{args.recipe}, {args.steps} steps, same seed/data/noise; mean loss per {w} steps\n")
    print("| steps | fp32 | bf16 | bf16 / fp32 |\n|---|---|---|---|")
    (a, ta), (b, tb) = curves["fp32"], curves["bf16"]
    for s in range(0, args.steps, w):
        ma, mb = sum(a[s:s + w]) / len(a[s:s + w]), sum(b[s:s + w]) / len(b[s:s + w])
        print(f"| {s + 1}-{min(s + w, args.steps)} | {ma:.4f} | {mb:.4f} | {mb / ma:.3f} |")
    print(f"\nwall clock: fp32 {ta:.0f} s, bf16 {tb:.0f} s ({ta / tb:.2f}x)")
    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, (loss, _) in curves.items():
        k = max(1, w // 5)
        ax.plot([sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))],
                label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (running mean of {max(1, w // 5)})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
