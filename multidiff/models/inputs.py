"""Input checks every denoiser shares (timesteps, class labels, extra channels), so a wrong call
gets the same clear message from UNet2D, UNet3D and DiffWave."""
from __future__ import annotations

import torch


def check_timesteps(t, batch: int, device) -> torch.Tensor:
    """t as a [B] tensor (a scalar is broadcast), or a ValueError naming the shape it must have."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps t must have shape [B] = [{batch}], got {tuple(t.shape)}")
    return t


def check_labels(y, batch: int, num_classes: int, model: str) -> None:
    """y: None, or integer labels [B] in [0, num_classes] (num_classes itself = the null label)."""
    if y is None:
        return
    if num_classes <= 0:
        raise ValueError(f"labels y were given to an unconditional {model}; "
                         "set [model] num_classes > 0 to train a class-conditional model")
    if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels y must be integer class indices of shape [B] = [{batch}], "
                         f"got {y.dtype} {tuple(y.shape)}")
    if batch and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(f"labels y must lie in [0, {num_classes}] ({num_classes} = the null label), "
                         f"got values in [{int(y.min())}, {int(y.max())}]; check [model] num_classes")


def check_concat(concat, want: tuple, extra: int, model: str, example: str) -> None:
    """concat: the extra input channels (e.g. mask + masked image) a model with extra_in_channels takes."""
    if extra > 0:
        if concat is None:
            raise ValueError(f"this {model} has extra_in_channels = {extra} and needs "
                             f"concat= of shape {want} ({example})")
        if tuple(concat.shape) != want:
            raise ValueError(f"concat must have shape {want}, got {tuple(concat.shape)}; "
                             f"check [model] extra_in_channels")
    elif concat is not None:
        raise ValueError("concat= was given but [model] extra_in_channels = 0; set it to the number of "
                         f"extra channels ({concat.shape[1] if concat.ndim > 1 else '?'})")
