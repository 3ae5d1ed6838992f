"""Miniature datasets in their real layouts, written by the tests: CIFAR-10's python batches (pickled the
way Python 2 wrote them) and UCF-101's folders, lists and AVI files."""
import pickle
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

UCF_CLASSES = ("ApplyEyeMakeup", "Basketball", "HandstandPushups")


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official batches: protocol 2, every str (and
    bytes) as a (SHORT_)BINSTRING, which Python 3 reads back as bytes with encoding="bytes"."""

    def save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256
                   else pickle.BINSTRING + struct.pack("<i", len(b)))
        self.write(b)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def write_fake_cifar10(root, n_per_batch: int = 10, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the real layout: <root>/cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}, the same dict keys and dtypes (uint8 data [N, 3072] channel-planar, int labels)."""
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        batch = {"batch_label": f"{name} (fake)",
                 "labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
                 "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"img_{i}.png" for i in range(n_per_batch)]}
        with open(d / name, "wb") as f:
            Py2Pickler(f, protocol=2).dump(batch)
    meta = {"num_cases_per_batch": n_per_batch, "num_vis": 3072,
            "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    with open(d / "batches.meta", "wb") as f:
        Py2Pickler(f, protocol=2).dump(meta)
    return d


def write_avi(path, frames: np.ndarray, fps=8):
    """uint8 [T, H, W, 3] -> AVI (MPEG-4 part 2), straight through PyAV (independent of write_video)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.bit_rate = 2_000_000
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(s.encode())


def make_fake_ucf101(root, per_class=3, frames=10, size=(32, 24)):
    """UCF-101's real layout in miniature: UCF-101/<Class>/v_<Class>_gXX_c01.avi, ucfTrainTestlist/ with
    classInd and 3 splits (split k tests group k). HandstandPushups keeps the archive's quirk: its
    files are named v_HandStandPushups_...; returns {relative path: label}."""
    root = Path(root)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(UCF_CLASSES)))
    rng = np.random.default_rng(0)
    files = {}
    for y, c in enumerate(UCF_CLASSES):
        (root / "UCF-101" / c).mkdir(parents=True)
        stem = "HandStandPushups" if c == "HandstandPushups" else c
        for g in range(1, per_class + 1):
            rel = f"{c}/v_{stem}_g{g:02d}_c01.avi"
            base = rng.integers(0, 200, size=(1, size[1], size[0], 3))
            clip = (base + 5 * np.arange(frames).reshape(-1, 1, 1, 1)).clip(0, 255).astype(np.uint8)
            write_avi(root / "UCF-101" / rel, clip)
            files[rel] = y
    for k in (1, 2, 3):
        train = [f"{rel} {y + 1}\r\n" for rel, y in files.items() if f"_g{k:02d}_" not in rel]
        test = [f"{rel}\r\n" for rel in files if f"_g{k:02d}_" in rel]
        (lists / f"trainlist0{k}.txt").write_text("".join(train))
        (lists / f"testlist0{k}.txt").write_text("".join(test))
    return files
