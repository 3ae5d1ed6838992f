"""Video datasets for diffusion training: folders of video files, UCF-101, Moving-MNIST-style .npy arrays.

Every item is (clip, label): clip float32 [C, frames, size, size] in [-1, 1], label an int.

Frames: a video is decoded with PyAV, thinned to every `frame_stride`-th frame, or resampled to `fps`
(at times t0, t0 + 1/fps, ... up to the end of the last frame, the frame with the nearest timestamp,
like ffmpeg's fps filter: robust to the 1/100 s jitter of GIF delays), and each frame is resized by the image module's rule
(largest centered square, antialiased bicubic; grayscale = Pillow's "L" luma), so a frame of a video
and the same picture as a PNG give the same tensor.

Clip contract (what the trainer relies on):
  * ds[i] never draws randomness. start="first": the clip at frame 0; "uniform": item i is clip k of
    video v (clips_per_video evenly spaced clips, first to last); "random": the video's middle clip
    (a fair fixed view for evaluation).
  * ds.clip(i, generator) (and ds[(i, seed)], the same drawn from Generator().manual_seed(seed), which
    a DataLoader batch sampler can yield) draws the start uniformly from the generator when
    start="random"; with the other starts it is ds[i]. So a trainer seeding per (seed, step, item)
    replays the same clips after a resume.
  * A video with fewer than `frames` frames (after striding) is an error naming the file and both lengths,
    is skipped under on_error="skip", or, with pad_short=true, is padded by holding its last frame
    (looping would insert a cut that a model learns as motion).

Cache (cache=true): each video's decoded, strided, resized frames are stored once as uint8 [T, C, H, W]
.npy under cache_dir, named <stem>-<key>-<stamp>.npy: key = sha1 of (absolute path, size, channels,
frame_stride, fps, format version), stamp = sha1 of the file's (byte size, mtime_ns). Editing a video
changes its stamp: the next build decodes it again and removes the stale entry. A clip is read from the
cache through a memory map (only its frames). cache=false decodes each video once at build time (to check
it and count frames) and again, up to the clip's end, in __getitem__.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..utils import atomic_path
from .checks import check_count, warn_skipped
from .image import _hash, _in_test, _walk
from .video_read import (VIDEO_EXTENSIONS, VideoDataError, _decode, _reason, _resize, _to_float,  # noqa: F401
                         read_video)
from .video_write import _CODECS, H264, _has_encoder, save_video_grid, write_gif, write_video  # noqa: F401

LAYOUTS = ("folder", "ucf101", "npy")
STARTS = ("random", "uniform", "first")
ON_ERROR = ("raise", "skip")
UCF101_VIDEOS_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar"
UCF101_SPLITS_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
CACHE_VERSION = 1


@dataclass
class VideoData:
    """The [data] section of a video recipe's config.toml."""
    layout: str = "folder"       # "folder" | "ucf101" | "npy" (see build_video_dataset)
    root: str = ""
    frames: int = 16             # frames per clip
    frame_stride: int = 1        # take every k-th frame ...
    fps: float = 0.0             # ... or resample to this frame rate (0 = use frame_stride)
    size: int = 64               # frames are size x size (shorter side to size, center crop)
    channels: int = 1            # 1 = grayscale, 3 = RGB
    start: str = "random"        # "random" | "uniform" | "first": which clip of a video (module docstring)
    clips_per_video: int = 1     # for start = "uniform"
    pad_short: bool = False      # hold the last frame of videos shorter than `frames` instead of failing
    cache: bool = True           # keep decoded + resized videos as uint8 .npy under cache_dir
    cache_dir: str = ""          # default: ~/.cache/multidiff/video
    on_error: str = "raise"      # "raise": first bad video stops the build; "skip": skip it, warn with a summary
    ucf_split: int = 1           # UCF-101 official split 1..3
    max_items: int = 0           # videos (not clips); 0 = all


# ---------------------------------------------------------------------------------------- dataset

