"""Image datasets for diffusion training: scikit-learn's digits, a folder of images, CIFAR-10.

Every source yields (x, y): x float32 [C, size, size] in [-1, 1], y an int label. Items are
deterministic; random augmentation (horizontal flips) happens per batch in the trainer through
`random_hflip`, so a dataset index always means the same tensor.

Resize rule (folder images, `load_image`, and `masks.load_mask` alike): the largest centered square
of the picture is resized to size x size with an antialiased bicubic filter, which is the same as
"shorter side to `size`, then center crop" without rounding the long side. A mask and an image of
the same picture loaded at the same size therefore line up pixel for pixel.
"""
from __future__ import annotations

import hashlib
import math
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from .checks import warn_skipped
from .cifar10 import _cifar10
from .image_base import (CIFAR10_CLASSES, CIFAR10_URL, ON_ERROR, SOURCES, ImageData, ImageDataError,  # noqa: F401
                         ImageDataset, _InMemory)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Only these decoders may run: a file named x.png that is really e.g. an EPS would otherwise make
# Pillow start Ghostscript on it.
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


class _Folder(ImageDataset):
    """Files decoded lazily in __getitem__ (already checked at build time)."""

    def __init__(self, paths, labels, class_names, size, channels, skipped):
        super().__init__(labels, class_names, skipped)
        self.paths, self.size, self.channels = [str(p) for p in paths], size, channels

    def _image(self, i):
        try:
            return _decode(self.paths[i], self.size, self.channels)
        except Exception as e:
            raise ImageDataError(f"cannot decode image '{self.paths[i]}' (its header looked fine when the dataset "
                                 f"was built): {_reason(e)}. Remove the file and rebuild the dataset") from None


def build_image_dataset(cfg: ImageData, split: str = "train") -> ImageDataset:
    _check_config(cfg, split)
    build = {"digits": _digits, "folder": _folder, "cifar10": _cifar10}[cfg.source]
    return build(cfg, split)


def _check_config(cfg: ImageData, split: str) -> None:
    def bad(msg):
        raise ImageDataError(f"[data] {msg}")
    if cfg.source not in SOURCES:
        bad(f"unknown source {cfg.source!r}; choose one of: {', '.join(SOURCES)}")
    if isinstance(cfg.size, bool) or not isinstance(cfg.size, int) or cfg.size < 1:
        bad(f"size must be a positive integer (the output is size x size), got {cfg.size!r}")
    if cfg.channels not in (1, 3):
        bad(f"channels must be 1 (grayscale) or 3 (RGB), got {cfg.channels!r}")
    if cfg.on_error not in ON_ERROR:
        bad(f"on_error must be one of: {', '.join(ON_ERROR)}; got {cfg.on_error!r}")
    if isinstance(cfg.max_items, bool) or not isinstance(cfg.max_items, int) or cfg.max_items < 0:
        bad(f"max_items must be an integer >= 0 (0 = all), got {cfg.max_items!r}")
    if split not in ("train", "test"):
        raise ImageDataError(f"split must be 'train' or 'test', got {split!r}")


# ---------------------------------------------------------------------------------------- digits

