"""A dataset encoded once into latents: shards on disk, resumable, validated, rebuilt when stale.

Layout of a cache folder:
    manifest.json                  key (what the latents depend on), its hash, count, shape, shard size
    shard_00000.safetensors        moments [n, 2C, h, w] (posterior mean and logvar, fp32) + labels [n]

The key holds everything the latents depend on (the autoencoder weights' hash, the latent scale,
the [data] config and split); each shard carries the key's hash in its metadata. On every use the
manifest and every shard are checked (key hash, rows, shape): a cache built for another key is
deleted and rebuilt, a missing or damaged shard is re-encoded, and a build killed midway resumes
at the first shard not on disk. Every such event is logged; a stale cache is never used silently.
Shards are written to a temp name and renamed, so a kill never leaves half a shard.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..utils import atomic_path, read_json, write_json

FORMAT = "multidiff.latent_cache/1"


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class LatentDataset(torch.utils.data.Dataset):
    """ds[i] -> (moments [2C, h, w] float32, label int), all in memory (latents are small)."""

    def __init__(self, moments: torch.Tensor, labels: torch.Tensor, num_classes: int):
        self.moments, self.labels, self.num_classes = moments, labels.tolist(), num_classes

    def __len__(self) -> int:
        return len(self.moments)

    def __getitem__(self, i):
        return self.moments[i], self.labels[i]


def _shard_path(folder: Path, i: int) -> Path:
    return folder / f"shard_{i:05d}.safetensors"


def _shard_problem(path: Path, khash: str, rows: int, shape: list[int]) -> str | None:
    """Why a shard on disk cannot be used, or None when it matches."""
    if not path.exists():
        return "missing"
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            got = list(f.get_slice("moments").get_shape())
            labels = list(f.get_slice("labels").get_shape())
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        return f"unreadable ({e})"
    if meta.get("key_hash") != khash:
        return f"built for another autoencoder/data (key {meta.get('key_hash')} != {khash})"
    if got != [rows, *shape] or labels != [rows]:
        return f"holds {got} latents, expected {[rows, *shape]}"
    return None


def _read_shard(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("moments"), f.get_tensor("labels")


def build_latent_cache(folder, dataset, encode: Callable[[torch.Tensor], torch.Tensor], key: dict,
                       shape: list[int], shard_size: int = 256, log=print) -> tuple[LatentDataset, dict]:
    """Encode `dataset` ((image, label) items) with `encode` (images [n, C, H, W] -> moments [n, *shape])
    into `folder`, reusing what is valid. Returns the dataset and a report (encoded / reused shards,
    and why anything was rebuilt)."""
    folder, shape = Path(folder), [int(s) for s in shape]
    if shard_size < 1:
        raise ValueError(f"latent cache shard size must be >= 1, got {shard_size}")
    n, khash = len(dataset), key_hash(key)
    want = {"format": FORMAT, "key": key, "key_hash": khash, "count": n, "shape": shape, "shard_size": shard_size}
    report = {"folder": str(folder), "encoded": 0, "reused": 0, "rebuilt": None}
    manifest = folder / "manifest.json"
    if manifest.exists():
        try:
            have = read_json(manifest)
        except (OSError, json.JSONDecodeError):
            have = {}
        diff = [k for k in ("format", "key_hash", "count", "shape", "shard_size") if have.get(k) != want[k]]
        if diff:
            report["rebuilt"] = "stale: " + ", ".join(f"{k} {have.get(k)!r} -> {want[k]!r}" for k in diff)
            log(f"latent cache '{folder}' is {report['rebuilt']}; deleting and re-encoding it")
            shutil.rmtree(folder)
    write_json(manifest, {**want, "complete": False})
    moments, labels = [], []
    for i, start in enumerate(range(0, n, shard_size)):
        rows = min(shard_size, n - start)
        path = _shard_path(folder, i)
        problem = _shard_problem(path, khash, rows, shape)
        if problem is None:
            m, y = _read_shard(path)
            report["reused"] += 1
        else:
            if problem != "missing":
                log(f"latent cache shard '{path}' is {problem}; re-encoding it")
            items = [dataset[j] for j in range(start, start + rows)]
            m = encode(torch.stack([x for x, _ in items])).float().contiguous()
            y = torch.tensor([int(lbl) for _, lbl in items], dtype=torch.int64)
            if list(m.shape) != [rows, *shape]:
                raise ValueError(f"the encoder gave latents of shape {list(m.shape)}, expected {[rows, *shape]}")
            with atomic_path(path) as tmp:
                save_file({"moments": m, "labels": y}, str(tmp), metadata={"key_hash": khash, "index": str(i)})
            report["encoded"] += 1
        moments.append(m)
        labels.append(y)
    for extra in sorted(folder.glob("shard_*.safetensors"))[len(moments):]:  # from a larger old build
        extra.unlink()
    write_json(manifest, {**want, "complete": True})
    num_classes = int(getattr(dataset, "num_classes", 0))
    data = LatentDataset(torch.cat(moments) if moments else torch.zeros(0, *shape),
                         torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64), num_classes)
    return data, report
