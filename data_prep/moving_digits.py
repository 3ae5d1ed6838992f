"""Build a Moving-MNIST-style video set from scikit-learn's real handwritten digits.

    python -m data_prep.moving_digits --out data/moving_digits --n 1000 --frames 16 --size 32

Each clip shows 1 or 2 digits (--digits 1 | 2 | 1-2) gliding over a black size x size canvas at
constant velocity and bouncing off the walls; where digits overlap the brighter pixel wins (max).
The digits are scikit-learn's 8x8 scans rendered at --digit-size pixels by the image pipeline
(`build_image_dataset(ImageData(source="digits"))`: same rendering, same fixed split), so "test"
clips only use digits that the "train" clips never show. Positions are whole pixels: a digit keeps
its exact shape from frame to frame.

out/train/<digit>/clip_00000.mp4   --digits 1: class subfolder = the digit (clip i shows digit i % 10)
out/train/clip_00000.mp4           otherwise: unlabelled clips (the class is the folder's name)
out/test/...                       the same for the test clips
out/train.npy, out/test.npy        with --npy: uint8 (T, N, H, W), Moving-MNIST's mnist_test_seq.npy
                                   layout (the clips before video compression)
out/manifest.json                  options, and per clip: file, digit labels, load_digits() indices

Read it back with VideoData(layout="folder", root=out) (or layout="npy", root=out).
Deterministic: clip i of a split depends only on (--seed, split, i) and the options, so a larger --n
adds clips without changing the others. Idempotent: existing clips are kept (each is written to a
temporary name and renamed, so a killed run resumes where it stopped); a re-run with other options
into the same --out is refused.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from multidiff.data.image import ImageData, build_image_dataset
from multidiff.data.video import write_video
from multidiff.utils import atomic_path, write_text
from data_prep import PrepError, check_output_folder, run_stage

VERSION = 1
SPLITS = {"train": 0, "test": 1}



def bounce_paths(rng: np.random.Generator, k: int, frames: int, room: int, speed: tuple[float, float]) -> np.ndarray:
    """Top-left corners of k digits over `frames` frames, int [frames, k, 2] (y, x) in [0, room]:
    random start, direction and speed (pixels per frame); a wall reflects the motion."""
    pos = rng.uniform(0, room, size=(k, 2))
    angle = rng.uniform(0, 2 * np.pi, size=k)
    v = rng.uniform(*speed, size=k)[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    out = np.empty((frames, k, 2), dtype=np.int64)
    for t in range(frames):
        out[t] = np.rint(pos)
        pos = pos + v
        low, high = pos < 0, pos > room
        pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos)).clip(0, room)
        v = np.where(low | high, -v, v)
    return out


def make_clip(rng: np.random.Generator, digits: np.ndarray, picks, frames: int, size: int) -> np.ndarray:
    """uint8 [frames, size, size]: the digits images `digits[picks]` ([s, s] each) moving and bouncing."""
    s = digits.shape[-1]
    room = size - s
    paths = bounce_paths(rng, len(picks), frames, room, (0.5 * size / 16, size / 16))
    clip = np.zeros((frames, size, size), np.uint8)
    for t in range(frames):
        for d, (y, x) in zip(picks, paths[t]):
            np.maximum(clip[t, y:y + s, x:x + s], digits[d], out=clip[t, y:y + s, x:x + s])
    return clip


def plan(split: str, n: int, opts: dict, labels: list[int]) -> list[dict]:
    """Which digits each clip shows; clip i draws from its own generator (seed, split, i)."""
    by_class = [[j for j, y in enumerate(labels) if y == c] for c in range(10)]
    clips = []
    for i in range(n):
        rng = np.random.default_rng([opts["seed"], SPLITS[split], i])
        if opts["digits"] == "1":
            picks = [int(rng.choice(by_class[i % 10]))]  # balanced classes
        else:
            k = 2 if opts["digits"] == "2" else int(rng.integers(1, 3))
            picks = [int(j) for j in rng.integers(len(labels), size=k)]
        folder = f"{split}/{labels[picks[0]]}" if opts["digits"] == "1" else split
        clips.append({"file": f"{folder}/clip_{i:05d}.mp4", "picks": picks, "rng": rng})
    return clips


def build(out: Path, n: int = 1000, n_test: int | None = None, frames: int = 16, size: int = 32,
          digit_size: int | None = None, digits: str = "2", fps: float = 8, seed: int = 0, crf: int = 12,
          npy: bool = False, progress: bool = True) -> dict:
    n_test = max(1, n // 5) if n_test is None else n_test
    digit_size = digit_size or round(size * 28 / 64)  # Moving MNIST: 28 px digits on 64 px
    if digits not in ("1", "2", "1-2"):
        raise PrepError(f"--digits must be 1, 2 or 1-2, got {digits!r}")
    if n < 1 or n_test < 0 or frames < 1 or fps <= 0:
        raise PrepError(f"need --n >= 1, --n-test >= 0, --frames >= 1 and --fps > 0 (got {n}, {n_test}, {frames}, "
                        f"{fps})")
    if not 4 <= digit_size < size:
        raise PrepError(f"--digit-size must be at least 4 and smaller than --size ({size}), got {digit_size}")
    if digits == "1" and n < 10:
        raise PrepError(f"--digits 1 makes clip i show digit i % 10: give --n >= 10 so every class is there, got {n}")
    opts = dict(version=VERSION, frames=frames, size=size, digit_size=digit_size, digits=digits, fps=fps, seed=seed,
                crf=crf)
    check_output_folder(out, opts)
    stamp = out / "manifest.json"

    sources, plans = {}, {}
    for split, count in (("train", n), ("test", n_test)):
        ds = build_image_dataset(ImageData(source="digits", size=digit_size, channels=1), split)
        sources[split] = ds
        plans[split] = plan(split, count, opts, ds.labels)
    manifest = {"options": opts, "n": n, "n_test": n_test, "complete": False,
                "clips": {split: [{"file": c["file"], "labels": [sources[split].labels[j] for j in c["picks"]],
                                   "source_index": [sources[split].source_index[j] for j in c["picks"]]}
                                  for c in clips] for split, clips in plans.items()}}
    write_text(stamp, json.dumps(manifest, indent=1) + "\n")  # first: a killed run is recognised as ours

    written = skipped = 0
    for split, clips in plans.items():
        images = sources[split].images[:, 0].numpy()
        arr_path = out / f"{split}.npy"
        want_npy = npy and not _npy_ok(arr_path, (frames, len(clips), size, size))
        with _npy_writer(arr_path if want_npy else None, (frames, len(clips), size, size)) as arr:
            for i, c in enumerate(tqdm(clips, desc=f"moving digits ({split})", unit="clip",
                                       disable=not progress or len(clips) < 20)):
                path = out / c["file"]
                if path.is_file() and arr is None:
                    skipped += 1
                    continue
                clip = make_clip(c["rng"], images, c["picks"], frames, size)
                if arr is not None:
                    arr[:, i] = clip
                if path.is_file():
                    skipped += 1
                    continue
                x = torch.from_numpy(clip).float()[None] / 127.5 - 1
                write_video(x, path, fps=fps, crf=crf)
                written += 1
    manifest["complete"] = True
    write_text(stamp, json.dumps(manifest, indent=1) + "\n")
    return {"written": written, "skipped": skipped, "train": n, "test": n_test, "out": str(out)}


def _npy_ok(path: Path, shape) -> bool:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return a.dtype == np.uint8 and a.shape == tuple(shape)


@contextlib.contextmanager
def _npy_writer(path: Path | None, shape):
    """A memory-mapped uint8 array written under a temporary name and renamed when filled (or None)."""
    if path is None:
        yield None
        return
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        yield arr
        arr.flush()
        del arr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.moving_digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--n", type=int, default=1000, help="train clips (default 1000)")
    p.add_argument("--n-test", type=int, default=None, help="test clips (default n // 5)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=int, default=32, help="canvas size in pixels (default 32)")
    p.add_argument("--digit-size", type=int, default=None, help="digit size in pixels (default size * 28/64)")
    p.add_argument("--digits", default="2", help="digits per clip: 1 (labelled by class folder), 2, or 1-2")
    p.add_argument("--fps", type=float, default=8, help="frame rate written in the MP4s (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crf", type=int, default=12, help="H.264 quality, 0 = lossless .. 51 (default 12)")
    p.add_argument("--npy", action="store_true", help="also write train.npy / test.npy, uint8 (T, N, H, W)")
    a = p.parse_args(argv)
    r, status = run_stage(build, Path(a.out), a.n, a.n_test, a.frames, a.size, a.digit_size, a.digits, a.fps,
                          a.seed, a.crf, a.npy)
    if status:
        return status
    print(f"moving digits: {r['written']} clip(s) written, {r['skipped']} already present, in {r['out']} "
          f"(train {r['train']}, test {r['test']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
