"""Turn a folder of your own video clips into the folder layout the video recipes read.

    python -m data_prep.videos --src my_clips/ --out data/my_videos --size 64 --frames 16 [--fps 8]

--src holds video files (.mp4 .avi .webm .gif .mkv .mov .m4v), either directly (one class) or in
class subfolders (the folder names are the labels, sorted). Every video is decoded once, checked
(unreadable, empty or shorter than --frames: reported and left out, never a silent gap), resampled to
--fps (0: its own rate), cut into consecutive clips of --frames frames (at most --clips-per-video,
0 = all), each frame made --size x --size by the image rule (largest centered square, antialiased
bicubic), and written as H.264:

out/train/<class>/<video>_c000.mp4     class subfolders when --src has them, else out/train/<video>_c000.mp4
out/test/...                           whole source videos go to test (~--test-share of them, chosen by a hash
                                       of their path: deterministic, and no clip of a test video is in train)
out/manifest.json                      options, classes, per source video: its split, clips, or why it was left out

Read it with [data] layout = "folder", root = out, size = --size, frames <= --frames (a recipe can
also run this itself: [prep] build = "videos", source = "my_clips/"). Idempotent: clips already
written are kept (each is written to a temporary name and renamed); other options into the same --out
are refused.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import av
import numpy as np
from tqdm.auto import tqdm

from multidiff.data.video_read import VIDEO_EXTENSIONS, _decode, _reason, _to_float
from multidiff.data.video_write import write_video
from multidiff.utils import write_text
from data_prep import PrepError, check_output_folder, run_stage

VERSION = 1


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def find_videos(src: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """([(path relative to src, label)], class names): class subfolders, or loose videos (one class)."""
    if not src.is_dir():
        raise PrepError(f"--src '{src}' is not a folder: give the folder that holds your video clips")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and any(_is_video(p) for p in d.rglob("*")))
    loose = sorted(p.name for p in src.iterdir() if _is_video(p))
    if classes and loose:
        raise PrepError(f"'{src}' mixes {len(loose)} loose videos (e.g. '{loose[0]}') with class subfolders "
                        f"({', '.join(classes[:5])}): move the loose videos into a subfolder")
    if classes:
        files = [(p.relative_to(src).as_posix(), y) for y, c in enumerate(classes)
                 for p in sorted((src / c).rglob("*")) if _is_video(p)]
    else:
        files = [(f, 0) for f in loose]
    if not files:
        raise PrepError(f"no videos in '{src}': put {', '.join(VIDEO_EXTENSIONS)} files in it, directly (one class) "
                        "or in one subfolder per class")
    return files, classes


def split_of(rel: str, test_share: float) -> str:
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) / 0x100000000
    return "test" if h < test_share else "train"


def _rate(path: Path) -> float:
    with av.open(str(path), metadata_errors="ignore") as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 0) or 25.0


def build(src, out, size: int = 64, frames: int = 16, fps: float = 0.0, channels: int = 3,
          clips_per_video: int = 0, test_share: float = 0.1, crf: int = 18, progress: bool = True) -> dict:
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if size < 8 or frames < 1 or fps < 0 or channels not in (1, 3) or clips_per_video < 0 or not 0 <= test_share < 1:
        raise PrepError(f"need --size >= 8, --frames >= 1, --fps >= 0, --channels 1 or 3, --clips-per-video >= 0 and "
                        f"0 <= --test-share < 1 (got {size}, {frames}, {fps}, {channels}, {clips_per_video}, "
                        f"{test_share})")
    files, classes = find_videos(src)
    opts = dict(version=VERSION, src=str(src.resolve()), size=size, frames=frames, fps=fps, channels=channels,
                clips_per_video=clips_per_video, test_share=test_share, crf=crf)
    check_output_folder(out, opts)
    stamp = out / "manifest.json"

    splits = {rel: split_of(rel, test_share) for rel, _ in files}
    if len(files) > 1:  # every split gets a video (tiny folders)
        order = sorted(splits, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
        if test_share > 0 and "test" not in splits.values():
            splits[order[0]] = "test"
        if "train" not in splits.values():
            splits[order[-1]] = "train"
    manifest = {"options": opts, "classes": classes, "complete": False, "videos": {}}
    write_text(stamp, json.dumps(manifest, indent=1) + "\n")
    written = kept = 0
    for rel, y in tqdm(files, desc="videos", unit="video", disable=not progress or len(files) < 10):
        path, split = src / rel, splits[rel]
        entry = manifest["videos"][rel] = {"split": split, "label": y, "clips": []}
        try:
            x = _decode(path, size, channels, 1, fps)                   # uint8 [T, C, size, size]
            rate = fps or _rate(path)
        except Exception as e:
            entry["left_out"] = _reason(e)
            continue
        n = len(x) // frames
        if n == 0:
            at = f" at {fps:g} fps" if fps else ""
            entry["left_out"] = f"it has {len(x)} frames{at}, fewer than --frames {frames}"
            continue
        folder = out / split / (classes[y] if classes else "")
        stem = Path(rel).with_suffix("").as_posix().replace("/", "_")
        for k in range(min(n, clips_per_video or n)):
            target = folder / f"{stem}_c{k:03d}.mp4"
            entry["clips"].append(target.relative_to(out).as_posix())
            if target.is_file():
                kept += 1
                continue
            write_video(_to_float(np.ascontiguousarray(x[k * frames:(k + 1) * frames])), target, fps=rate, crf=crf)
            written += 1
    left = {rel: e["left_out"] for rel, e in manifest["videos"].items() if "left_out" in e}
    counts = {s: sum(len(e["clips"]) for e in manifest["videos"].values() if e["split"] == s)
              for s in ("train", "test")}
    if not counts["train"]:
        raise PrepError(f"no usable training clips from '{src}'" + (f": e.g. '{next(iter(left))}': "
                                                                     f"{next(iter(left.values()))}" if left else ""))
    manifest.update(complete=True, counts=counts)
    write_text(stamp, json.dumps(manifest, indent=1) + "\n")
    return {"written": written, "kept": kept, "videos": len(files), "left_out": left, "classes": classes,
            "out": str(out), **counts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.videos", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="folder of video files, or of one subfolder of videos per class")
    p.add_argument("--out", required=True, help="folder to write (the recipe's data.root)")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels, square (default 64)")
    p.add_argument("--frames", type=int, default=16, help="frames per written clip (default 16)")
    p.add_argument("--fps", type=float, default=0.0, help="resample to this frame rate (default 0: the video's own)")
    p.add_argument("--channels", type=int, default=3, help="3 = RGB (default), 1 = grayscale")
    p.add_argument("--clips-per-video", type=int, default=0, help="at most this many clips per video (0 = all)")
    p.add_argument("--test-share", type=float, default=0.1, help="share of source videos held out (default 0.1)")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality, 0 = lossless .. 51 (default 18)")
    a = p.parse_args(argv)
    r, status = run_stage(build, a.src, a.out, a.size, a.frames, a.fps, a.channels, a.clips_per_video,
                          a.test_share, a.crf)
    if status:
        return status
    print(f"{r['videos']} videos -> {r['train']} train / {r['test']} test clips in {r['out']} "
          f"({r['written']} written, {r['kept']} already there; "
          f"{len(r['classes']) or 1} class{'es' if len(r['classes']) > 1 else ''})")
    for rel, why in list(r["left_out"].items())[:10]:
        print(f"  left out: {rel}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