def _digits(cfg: ImageData, split: str) -> ImageDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16, white ink on black), labels 0..9.

    Split, fixed: within each class, in load_digits() order, every 5th sample (the 5th, 10th, ...)
    is "test" (355 images, 19.8%), the rest "train" (1,442). max_items keeps the first ones of the split.

    Rendering: the digit gets a 1-pixel black margin (10x10, like MNIST's margin: strokes no longer
    touch the border), is upsampled with bicubic interpolation, then a smoothstep contrast curve
    turns the blur of a 5x-and-more upsampling back into pen strokes with soft edges.
    """
    from sklearn.datasets import load_digits  # here, not at the top: only this source needs scikit-learn

    d = load_digits()
    labels = torch.from_numpy(d.target).long()
    rank = torch.empty_like(labels)  # position of each sample within its class
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    keep = (rank % 5 == 4) if split == "test" else (rank % 5 != 4)
    idx = keep.nonzero().flatten()
    if cfg.max_items:
        idx = idx[:cfg.max_items]
    small = torch.from_numpy(d.images).float()[idx, None] / 16
    images = torch.cat([_render_digits(chunk, cfg.size) for chunk in small.split(256)])
    return _InMemory(images, labels[idx].tolist(), [str(c) for c in range(10)], cfg.size, cfg.channels, idx)


def _render_digits(x: torch.Tensor, size: int) -> torch.Tensor:
    x = F.pad(x, (1, 1, 1, 1))
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    t = ((x - 0.1) / 0.7).clamp(0, 1)
    x = t * t * (3 - 2 * t)
    return (x * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------- folder

def _folder(cfg: ImageData, split: str) -> ImageDataset:
    """A folder of .png/.jpg/.jpeg/.webp/.bmp files (hidden files and other extensions are ignored).

    Labels: images directly in root are one class (named after the folder); otherwise each
    subfolder is a class (sorted names; images found at any depth below it).
    Split: if root has both train/ and test/ subfolders, those are the splits. Otherwise "test" is
    the ~10% of files whose relative path hashes to 0 mod 10 (sha1), "train" the rest: adding files
    never moves an existing file across the split.
    max_items picks a subset spread over the classes (files in hash order), then sorts it.
    Files are checked at build time from their headers and structure (PNG chunk CRCs, JPEG end
    marker, WebP RIFF size) without decoding pixels, and decoded in __getitem__.
    """
    if not cfg.root:
        raise ImageDataError('[data] root is empty: set data.root to the folder of images (source = "folder")')
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ImageDataError(f"image folder '{root}' does not exist or is not a folder: set data.root to it")
    if (root / "train").is_dir() and (root / "test").is_dir():
        base, hashed = root / split, False
        names = sorted(set(_class_dirs(root / "train")) | set(_class_dirs(root / "test")))
    else:
        base, hashed = root, True
        names = _class_dirs(root)
    files, ignored = _list_images(base, names)
    class_names = names or [root.resolve().name or "images"]
    if not files:
        raise ImageDataError(
            f"no images in '{base}': the folder source reads {', '.join(IMAGE_EXTENSIONS)} files, directly in "
            f"the folder (one class) or in class subfolders ({ignored} other files ignored: hidden or other extensions)")
    if hashed:
        total = len(files)
        files = [(rel, y) for rel, y in files if _in_test(rel) == (split == "test")]
        if not files:
            raise ImageDataError(f"none of the {total} images in '{root}' falls in the ~10% {split} split chosen by "
                                 f"hashing file paths: add images, or make train/ and test/ subfolders")
    order = sorted(files, key=lambda f: (_hash(f[0]), f[0])) if cfg.max_items else files
    good, skipped = _validate(base, order, cfg)
    good.sort()
    return _Folder([base / rel for rel, _ in good], [y for _, y in good], class_names, cfg.size, cfg.channels, skipped)


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def _walk(folder: Path):
    """Every visible file below `folder`, skipping hidden folders (.git, .ipynb_checkpoints)."""
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(dirpath, n) for n in names)


def _class_dirs(base: Path) -> list[str]:
    """Subfolders that hold at least one image somewhere below them."""
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if d.is_dir() and _visible(d)
                  and any(_visible(p) and _is_image(p) for p in _walk(d)))


def _list_images(base: Path, class_names: list[str]):
    """[(relative posix path, label)] sorted, and how many files were ignored."""
    loose = [p for p in base.iterdir() if p.is_file()] if base.is_dir() else []
    ignored = sum(not (_visible(p) and _is_image(p)) for p in loose)
    loose = [p for p in loose if _visible(p) and _is_image(p)]
    present = [c for c in class_names if (base / c).is_dir()]
    if loose and present:
        raise ImageDataError(
            f"'{base}' mixes {len(loose)} loose images (e.g. '{loose[0].name}') with class subfolders "
            f"({', '.join(present[:5])}): move the loose images into a subfolder, or point data.root at one folder")
    if not present:
        return sorted((p.name, 0) for p in loose), ignored
    files = []
    for label, c in enumerate(class_names):
        for p in _walk(base / c):
            if _visible(p) and _is_image(p):
                files.append((p.relative_to(base).as_posix(), label))
            else:
                ignored += 1
    return sorted(files), ignored


def _hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:4], "big")


def _in_test(rel: str) -> bool:
    return _hash(rel) % 10 == 0


def _validate(base: Path, files, cfg: ImageData):
    """Check files in order until max_items good ones (or all); returns (good, skipped)."""
    good, skipped = [], []
    want = cfg.max_items or len(files)
    Image.init()  # register Pillow's plugins once, before threads race to do it
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=want, desc="checking images", unit="img", disable=len(files) < 5000) as bar:
        for start in range(0, len(files), 256):
            chunk = files[start:start + 256]
            for (rel, y), reason in zip(chunk, pool.map(_problem, [base / rel for rel, _ in chunk])):
                if reason is None:
                    good.append((rel, y))
                    bar.update()
                elif cfg.on_error == "raise":
                    raise ImageDataError(f"cannot read image '{base / rel}': {reason}. "
                                         f'Remove it or set data.on_error = "skip"')
                else:
                    skipped.append((str(base / rel), reason))
                if len(good) == want:
                    break
            if len(good) == want:
                break
    warn_skipped(skipped, f"unreadable image(s) in '{base}'", stacklevel=4)  # 4: who called build_image_dataset
    if not good:
        raise ImageDataError(f"all {len(skipped)} images in '{base}' are unreadable, e.g. '{skipped[0][0]}' "
                             f"({skipped[0][1]})")
    return good, skipped


def _problem(path: Path) -> str | None:
    """Why `path` is not a readable image, or None; cheap: reads the file but decodes no pixels
    unless a format gives no cheaper way (BMP, or a JPEG with data after its end marker)."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as im:
            fmt = im.format
            im.verify()  # PNG: walks every chunk and checks its CRC, so truncation and bit rot show
        if fmt == "WEBP":
            with open(path, "rb") as f:
                head = f.read(8)
            if os.path.getsize(path) < 8 + int.from_bytes(head[4:8], "little"):
                return "truncated file (shorter than its RIFF header says)"
        if fmt in ("JPEG", "MPO"):  # MPO: a phone's multi-picture JPEG
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 64))
                if b"\xff\xd9" in f.read():  # the end-of-image marker: a truncated JPEG lacks it
                    return None
        if fmt in ("JPEG", "MPO", "BMP"):
            _decode(path, 8, 3)  # no cheap structural check left: decode (JPEG at reduced scale)
    except Exception as e:
        return _reason(e)
    return None


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not a " + "/".join(PIL_FORMATS) + " image"
    if isinstance(e, (EOFError, SyntaxError)) or "truncated" in str(e).lower():
        return f"truncated or corrupt data: {e}" if str(e) else "truncated or corrupt data"
    return str(e) or type(e).__name__


