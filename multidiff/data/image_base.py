"""The image data contract shared by every image source: the [data] section, the dataset class
(items (x, y), x float32 [C, size, size] in [-1, 1]) and in-memory uint8 images (digits, CIFAR-10)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SOURCES = ("digits", "folder", "cifar10")
ON_ERROR = ("raise", "skip")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, what Pillow's convert("L") uses


class ImageDataError(ValueError):
    """A problem with the user's image data or [data] config, with the file and the fix in the message."""


@dataclass
class ImageData:
    """The [data] section of an image recipe's config.toml."""
    source: str = "digits"       # "digits" | "folder" | "cifar10"
    root: str = ""               # folder of images, or the dir containing cifar-10-batches-py (or that dir itself)
    size: int = 32               # output is size x size
    channels: int = 1            # 1 = grayscale, 3 = RGB
    random_flip: bool = False    # horizontal flips, applied per batch by the trainer with `random_hflip`
    on_error: str = "raise"      # "raise": first bad file stops the build; "skip": skip it, warn once with a summary
    max_items: int = 0           # 0 = all


class ImageDataset(torch.utils.data.Dataset):
    """ds[i] -> (x float32 [C, size, size] in [-1, 1], y int). `labels[i]` is y without decoding x;
    `skipped` lists (path, reason) of the files left out under on_error = "skip"."""

    def __init__(self, labels, class_names, skipped=()):
        self.labels = [int(y) for y in labels]
        self.class_names = list(class_names)
        self.skipped = list(skipped)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i %= len(self)
        return self._image(i), self.labels[i]

    def _image(self, i: int) -> torch.Tensor:
        raise NotImplementedError


class _InMemory(ImageDataset):
    """uint8 [N, C, h, w] held in memory (digits, CIFAR-10); channel conversion and resizing per item.
    `source_index[i]` is where item i comes from (its index in load_digits(), or in the split's batches)."""

    def __init__(self, images, labels, class_names, size, channels, source_index):
        super().__init__(labels, class_names)
        self.images, self.size, self.channels = images, size, channels
        self.source_index = [int(i) for i in source_index]

    def _image(self, i):
        x = self.images[i].float() / 127.5 - 1
        if x.shape[0] != self.channels:
            x = x.expand(3, -1, -1) if self.channels == 3 else _gray(x)
        if x.shape[-1] != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp(-1, 1)
        return x.contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    return (x * w.view(3, 1, 1)).sum(0, keepdim=True)
