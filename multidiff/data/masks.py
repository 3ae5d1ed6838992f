"""Inpainting masks: float32 [1, H, W], 1 where the signal is known, 0 where it is to be filled.

Random masks are drawn from a torch.Generator only, so the same generator state gives the same mask;
with generator=None they come from torch's global RNG. Sizes are an int (square) or (H, W).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .image import PIL_FORMATS, _reason, center_crop_box

MASK_KINDS = ("box", "center", "left", "right", "top", "bottom", "strokes", "mixture")
# "mixture" weights: the four halves are one idea (outpainting) and "center" is a single fixed mask,
# so uniform weights over the names would train mostly on half-images; LaMa likewise trains mostly on
# free-form strokes and boxes.
MIXTURE_WEIGHTS = {"strokes": 0.4, "box": 0.3, "center": 0.1, "left": 0.05, "right": 0.05, "top": 0.05, "bottom": 0.05}


def mask_kind_names() -> str:
    return ", ".join(MASK_KINDS)


def _hw(size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list, torch.Size)) else ()
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in hw):
        raise ValueError(f"mask size must be an int or (H, W) of ints >= 2, got {size!r}")
    return hw


def _check_kind(kind) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of: {mask_kind_names()}")


def _uniform(lo: float, hi: float, g) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _randint(lo: int, hi: int, g) -> int:
    """Uniform integer in [lo, hi], both included."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def make_mask(kind: str, size, generator: torch.Generator | None = None) -> torch.Tensor:
    """One mask [1, H, W] (1 = known):
    box      one random rectangular hole, each side 25-50% of the image's side
    center   a centered hole of half the height and half the width (a square on square images)
    left/right/top/bottom   that half is missing (floor(W/2) columns or floor(H/2) rows)
    strokes  free-form brush strokes, random walks of thick segments with round joints (as in
             Yu et al. 2019 / LaMa), until 15-45% is covered, never more than 50%
    mixture  one of the above per call, with MIXTURE_WEIGHTS
    """
    _check_kind(kind)
    h, w = _hw(size)
    return torch.from_numpy((~_hole(kind, h, w, generator)).astype(np.float32))[None]


