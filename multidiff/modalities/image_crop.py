"""`multidiff inpaint --crop-to-mask [--feather PX]` for image runs: the picture and its mask are read at
full resolution, a crop around the hole is completed at the model's size, and the result is pasted back
into the full picture (data/crops.py has the geometry and the blend). The output has the input's size,
and every pixel outside the hole is the input's, byte for byte."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.crops import Box, blend_weights, check_hole, crop_box, paste, read_hole, read_picture, to_model
from ..data.image import save_image_grid
from ..data.masks import MASK_KINDS, make_mask
from ..engine.config import ConfigError
from .base import Known


@dataclass
class CroppedKnown(Known):
    """Known for a crop: `signal` / `mask` are the crop at the model's size; the rest pastes it back."""
    picture: np.ndarray | None = None   # uint8 [H, W, C], the full picture
    box: Box | None = None
    weights: np.ndarray | None = None   # float32 [H, W]: 0 outside the hole, the feather ramp, 1 inside


def read_cropped(request, sections: dict) -> CroppedKnown:
    size, C = sections["data"].size, sections["data"].channels
    picture = read_picture(request.image, C)
    H, W = picture.shape[:2]
    if request.mask:
        hole = read_hole(request.mask, H, W, stretch=request.resize_mask)
    else:
        kinds = [k for k in MASK_KINDS if k != "mixture"]
        if request.mask_kind not in kinds:
            raise ConfigError(f"--mask-kind must be one of {', '.join(kinds)}")
        mask = make_mask(request.mask_kind, (H, W), torch.Generator().manual_seed(request.seed))
        hole = check_hole(mask[0].numpy() == 0, f"--mask-kind {request.mask_kind}")
    feather = int(getattr(request, "feather", 0) or 0)
    box = crop_box(hole, size)
    signal, mask = to_model(picture, hole, box, size)
    shape = "square" if box.width == box.height else "stretched to a square"
    summary = (f"{int(hole.sum())} of {H * W} pixels filled: a {box.width}x{box.height} crop at ({box.left}, "
               f"{box.top}) completed at {size}x{size} ({shape}), pasted back into {W}x{H}"
               + (f" with a {feather} px feather" if feather else ""))
    return CroppedKnown(signal, mask, summary, picture=picture, box=box, weights=blend_weights(hole, feather))


def write_cropped(x: torch.Tensor, out: str, known: CroppedKnown) -> str:
    """The completed crop `x` [1, C, size, size] pasted into the full picture, written as a PNG."""
    result = paste(known.picture, x[0], known.box, known.weights)
    # uint8 -> [-1, 1] -> uint8 is exact (save_image_grid rounds), so the untouched pixels stay the input's
    save_image_grid(torch.from_numpy(result).permute(2, 0, 1).float() / 127.5 - 1, out, padding=0)
    return str(out)
