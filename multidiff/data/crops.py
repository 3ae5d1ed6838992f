"""Inpainting a large picture with a small model: cut a crop around the hole, complete it at the model's
size, paste it back (`multidiff inpaint --crop-to-mask [--feather PX]`).

  crop_box       the hole's bounding box, grown by a margin of context, made square (at least the model's
                 size where the picture allows, so a small hole is not blown up), shifted to lie inside
                 the picture; a hole wider than the picture's short side gets a rectangle, stretched
  to_model       the crop at the model's size (Pillow's antialiased bicubic, as every picture is read),
                 and the model's mask: a model pixel is unknown where any hole pixel falls in it, grown
                 by one model pixel so the resize does not carry the removed content into the known part
  blend_weights  1 deep in the hole, a ramp over a band of `feather` pixels inside its border (Euclidean
                 distance to the nearest known pixel, d / (feather + 1)), 0 outside the hole
  paste          the completed crop resized back to the crop's size and blended in with those weights;
                 every pixel of weight 0 -- everything outside the hole -- is the input's byte for byte

Pictures are uint8 arrays [H, W, C] (C = 1 or 3); holes are bool arrays [H, W] (True = fill).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from scipy.ndimage import distance_transform_edt  # (scipy comes with scikit-learn and librosa)

from .image import IMAGE_EXTENSIONS, PIL_FORMATS, ImageDataError, _reason
from .masks import _gray01

MASK_FIX = "A mask is an image: white = region to fill, black = keep"


@dataclass(frozen=True)
class Box:
    """A crop of a picture: rows top..top+height, columns left..left+width."""
    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


# ---- reading at full resolution ----------------------------------------------------------------------
def read_picture(path, channels: int) -> np.ndarray:
    """A user's picture at its own resolution -> uint8 [H, W, channels]; EXIF rotation applied and
    transparency composited over white, as `image.load_image` does."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageDataError(f"image '{p}' not found: check the path")
    try:
        with Image.open(p, formats=PIL_FORMATS) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                im = Image.fromarray((np.clip(np.asarray(im, dtype=np.float32) / 257, 0, 255) + 0.5).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except Exception as e:
        raise ImageDataError(f"cannot read image '{p}': {_reason(e)}. Give a {', '.join(IMAGE_EXTENSIONS)} image "
                             "file") from None
    return arr[..., None] if arr.ndim == 2 else arr


def read_hole(path, height: int, width: int, stretch: bool = False) -> np.ndarray:
    """A mask image (white = fill, the masks.load_mask convention) at the picture's size -> bool [H, W],
    True where to fill. A mask of another size is stretched with `stretch` (the caller checks sizes)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"mask '{p}' not found: check the path")
    try:
        with Image.open(p, formats=PIL_FORMATS) as im:
            gray = _gray01(ImageOps.exif_transpose(im))
    except Exception as e:
        raise ValueError(f"cannot read mask '{p}': {_reason(e)}. {MASK_FIX}") from None
    if gray.shape != (height, width):
        if not stretch:
            raise ValueError(f"mask '{p}' is {gray.shape[1]}x{gray.shape[0]} pixels but the image is {width}x{height}: "
                             "give a mask of the image's size, or pass --resize-mask")
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.NEAREST))
    return check_hole(gray > 0.5, str(p))


def check_hole(hole: np.ndarray, what: str) -> np.ndarray:
    if not hole.any():
        raise ValueError(f"mask '{what}' has nothing to fill: it has no white pixels. {MASK_FIX}")
    if hole.all():
        raise ValueError(f"mask '{what}' leaves nothing known: it is all white. {MASK_FIX}")
    return hole


# ---- the crop ----------------------------------------------------------------------------------------
def _span(lo: int, hi: int, extent: int, limit: int) -> tuple[int, int]:
    """[start, start + extent) around the center of [lo, hi), shifted to lie in [0, limit)."""
    extent = min(max(extent, hi - lo), limit)
    start = (lo + hi - extent) // 2
    start = max(0, min(start, limit - extent))
    return start, extent


def crop_box(hole: np.ndarray, model_size: int, margin: int | None = None) -> Box:
    """The crop around `hole` [H, W]: its bounding box plus `margin` pixels of context on every side
    (default: a quarter of the box's longer side, at least 16), a square of at least `model_size` where
    the picture's short side allows, shifted inside the picture. Always contains the whole hole; a hole
    longer than the picture's short side gets a rectangle (which the model sees stretched)."""
    H, W = hole.shape
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    if len(rows) == 0:
        raise ValueError("the mask has nothing to fill")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    longest = max(y1 - y0, x1 - x0)
    if margin is None:
        margin = max(16, longest // 4)
    side = min(max(longest + 2 * margin, model_size), H, W)
    # a side of the hole longer than the square: that side of the crop gets its margins (a rectangle, stretched)
    top, height = _span(y0, y1, side if y1 - y0 <= side else y1 - y0 + 2 * margin, H)
    left, width = _span(x0, x1, side if x1 - x0 <= side else x1 - x0 + 2 * margin, W)
    return Box(top, left, height, width)


def to_model(picture: np.ndarray, hole: np.ndarray, box: Box, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop as the model sees it: signal [1, C, size, size] in [-1, 1] and mask [1, 1, size, size]
    (1 = known)."""
    crop = picture[box.slices]
    C = crop.shape[2]
    im = Image.fromarray(crop[..., 0] if C == 1 else crop)
    small = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0), dtype=np.float32)
    small = small[..., None] if small.ndim == 2 else small
    signal = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)) / np.float32(127.5) - np.float32(1))
    unknown = hole_coverage(hole[box.slices], size)
    unknown = F.max_pool2d(unknown[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0  # grown by one pixel
    return signal[None], (~unknown).float()[None, None]


def hole_coverage(hole: np.ndarray, size: int) -> torch.Tensor:
    """bool [size, size]: True where any hole pixel of the crop `hole` [h, w] falls in the model pixel
    (model pixel i covers crop rows [i h / size, (i + 1) h / size), and likewise columns)."""
    h, w = hole.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = hole.astype(np.int64).cumsum(0).cumsum(1)
    i = np.arange(size)
    r0, r1 = (i * h) // size, np.maximum(-((-(i + 1) * h) // size), (i * h) // size + 1)
    c0, c1 = (i * w) // size, np.maximum(-((-(i + 1) * w) // size), (i * w) // size + 1)
    r1, c1 = np.minimum(r1, h), np.minimum(c1, w)
    total = (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])
    return torch.from_numpy(total > 0)


def blend_weights(hole: np.ndarray, feather: int) -> np.ndarray:
    """float32 [H, W]: how much of the completed crop each pixel takes. 0 outside the hole; inside it
    d / (feather + 1) capped at 1, d the Euclidean distance to the nearest known pixel (1 for a hole pixel
    next to one), so the band of blended pixels is `feather` pixels wide; feather = 0: 1 in all the hole."""
    if feather <= 0 or not hole.any():
        return hole.astype(np.float32)
    # the distance transform of a window around the hole: every known pixel nearer than feather + 1 to a
    # hole pixel lies in it (farther ones give weight 1 anyway), so a large picture costs no more
    H, W = hole.shape
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    pad = feather + 2
    y0, y1 = max(0, rows[0] - pad), min(H, rows[-1] + 1 + pad)
    x0, x1 = max(0, cols[0] - pad), min(W, cols[-1] + 1 + pad)
    out = np.zeros((H, W), dtype=np.float32)
    win = hole[y0:y1, x0:x1]
    if win.all():  # no known pixel near: the whole window is deep inside the hole
        out[y0:y1, x0:x1] = 1.0
        return out
    out[y0:y1, x0:x1] = np.minimum(distance_transform_edt(win) / (feather + 1), 1.0)
    return out


def paste(picture: np.ndarray, completed: torch.Tensor, box: Box, weights: np.ndarray) -> np.ndarray:
    """The picture with the completed crop (`completed` [C, s, s] in [-1, 1], the model's output for the
    crop) resized back to the crop's size and blended in with `weights`; pixels of weight 0 are copied."""
    out = picture.copy()
    ws = weights[box.slices]
    if not ws.any():
        return out
    C = picture.shape[2]
    x = ((completed.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).numpy()
    big = np.stack([np.asarray(Image.fromarray(x[c]).resize((box.width, box.height), Image.Resampling.BICUBIC,
                                                            reducing_gap=3.0)) for c in range(C)], -1)
    big = np.clip(big, 0, 255)  # (bicubic overshoots)
    region = out[box.slices]
    blended = ws[..., None] * big + (1 - ws[..., None]) * region.astype(np.float32)
    fill = ws > 0
    region[fill] = np.clip(np.round(blended[fill]), 0, 255).astype(np.uint8)
    return out
