"""Checkpoints: weights and EMA in safetensors, optimizer state beside them, written atomically.

Layout: RUN/checkpoints/step_0000500/{model,ema,optimizer}.safetensors + state.json. A checkpoint
is written into a hidden temp folder and renamed into place, so a kill at any moment leaves
either the complete checkpoint or none; older ones are pruned only after the new one exists.
Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError

STEP_DIR = re.compile(r"^step_(\d{7})$")


class CheckpointError(UserError):
    pass


def _save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def _load(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read '{path}': {e}. The file is damaged or not a safetensors file; "
                              "delete that checkpoint folder to fall back to the previous one") from None


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"state.{pid}.{name}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict, metadata: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def checkpoint_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    dirs = checkpoint_dirs(ckpt_root)
    return dirs[-1] if dirs else None


def save_checkpoint(ckpt_root: Path, step: int, model, ema, optimizer, state: dict, keep: int = 3,
                    extra: dict | None = None) -> Path:
    """`extra`: more tensors a task trains beside the model (e.g. a discriminator and its optimizer)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=ckpt_root))
    try:
        _save(model.state_dict(), tmp / "model.safetensors")
        _save(ema.state_dict(), tmp / "ema.safetensors")
        tensors, meta = optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        _save(tensors, tmp / "optimizer.safetensors", meta)
        if extra:
            _save(extra, tmp / "extra.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2, sort_keys=True))
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoint_dirs(ckpt_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step_*.tmp"):  # left by a kill mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_extra(ckpt: Path) -> dict:
    """The task's extra tensors of a checkpoint ({} when it saved none)."""
    path = ckpt / "extra.safetensors"
    return _load(path) if path.exists() else {}


def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read '{ckpt / 'state.json'}': {e}") from None


def load_checkpoint(ckpt: Path, model, ema, optimizer) -> dict:
    """Restore everything a resumed run needs; returns the saved state dict (step, ...)."""
    state = read_state(ckpt)
    load_weights_into(model, _load(ckpt / "model.safetensors"), ckpt / "model.safetensors")
    ema.load_state_dict(_load(ckpt / "ema.safetensors"))
    tensors = _load(ckpt / "optimizer.safetensors")
    with safe_open(str(ckpt / "optimizer.safetensors"), "pt") as fh:
        meta = fh.metadata() or {}
    rng = tensors.pop("rng.torch")
    load_optimizer_tensors(optimizer, tensors, meta)
    torch.set_rng_state(rng)
    return state


def load_weights_into(model: torch.nn.Module, tensors: dict, source) -> None:
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or bad:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "") + (
            f" shape mismatch {[(k, tuple(tensors[k].shape), tuple(own[k].shape)) for k in bad[:3]]}" if bad else "")
        raise CheckpointError(f"weights in '{source}' do not fit this model ({detail.strip()}); was the run's "
                              "config.toml changed after training?")
    model.load_state_dict(tensors)


def load_ema_weights(ckpt: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Put a checkpoint's EMA weights (the ones to sample with) into `model`."""
    load_weights_into(model, _load(ckpt / "ema.safetensors"), ckpt / "ema.safetensors")
    return model.eval()