class VideoDataset(torch.utils.data.Dataset):
    """ds[i] -> (clip float32 [C, frames, size, size] in [-1, 1], label int); see the module docstring
    for the clip contract. `labels[i]` is item i's label without decoding; `video_of[i]` its video;
    `lengths[v]` video v's frame count after stride/fps; `paths[v]` its file (or "file.npy#n");
    `skipped` lists (path, reason) of the videos left out under on_error = "skip"."""

    def __init__(self, cfg: VideoData, sources, lengths, labels, class_names, skipped=(), cache_files=None):
        self.cfg = cfg
        self.paths = [str(s) for s in sources]
        self.lengths = [int(n) for n in lengths]
        self.class_names = list(class_names)
        self.skipped = list(skipped)
        self._cache_files = cache_files  # per video: .npy path, or None = decode the file each time
        k = cfg.clips_per_video if cfg.start == "uniform" else 1
        self.video_of = [v for v in range(len(self.paths)) for _ in range(k)]
        self._clip_no = [c for _ in range(len(self.paths)) for c in range(k)]
        self.labels = [int(labels[v]) for v in self.video_of]
        self._npy = None  # memory map of an npy layout, opened per process (never pickled to workers)
        self._npy_file, self._npy_index = None, []

    # the Trainer then asks for (index, seed) items: a random start per (seed, step, position)
    seeded_items = True

    def __getstate__(self):
        return {**self.__dict__, "_npy": None}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.video_of)

    def __getitem__(self, i):
        if isinstance(i, tuple):  # (index, seed): a random start drawn from that seed
            i, seed = i
            return self.clip(i, torch.Generator().manual_seed(int(seed)))
        return self.clip(i)

    def num_starts(self, i: int) -> int:
        """How many distinct clip starts item i's video has (1 for a padded short video)."""
        return max(1, self.lengths[self.video_of[self._index(i)]] - self.cfg.frames + 1)

    def start(self, i: int, generator: torch.Generator | None = None) -> int:
        """The first frame of item i's clip (drawn from `generator` only when start = "random")."""
        i = self._index(i)
        n = self.num_starts(i)
        if self.cfg.start == "first":
            return 0
        if self.cfg.start == "random" and generator is not None:
            return int(torch.randint(n, (1,), generator=generator))
        k = self.cfg.clips_per_video if self.cfg.start == "uniform" else 1
        return (n - 1) // 2 if k == 1 else round(self._clip_no[i] * (n - 1) / (k - 1))

    def clip(self, i: int, generator: torch.Generator | None = None):
        i = self._index(i)
        return self.clip_at(i, self.start(i, generator)), self.labels[i]

    def clip_at(self, i: int, start: int) -> torch.Tensor:
        """Item i's video from frame `start`: float32 [C, frames, size, size]."""
        v, f = self.video_of[self._index(i)], self.cfg.frames
        if not 0 <= start < self.num_starts(i):
            raise IndexError(f"clip start {start} out of range: '{self.paths[v]}' has {self.num_starts(i)} starts")
        x = self.video_frames(v, stop=start + f)[start:start + f]
        if len(x) < f:  # pad_short: hold the last frame
            x = np.concatenate([x, np.repeat(x[-1:], f - len(x), axis=0)])
        return _to_float(x)

    def video_frames(self, v: int, stop: int | None = None) -> np.ndarray:
        """Video v's frames (after stride/fps and resizing) as uint8 [T, C, size, size]; `stop` lets a
        decode end early."""
        cfg = self.cfg
        if cfg.layout == "npy":
            return self._npy_frames(v)
        cached = self._cache_files[v] if self._cache_files else None
        if cached is not None:
            try:
                return np.load(cached, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                pass  # cache entry deleted or damaged since the build: decode the source instead
        try:
            return _decode(self.paths[v], cfg.size, cfg.channels, cfg.frame_stride, cfg.fps, stop)
        except Exception as e:
            raise VideoDataError(f"cannot decode video '{self.paths[v]}' (it decoded when the dataset was built): "
                                 f"{_reason(e)}. Remove the file and rebuild the dataset") from None

    def _npy_frames(self, v: int) -> np.ndarray:
        if self._npy is None:
            self._npy = np.load(self._npy_file, mmap_mode="r", allow_pickle=False)
        seq = np.asarray(self._npy[::self.cfg.frame_stride, self._npy_index[v]])  # [T, H, W]
        size, c = self.cfg.size, self.cfg.channels
        if seq.shape[1:] != (size, size):
            seq = np.stack([_resize(Image.fromarray(f), size, 1)[0] for f in seq])
        return np.repeat(seq[:, None], c, axis=1)

    def _index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} clips")
        return i % len(self)


