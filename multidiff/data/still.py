"""A still picture for `multidiff animate`: read like every user image (center square, antialiased
bicubic resize, EXIF rotation, transparency over white), with a note for everything that changed it
on the way to the model's frames, and one clear refusal for what cannot be a still."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageOps

from .image import IMAGE_EXTENSIONS, PIL_FORMATS, _reason, pil_to_tensor
from .image_base import ImageDataError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def load_still(path, size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """[channels, size, size] in [-1, 1] and the notes on what was changed (size, channels, transparency)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageDataError(f"image '{p}' not found: check the path" if not p.is_dir() else
                             f"'{p}' is a folder: --image takes one picture file")
    try:
        with Image.open(p, formats=PIL_FORMATS) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise ImageDataError(f"'{p}' is an animation of {im.n_frames} frames, not a still: give one "
                                     "picture, or complete the clip with `multidiff inpaint --input CLIP "
                                     "--known-frames 0:K`")
            im.load()
            im = ImageOps.exif_transpose(im)
            mode, (w, h) = im.mode, im.size
            transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            x = pil_to_tensor(im, size, channels)
    except ImageDataError:
        raise
    except Exception as e:
        raise ImageDataError(f"cannot read image '{p}': {_reason(e)}. Give a {', '.join(IMAGE_EXTENSIONS)} "
                             "picture file") from None
    notes = []
    if (w, h) != (size, size):
        notes.append(f"{w}x{h} px resized to the model's {size}x{size}" + (" (center square)" if w != h else ""))
    gray = mode in GRAY_MODES
    if channels == 1 and not gray:
        notes.append(f"{mode} converted to grayscale (luma): the model makes 1-channel frames")
    elif channels == 3 and gray:
        notes.append("grayscale repeated to RGB: the model makes RGB frames")
    if transparent:
        notes.append("transparent pixels put over white")
    return x, notes
