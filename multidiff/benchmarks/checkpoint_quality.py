"""Sample quality vs training time: score every kept checkpoint of digit runs (pixel-space image runs
and latent runs alike) with one saved digit classifier, for "training time to a given quality".

    multidiff bench checkpoints runs/image_digits32 runs/latent_digits \
        --classifier runs/image_digits32/eval/digit_classifier.safetensors --n 400

Training time at a checkpoint is read from the run's metrics.jsonl (wall clock since the first
step, previews and checkpoint writes included); samples use each run's [sample] guidance scale.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..data.image import build_image_dataset
from ..metrics import digit_metrics, load_classifier
from .. import kinds
from ..engine.checkpoint import checkpoint_dirs, load_ema_weights
from ..engine.precision import resolve_precision
from ..engine.runs import load_run
from ..evaluation.image import stack
from ..modalities.base import Trained
from ..pipelines.generate import generate


def train_seconds(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    first = rows[0]
    t0 = first["time"] - first["step"] / first["it_s"]  # the first logged window started at step 0
    return {r["step"]: r["time"] - t0 for r in rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--classifier", required=True,
                    help="a saved digit classifier (e.g. RUN/eval/digit_classifier.safetensors)")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = load_classifier(args.classifier)
    dev = torch.device("cpu")
    bf16 = resolve_precision("auto", dev)
    print("| run | step | training s | FD | confidence | coverage | sampling s/image |")
    print("|---|---|---|---|---|---|---|")
    for run_dir in map(Path, args.runs):
        sections = load_run(run_dir, kinds.schema_of)
        where = kinds.kind_of(sections).model(run_dir, sections, "plain", dev, bf16)
        if where.before_load is not None:
            where.before_load()  # a latent run: its autoencoder must be the one it was trained with
        m = where.modality
        ref = stack(build_image_dataset(sections["data"], "train"))
        secs = train_seconds(run_dir)
        for ckpt in checkpoint_dirs(run_dir / "checkpoints"):
            step = int(ckpt.name.split("_")[1])
            trained = Trained(m, sections, load_ema_weights(ckpt, m.build_model(sections)), ckpt)
            t = time.perf_counter()
            x = generate(trained, args.n, sections["sample"], dev, bf16, seed=args.seed, batch=200, progress=False,
                         sampler_kw={"sampler": args.sampler, "steps": args.steps, "spacing": "karras"})
            per_image = (time.perf_counter() - t) / args.n
            m = digit_metrics(clf, x, ref)
            print(f"| {run_dir.name} | {step} | {secs.get(step, float('nan')):.0f} | {m['fd']:.2f} | "
                  f"{m['confidence']:.3f} | {m['coverage']:.2f} | {per_image:.4f} |", flush=True)


if __name__ == "__main__":
    main()