def build_video_dataset(cfg: VideoData, split: str = "train", cache_dir=None) -> VideoDataset:
    """Layouts (data.root):
      folder: video files (VIDEO_EXTENSIONS), directly in root (one class) or in class subfolders (sorted
              names = labels). root/train and root/test, if both exist, are the splits; otherwise "test" is
              the ~10% of files whose relative path hashes to 0 mod 10 (the image module's rule).
      ucf101: root holds UCF-101/<Class>/*.avi and splits/{train,test}{k}.txt + splits/classes.txt, written
              by `python -m data_prep.ucf101 --root ROOT` from the official ucfTrainTestlist/.
      npy:    a uint8 array (T, N, H, W) like Moving-MNIST's mnist_test_seq.npy (label 0, no timestamps:
              use frame_stride): root is a folder with train.npy and test.npy, or one .npy file whose last
              10% of sequences are "test".
    max_items keeps that many videos (folder/ucf101: spread over the classes in hash order; npy: the first).
    cache_dir (argument) overrides data.cache_dir."""
    _check_config(cfg, split)
    if cfg.layout == "npy":
        return _npy_dataset(cfg, split)
    files, labels, class_names, base = (_folder_files if cfg.layout == "folder" else _ucf101_files)(cfg, split)
    if cfg.max_items and len(files) > cfg.max_items:
        keep = sorted(sorted(range(len(files)), key=lambda j: (_hash(files[j]), files[j]))[:cfg.max_items])
        files, labels = [files[j] for j in keep], [labels[j] for j in keep]
    cdir = Path(cache_dir or cfg.cache_dir or Path.home() / ".cache" / "multidiff" / "video").expanduser()
    lengths, caches, good, skipped = _scan(cfg, [base / f for f in files], cdir if cfg.cache else None)
    if not good:
        raise VideoDataError(f"all {len(skipped)} videos in '{base}' are unusable, e.g. '{skipped[0][0]}' "
                             f"({skipped[0][1]})")
    return VideoDataset(cfg, [base / files[j] for j in good], [lengths[j] for j in good],
                        [labels[j] for j in good], class_names, skipped,
                        [caches[j] for j in good] if cfg.cache else None)


def _check_config(cfg: VideoData, split: str) -> None:
    def bad(msg):
        raise VideoDataError(f"[data] {msg}")

    if cfg.layout not in LAYOUTS:
        bad(f"unknown layout {cfg.layout!r}; choose one of: {', '.join(LAYOUTS)}")
    for name, low in (("frames", 1), ("frame_stride", 1), ("size", 1), ("clips_per_video", 1), ("max_items", 0)):
        check_count(cfg, name, low, VideoDataError)
    if isinstance(cfg.fps, bool) or not isinstance(cfg.fps, (int, float)) or not 0 <= cfg.fps < math.inf:
        bad(f"fps must be a number >= 0 (0 = use frame_stride), got {cfg.fps!r}")
    if cfg.fps > 0 and cfg.frame_stride != 1:
        bad(f"set fps ({cfg.fps}) or frame_stride ({cfg.frame_stride}), not both: fps resamples by time, "
            f"frame_stride keeps every k-th frame")
    if cfg.fps > 0 and cfg.layout == "npy":
        bad("an npy array has no timestamps: set fps = 0 and use frame_stride")
    if cfg.channels not in (1, 3):
        bad(f"channels must be 1 (grayscale) or 3 (RGB), got {cfg.channels!r}")
    if cfg.start not in STARTS:
        bad(f"start must be one of: {', '.join(STARTS)}; got {cfg.start!r}")
    if cfg.on_error not in ON_ERROR:
        bad(f"on_error must be one of: {', '.join(ON_ERROR)}; got {cfg.on_error!r}")
    for name in ("cache", "pad_short"):
        if not isinstance(getattr(cfg, name), bool):
            bad(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.ucf_split not in (1, 2, 3) or isinstance(cfg.ucf_split, bool):
        bad(f"ucf_split must be 1, 2 or 3 (UCF-101's official splits), got {cfg.ucf_split!r}")
    if not cfg.root:
        bad(f'root is empty: set data.root (layout = "{cfg.layout}": see build_video_dataset)')
    if split not in ("train", "test"):
        raise VideoDataError(f"split must be 'train' or 'test', got {split!r}")


# ---------------------------------------------------------------------------------------- scanning + cache

def _cache_name(cache_dir: Path, path: Path, cfg: VideoData) -> tuple[Path, str]:
    key = json.dumps([str(path.resolve()), cfg.size, cfg.channels, cfg.frame_stride, float(cfg.fps), CACHE_VERSION])
    key = hashlib.sha1(key.encode()).hexdigest()[:16]
    st = path.stat()
    stamp = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:40]
    return cache_dir / f"{stem}-{key}-{stamp}.npy", f"{stem}-{key}-"