def _hole(kind: str, h: int, w: int, g) -> np.ndarray:
    """bool [h, w], True = to fill."""
    if kind == "mixture":
        names = list(MIXTURE_WEIGHTS)
        kind = names[int(torch.multinomial(torch.tensor(list(MIXTURE_WEIGHTS.values())), 1, generator=g))]
    # numpy, not torch: on a busy machine torch's multithreaded kernels spend ~10 ms syncing threads on
    # every op over a 256x256 mask, while these ops take microseconds
    hole = np.zeros((h, w), dtype=bool)
    if kind == "box":
        bh = _randint(math.ceil(h / 4), max(math.ceil(h / 4), h // 2), g)
        bw = _randint(math.ceil(w / 4), max(math.ceil(w / 4), w // 2), g)
        top, left = _randint(0, h - bh, g), _randint(0, w - bw, g)
        hole[top:top + bh, left:left + bw] = True
    elif kind == "center":
        top, left = (h - h // 2) // 2, (w - w // 2) // 2
        hole[top:top + h // 2, left:left + w // 2] = True
    elif kind == "left":
        hole[:, :w // 2] = True
    elif kind == "right":
        hole[:, w - w // 2:] = True
    elif kind == "top":
        hole[:h // 2] = True
    elif kind == "bottom":
        hole[h - h // 2:] = True
    else:
        hole = _strokes(h, w, g)
    return hole


def _strokes(h: int, w: int, g) -> np.ndarray:
    side = min(h, w)
    target = _uniform(0.15, 0.45, g) * h * w
    hole = np.zeros((h, w), dtype=bool)
    covered = 0
    for _ in range(100):  # strokes; the cap only matters for degenerate tiny sizes
        radius = max(1.0, _uniform(0.025, 0.075, g) * side)
        y, x, angle = _uniform(0, h, g), _uniform(0, w, g), _uniform(0, 2 * math.pi, g)
        for _ in range(_randint(2, 8, g)):
            angle += _uniform(-1.2, 1.2, g)  # a bend of up to ~70 degrees per segment: a hand's wandering line
            length = _uniform(0.1, 0.3, g) * side
            ny = min(max(y + length * math.sin(angle), 0.0), h - 1.0)
            nx = min(max(x + length * math.cos(angle), 0.0), w - 1.0)
            box, seg = _capsule(h, w, (y, x), (ny, nx), radius)
            new = seg & ~hole[box]
            n_new = int(np.count_nonzero(new))
            if covered + n_new > 0.5 * h * w:
                break  # this segment would cover more than half: end the stroke here
            hole[box] |= new
            covered += n_new
            y, x = ny, nx
            if covered >= target:
                return hole
    return hole


def _capsule(h: int, w: int, a, b, r: float):
    """The pixels whose centers lie within r of the segment a-b (a thick line with round ends), as
    (the segment's bounding box as slices, a bool array over that box)."""
    y0, y1 = max(0, int(min(a[0], b[0]) - r)), min(h, int(max(a[0], b[0]) + r) + 2)
    x0, x1 = max(0, int(min(a[1], b[1]) - r)), min(w, int(max(a[1], b[1]) + r) + 2)
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    dy, dx = b[0] - a[0], b[1] - a[1]
    t = np.clip(((py - a[0]) * dy + (px - a[1]) * dx) / max(dy * dy + dx * dx, 1e-12), 0, 1)
    inside = (py - a[0] - t * dy) ** 2 + (px - a[1] - t * dx) ** 2 <= r * r
    return (slice(y0, y1), slice(x0, x1)), inside


def random_masks(n: int, size, kinds=("mixture",), generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, 1, H, W]: each sample draws its own kind (uniformly from `kinds`) and its own mask."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise ValueError(f"random_masks needs at least one kind; choose from: {mask_kind_names()}")
    for k in kinds:
        _check_kind(k)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"random_masks: n must be an integer >= 0, got {n!r}")
    h, w = _hw(size)
    holes = np.zeros((n, 1, h, w), dtype=bool)
    for i in range(n):
        kind = kinds[_randint(0, len(kinds) - 1, generator)] if len(kinds) > 1 else kinds[0]
        holes[i, 0] = _hole(kind, h, w, generator)
    return torch.from_numpy((~holes).astype(np.float32))


def load_mask(path, size) -> torch.Tensor:
    """A mask image -> [1, H, W] with 1 = known.

    Convention (diffusers, LaMa, AUTOMATIC1111): WHITE = the region to fill, black = keep.
    Any mode; 16-bit is scaled; alpha counts as black where transparent (the picture is composited
    over black), so white strokes painted on a transparent layer mark the hole. (OpenAI's
    "transparent = edit" images are not masks here.) The picture goes through the same center crop
    as `image.load_image` (so both line up), is resized with nearest-neighbour sampling and
    thresholded at 50% gray.
    """
    h, w = _hw(size)
    p = Path(path).expanduser()
    fix = "A mask is an image: white = region to fill, black = keep"
    if not p.is_file():
        raise ValueError(f"mask '{p}' not found: check the path")
    try:
        with Image.open(p, formats=PIL_FORMATS) as im:
            gray = _gray01(ImageOps.exif_transpose(im))  # the same orientation load_image sees
    except Exception as e:
        raise ValueError(f"cannot read mask '{p}': {_reason(e)}. {fix}") from None
    mid = float(((gray > 0.1) & (gray < 0.9)).mean())
    if mid > 0.25:
        warnings.warn(f"mask '{p}' is {mid:.0%} mid-gray: is it really a mask? ({fix}; thresholded at 50%)",
                      stacklevel=2)
    small = Image.fromarray(gray).resize(
        (w, h), Image.Resampling.NEAREST, box=center_crop_box(gray.shape[1], gray.shape[0], w, h))
    fill = np.array(small) > 0.5
    if not fill.any():
        why = ("it has no white pixels" if gray.max() <= 0.5 else
               f"its white area vanished in the center crop and resize to {h}x{w} (thinner than an "
               f"output pixel, or outside the centered crop)")
        raise ValueError(f"mask '{p}' has nothing to fill: {why}. {fix}")
    if fill.all():
        raise ValueError(f"mask '{p}' leaves nothing known: it is all white at {h}x{w}. {fix}")
    return torch.from_numpy((~fill).astype(np.float32))[None]


def _gray01(im: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as float32 [H, W]."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.clip(np.asarray(im, dtype=np.float32) / 65535, 0, 1)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    return np.asarray(im.convert("L"), dtype=np.float32) / 255