# ---------------------------------------------------------------------------------------- decoding

def _decode(path, size: int, channels: int) -> torch.Tensor:
    with Image.open(path, formats=PIL_FORMATS) as im:
        im.draft(None, (size, size))  # JPEG: let libjpeg decode at 1/2..1/8 scale when that is still >= size
        im = ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
        return pil_to_tensor(im, size, channels)


def pil_to_tensor(im: Image.Image, size: int, channels: int) -> torch.Tensor:
    """Any Pillow image -> [channels, size, size] in [-1, 1] by the module's resize rule.
    Transparent pixels are composited over white (what a viewer shows), so whatever RGB hides under
    alpha = 0 never leaks in; 16-bit grayscale is scaled (Pillow's convert("L") would clip it)."""
    box = center_crop_box(im.width, im.height, size, size)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        scale = 1.0 if im.mode == "F" else 65535.0
        gray = Image.fromarray(np.asarray(im, dtype=np.float32) / scale)  # float32 -> mode "F"
        gray = gray.resize((size, size), Image.Resampling.BICUBIC, box=box)
        x = np.clip(np.asarray(gray), 0, 1) * 2 - 1
        return torch.from_numpy(np.repeat(x[None], channels, axis=0))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # P, 1, CMYK, YCbCr...: Pillow converts every mode to RGB
    im = im.convert("L" if channels == 1 else "RGB")
    im = im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    # arithmetic in numpy: torch's multithreaded kernels cost milliseconds of thread sync per op on a
    # busy machine, and this runs once per image in every DataLoader worker
    x = np.asarray(im, dtype=np.float32) / np.float32(127.5) - np.float32(1)
    return torch.from_numpy(x[None] if channels == 1 else np.ascontiguousarray(x.transpose(2, 0, 1)))


def center_crop_box(w: int, h: int, out_w: int, out_h: int) -> tuple[float, float, float, float]:
    """The largest centered box of a w x h picture with the aspect ratio of out_w x out_h."""
    if w * out_h > h * out_w:  # picture is wider than the output: crop the sides
        cw = h * out_w / out_h
        return ((w - cw) / 2, 0.0, (w + cw) / 2, float(h))
    ch = w * out_h / out_w
    return (0.0, (h - ch) / 2, float(w), (h + ch) / 2)


def load_image(path, size: int, channels: int = 3) -> torch.Tensor:
    """One user image (e.g. for `multidiff inpaint`) -> [channels, size, size] in [-1, 1], with the
    dataset's resize rule (center square, resized), so `masks.load_mask(mask, size)` lines up with it."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageDataError(f"image '{p}' not found: check the path")
    try:
        return _decode(p, size, channels)
    except Exception as e:
        raise ImageDataError(f"cannot read image '{p}': {_reason(e)}. "
                             f"Give a {', '.join(IMAGE_EXTENSIONS)} image file") from None


def picture_size(path) -> tuple[int, int] | None:
    """(width, height) of an image file as shown (EXIF rotation applied), read from its header only;
    None when it cannot be read (the reader that loads it then names the problem)."""
    try:
        with Image.open(Path(path).expanduser(), formats=PIL_FORMATS) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # Orientation: a quarter turn swaps the sides
    except Exception:
        return None
    return (h, w) if turned else (w, h)


# ---------------------------------------------------------------------------------------- batches

def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample of a batch [B, C, H, W] left-right with probability 0.5."""
    if x.dim() != 4:
        raise ValueError(f"random_hflip takes a batch [B, C, H, W], got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None, padding: int = 2) -> Path:
    """A batch [B, C, H, W] (or one [C, H, W]) in [-1, 1], C = 1 or 3 -> one PNG grid, `nrow` images
    per row (default: about square). Written to a temp file then renamed: never half a PNG."""
    x = x.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"save_image_grid takes [B, C, H, W] with C = 1 or 3 and B >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        warnings.warn(f"save_image_grid: NaN/inf values in the images for '{path}' are drawn as mid-gray",
                      stacklevel=2)
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    b, c, h, w = x.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(b)), b))
    rows = math.ceil(b / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), -1.0)
    for i in range(b):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # same folder: rename is atomic
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