def _cached_length(file: Path, cfg: VideoData) -> int | None:
    try:
        a = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = a.dtype == np.uint8 and a.ndim == 4 and a.shape[1:] == (cfg.channels, cfg.size, cfg.size) and len(a)
    return len(a) if ok else None


def _probe(path: Path, cfg: VideoData, cache_dir: Path | None):
    """(frame count, cache file or None, problem or None) for one video; decodes unless cached."""
    try:
        cache = prefix = None
        if cache_dir is not None:
            cache, prefix = _cache_name(cache_dir, path, cfg)
            n = _cached_length(cache, cfg)
            if n is not None:
                return n, cache, None
        x = _decode(path, cfg.size, cfg.channels, cfg.frame_stride, cfg.fps)
        if cache is not None:
            for old in cache_dir.glob(prefix + "*.npy"):  # stale entries of an edited video
                if old != cache:
                    old.unlink(missing_ok=True)
            with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                np.save(f, x)
        return len(x), cache, None
    except OSError as e:
        if cache_dir is not None and not os.access(cache_dir, os.W_OK):
            raise VideoDataError(f"cannot write the video cache in '{cache_dir}': {e}. Set data.cache_dir to a "
                                 f"writable folder, or data.cache = false") from None
        return 0, None, _reason(e)
    except Exception as e:
        return 0, None, _reason(e)


def _scan(cfg: VideoData, paths: list[Path], cache_dir: Path | None):
    """Probe every video in order; returns (lengths, cache files, indices of good videos, skipped)."""
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VideoDataError(f"cannot create the video cache folder '{cache_dir}': {e}. Set data.cache_dir "
                                 f"to a writable folder, or data.cache = false") from None
    lengths, caches, good, skipped = [0] * len(paths), [None] * len(paths), [], []
    short_fix = (f"Set data.pad_short = true to hold its last frame, lower data.frames"
                 f"{' or data.frame_stride' if cfg.frame_stride > 1 else ''}, or set data.on_error = \"skip\"")
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(paths), desc="reading videos", unit="video", disable=len(paths) < 50) as bar:
        for chunk in range(0, len(paths), 64):  # in chunks: an error stops the build without decoding the rest
            results = pool.map(lambda p: _probe(p, cfg, cache_dir), paths[chunk:chunk + 64])
            for j, (n, cache, problem) in enumerate(results, chunk):
                bar.update()
                lengths[j], caches[j] = n, cache
                if problem is None and n < cfg.frames and not cfg.pad_short:
                    how = (f"after frame_stride = {cfg.frame_stride}" if cfg.frame_stride > 1 else
                           f"at fps = {cfg.fps:g}" if cfg.fps > 0 else "")
                    problem = f"it has {n} frames{' ' + how if how else ''}, fewer than data.frames = {cfg.frames}"
                if problem is None:
                    good.append(j)
                elif cfg.on_error == "raise":
                    fix = short_fix if "fewer than data.frames" in problem else \
                        'Remove it (or re-encode it) or set data.on_error = "skip"'
                    raise VideoDataError(f"cannot use video '{paths[j]}': {problem}. {fix}")
                else:
                    skipped.append((str(paths[j]), problem))
    warn_skipped(skipped, f"of {len(paths)} videos", stacklevel=4)
    return lengths, caches, good, skipped


# ---------------------------------------------------------------------------------------- layouts

def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def _class_dirs(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(_is_video(p) for p in _walk(d)))


def _folder_files(cfg: VideoData, split: str):
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise VideoDataError(f"video folder '{root}' does not exist or is not a folder: set data.root to it")
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / split if split_dirs else root
    names = sorted(set(_class_dirs(root / "train")) | set(_class_dirs(root / "test"))) if split_dirs \
        else _class_dirs(root)
    loose = sorted(p.name for p in base.iterdir() if p.is_file() and _is_video(p)) if base.is_dir() else []
    present = [c for c in names if (base / c).is_dir()]
    if loose and present:
        raise VideoDataError(f"'{base}' mixes {len(loose)} loose videos (e.g. '{loose[0]}') with class subfolders "
                             f"({', '.join(present[:5])}): move the loose videos into a subfolder")
    if present:
        files = sorted((p.relative_to(base).as_posix(), y) for y, c in enumerate(names) if (base / c).is_dir()
                       for p in _walk(base / c) if _is_video(p))
    else:
        files = [(f, 0) for f in loose]
    if not files:
        raise VideoDataError(f"no videos in '{base}': the folder layout reads {', '.join(VIDEO_EXTENSIONS)} files, "
                             f"directly in the folder (one class) or in class subfolders")
    if not split_dirs:
        total = len(files)
        files = [(f, y) for f, y in files if _in_test(f) == (split == "test")]
        if not files:
            raise VideoDataError(f"none of the {total} videos in '{root}' falls in the ~10% {split} split chosen "
                                 f"by hashing file paths: add videos, or make train/ and test/ subfolders")
    class_names = names or [root.resolve().name or "videos"]
    return [f for f, _ in files], [y for _, y in files], class_names, base


