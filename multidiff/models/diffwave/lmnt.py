"""Loading lmnt-com/diffwave checkpoints (`weights.pt`) into our DiffWave without unpickling
arbitrary objects."""
from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from dataclasses import fields

import torch

from .model import DiffWave, DiffWaveConfig, derive_upsample_strides


class _AttrDictStandIn:
    """What a pickled `diffwave.params.AttrDict` becomes: an OrderedDict, nothing executed. (torch's
    weights_only unpickler fills only exact dict / OrderedDict types, and lmnt's AttrDict pickles its
    __dict__, which is the dict itself: OrderedDict takes that state harmlessly.)"""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


_SAFE_GLOBALS = [(_AttrDictStandIn, "diffwave.params.AttrDict")]


def _read(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to load {path}: it needs Python objects beyond tensors, plain containers and "
                         f"lmnt's AttrDict, and unpickling them could run arbitrary code ({str(err).splitlines()[0]}). "
                         "If you trust the file, convert it to a state dict or safetensors yourself.") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"could not read {path} as a torch checkpoint: {err}") from None


def _config_from(state: dict, params: dict) -> dict:
    """Model settings from lmnt's params where present, else from the weights' shapes."""
    kw = {}
    if "input_projection.weight" not in state:
        raise ValueError("this is not a DiffWave state dict (no 'input_projection.weight'); keys start with "
                         f"{sorted(state)[:5]}")
    kw["residual_channels"] = state["input_projection.weight"].shape[0]
    kw["residual_layers"] = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("residual_layers."))
    cw = state.get("residual_layers.0.conditioner_projection.weight")
    kw["n_mels"] = int(cw.shape[1]) if cw is not None else 0
    ups = sorted(int(k[len("spectrogram_upsampler.conv"):].split(".")[0]) for k in state
                 if k.startswith("spectrogram_upsampler.conv") and k.endswith(".weight"))
    if ups:
        kw["upsample_strides"] = [int(state[f"spectrogram_upsampler.conv{j}.weight"].shape[-1]) // 2 for j in ups]
        kw["hop_length"] = math.prod(kw["upsample_strides"])
    if "label_embedding.weight" in state:
        kw["num_classes"] = state["label_embedding.weight"].shape[0] - 1
    if "dilation_cycle_length" in params:
        kw["dilation_cycle"] = int(params["dilation_cycle_length"])
    if "noise_schedule" in params:
        kw["max_steps"] = len(params["noise_schedule"])
    if "hop_samples" in params and kw.get("n_mels"):
        kw["hop_length"] = int(params["hop_samples"])
    if ups:
        try:  # keep the config minimal when the weights use the strides the hop derives anyway
            if derive_upsample_strides(kw["hop_length"]) == kw["upsample_strides"]:
                kw["upsample_strides"] = []
        except ValueError:
            pass
    return kw


def load_lmnt_checkpoint(path, **config_overrides) -> DiffWave:
    """A DiffWave (eval mode) from lmnt's `weights.pt` / `weights-XXXX.pt` (or the model directory
    holding weights.pt), a plain state dict file, or safetensors. Read with weights_only=True: only
    tensors, plain containers and lmnt's AttrDict (as a plain dict) are unpickled; anything else is
    refused. Settings come from the checkpoint's `params` and the weights' shapes; keyword
    overrides (DiffWaveConfig fields) win, e.g. dilation_cycle for a plain state dict."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "weights.pt")
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}; pass lmnt's weights.pt (or its model directory)")
    ckpt = _read(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict or state dict")
    state, params = (ckpt["model"], dict(ckpt.get("params") or {})) if "model" in ckpt else (ckpt, {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'model' is not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DistributedDataParallel prefix
    kw = _config_from(state, params)
    if params.get("unconditional"):
        kw["n_mels"] = 0
    valid = {f.name for f in fields(DiffWaveConfig)}
    bad = sorted(set(config_overrides) - valid)
    if bad:
        raise ValueError(f"unknown DiffWave setting(s) {bad}; valid: {sorted(valid)}")
    kw.update(config_overrides)
    model = DiffWave(DiffWaveConfig(**kw))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit a DiffWave with {kw}: {err}") from None
    return model.eval()
