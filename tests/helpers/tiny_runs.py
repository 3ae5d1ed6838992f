"""Tiny trained runs that several test modules complete with: made once per test session (under pytest's
base temporary folder), with the real recipe and CLI but a few training steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from multidiff.cli import main
from multidiff.data.image import ImageData, build_image_dataset

ROOT = Path(__file__).parent.parent.parent
TINY_IMAGE = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
              "train.steps=4", "train.batch_size=16", "train.checkpoint_every=2", "train.warmup_steps=1",
              "train.log_every=1"]


def tiny_image_run(base: Path) -> Path:
    """An image_digits run (16x16, 4 training steps; no sample or evaluate stage) in base/tiny_image_run."""
    run = Path(base) / "tiny_image_run"
    if not (run / "stages" / "train.json").is_file():
        args = ["train", str(ROOT / "recipes/image_digits"), "--out", str(run), *TINY_IMAGE, "--skip", "sample",
                "--skip", "evaluate"]
        assert main(args) == 0
    return run


def held_out_digit(path: Path, index: int = 0) -> np.ndarray:
    """A real held-out digit at the model's 16x16, written as an RGB PNG; returns its pixels (uint8)."""
    x, _ = build_image_dataset(ImageData(size=16, channels=1), "test")[index]
    a = ((x[0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    rgb = np.repeat(a[..., None], 3, axis=2)
    Image.fromarray(rgb).save(path)
    return rgb