def ucf101_help(root) -> str:
    return (f"Download the videos ({UCF101_VIDEOS_URL}, 6.5 GB) and the official splits ({UCF101_SPLITS_URL}) "
            f"and extract both into '{root}', so that it holds UCF-101/<Class>/v_<Class>_gXX_cYY.avi and "
            f"ucfTrainTestlist/{{classInd.txt, trainlist01..03.txt, testlist01..03.txt}}; then run "
            f"`python -m data_prep.ucf101 --root {root}`")


def _ucf101_files(cfg: VideoData, split: str):
    root = Path(cfg.root).expanduser()
    lst, classes = root / "splits" / f"{split}{cfg.ucf_split}.txt", root / "splits" / "classes.txt"
    if not (root / "UCF-101").is_dir():
        raise VideoDataError(f"UCF-101 not found: '{root / 'UCF-101'}' is missing. {ucf101_help(root)}")
    if not (lst.is_file() and classes.is_file()):
        raise VideoDataError(f"'{lst}' is missing: run `python -m data_prep.ucf101 --root {root}` (it checks the "
                             f"download and writes the split lists this layout reads)")
    class_names = [c for c in classes.read_text().split() if c]
    files, labels = [], []
    for no, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit() or int(parts[1]) >= len(class_names):
            raise VideoDataError(f"'{lst}' line {no} is not '<path>\\t<label 0..{len(class_names) - 1}>': {line!r}. "
                                 f"Re-run `python -m data_prep.ucf101 --root {root}`")
        files.append(parts[0])
        labels.append(int(parts[1]))
    if not files:
        raise VideoDataError(f"'{lst}' lists no videos: re-run `python -m data_prep.ucf101 --root {root}`")
    return files, labels, class_names, root


def _npy_dataset(cfg: VideoData, split: str) -> VideoDataset:
    root = Path(cfg.root).expanduser()
    if root.is_dir():
        file, whole = root / f"{split}.npy", False
        if not file.is_file():
            raise VideoDataError(f"'{file}' not found: the npy layout reads root/train.npy and root/test.npy, or "
                                 f"one .npy file (set data.root to it)")
    elif root.is_file():
        file, whole = root, True
    else:
        raise VideoDataError(f"'{root}' not found: set data.root to a uint8 (T, N, H, W) .npy file such as "
                             f"Moving-MNIST's mnist_test_seq.npy, or a folder with train.npy and test.npy")
    try:
        a = np.load(file, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise VideoDataError(f"cannot read '{file}' as a .npy array: {e}") from None
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[2] < 1 or a.shape[3] < 1:
        raise VideoDataError(f"'{file}' holds {a.dtype} {tuple(a.shape)}; the npy layout needs uint8 "
                             f"(T frames, N sequences, H, W) like mnist_test_seq.npy (20, 10000, 64, 64)")
    t, n = a.shape[0], a.shape[1]
    idx = list(range(n))
    if whole:
        n_test = max(1, n // 10) if n > 1 else 0
        idx = idx[n - n_test:] if split == "test" else idx[:n - n_test]
    if cfg.max_items:
        idx = idx[:cfg.max_items]
    length = len(range(0, t, cfg.frame_stride))
    if not idx:
        raise VideoDataError(f"'{file}' has no {split} sequences ({n} in all)")
    if length < cfg.frames and not cfg.pad_short:
        raise VideoDataError(f"the sequences in '{file}' have {length} frames"
                             f"{f' after frame_stride = {cfg.frame_stride}' if cfg.frame_stride > 1 else ''}, "
                             f"fewer than data.frames = {cfg.frames}: lower data.frames or set data.pad_short = true")
    name = file.stem if whole else root.resolve().name
    ds = VideoDataset(cfg, [f"{file}#{i}" for i in idx], [length] * len(idx), [0] * len(idx), [name])
    ds._npy_file, ds._npy_index = str(file), idx
    return ds
