"""The python version of CIFAR-10 (`cifar-10-batches-py`) as an image source, read without
unpickling anything but numpy arrays."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .image_base import CIFAR10_CLASSES, CIFAR10_URL, ImageData, ImageDataError, ImageDataset, _InMemory


class _Refused(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles (written by Python 2, protocol 2), and unpickling runs any
    function a file names. A batch holds only dicts, lists, bytes, str and ints (pickle opcodes, no
    globals needed) and numpy arrays, so only numpy's array reconstruction is allowed."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"it asks to call '{module}.{name}', which no CIFAR-10 batch contains")
        if module == "numpy.core.multiarray" and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core.multiarray"  # numpy 2 moved it; the files keep the old name
        return super().find_class(module, name)


def _cifar10(cfg: ImageData, split: str) -> ImageDataset:
    """The python version of CIFAR-10: data_batch_1..5 = "train" (50,000), test_batch = "test"
    (10,000); 32x32 RGB kept as uint8 in memory. max_items keeps the first ones (the batches are
    already shuffled)."""
    if not cfg.root:
        raise ImageDataError(f"[data] root is empty: set data.root to the folder that holds cifar-10-batches-py "
                             f"(download {CIFAR10_URL} and extract it there)")
    root = Path(cfg.root).expanduser()
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    d = next((d for d in (root, root / "cifar-10-batches-py") if (d / names[0]).is_file()), None)
    if d is None:
        raise ImageDataError(
            f"CIFAR-10 not found: expected '{root / 'cifar-10-batches-py' / names[0]}'. Download {CIFAR10_URL} "
            f"(163 MB) and extract it into '{root}', e.g.: mkdir -p {root} && curl -L {CIFAR10_URL} | tar xz -C {root}")
    data, labels = [], []
    for n in names:
        x, y = _load_batch(d / n)
        data.append(x)
        labels += y
        if cfg.max_items and len(labels) >= cfg.max_items:
            break
    images = torch.from_numpy(np.concatenate(data)).view(-1, 3, 32, 32)
    class_names = list(CIFAR10_CLASSES)
    if (d / "batches.meta").is_file():
        meta = _unpickle(d / "batches.meta")
        label_names = _key(meta, "label_names", d / "batches.meta")
        if not (isinstance(label_names, list) and len(label_names) == 10):
            raise ImageDataError(f"CIFAR-10 file '{d / 'batches.meta'}' should list 10 label_names. "
                                 f"Re-download {CIFAR10_URL}")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in label_names]
    if cfg.max_items:
        images, labels = images[:cfg.max_items], labels[:cfg.max_items]
    return _InMemory(images, labels, class_names, cfg.size, cfg.channels, range(len(labels)))


def _unpickle(path: Path):
    fix = f"Re-download {CIFAR10_URL} and extract it again"
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise ImageDataError(f"refusing to load '{path}': {e}. It is not an official CIFAR-10 file "
                             f"(unpickling it could run code). {fix}") from None
    except FileNotFoundError:
        raise ImageDataError(f"CIFAR-10 file '{path}' is missing. {fix}") from None
    except Exception as e:
        raise ImageDataError(f"cannot read CIFAR-10 file '{path}': {type(e).__name__}: {e}. {fix}") from None


def _key(d, key: str, path: Path):
    if isinstance(d, dict):
        for k in (key.encode(), key):  # bytes keys in the official files; str if re-pickled by Python 3
            if k in d:
                return d[k]
    raise ImageDataError(f"CIFAR-10 file '{path}' has no '{key}' entry. Re-download {CIFAR10_URL}")


def _load_batch(path: Path):
    d = _unpickle(path)
    x, y = _key(d, "data", path), _key(d, "labels", path)
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072
            and isinstance(y, list) and len(y) == len(x) and all(isinstance(v, int) and 0 <= v < 10 for v in y)):
        raise ImageDataError(f"CIFAR-10 file '{path}' does not hold uint8 data [N, 3072] with N labels in 0..9. "
                             f"Re-download {CIFAR10_URL}")
    return x, y
