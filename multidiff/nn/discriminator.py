"""A discriminator built from a pretrained denoiser (as SDXL-Lightning builds its own): a trainable copy of the
network reads a noisy input up to its middle block, a small head judges real or fake from those features. The
copy starts out knowing the data and the noise level, and adapts: a head alone on the *frozen* network's
features (LADD's choice, for a far larger teacher) did not learn here -- on video_moving_digits its loss stayed
at chance through a 250-step round, and against plainly bad clips (2-step DDIM samples of a teacher 250 steps
into its training, judged on that teacher's features) it fell only from 1.0 to 0.9 in 150 steps, where a
trained copy separated them completely in 30. It works for any signal whose model has a middle block (the
image and video U-Nets, a diffusers UNet2DModel).

A model offers itself as a backbone with `middle_block()`: the module whose output is read. The forward pass
stops there (the decoder half is never run), so a discriminator call costs about half a model call.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..core.denoiser import Denoiser


class _Stop(Exception):
    """Raised by the hook once the middle block's output is taken: the rest of the forward pass is not needed."""


def middle_block(model: nn.Module) -> nn.Module | None:
    """The module whose output a feature discriminator reads (None: the model offers none)."""
    fn = getattr(model, "middle_block", None)
    return fn() if callable(fn) else None


def middle_channels(block: nn.Module) -> int:
    """The channels of `block`'s output: those of its last convolution or linear layer (a U-Net's middle block
    ends in a residual block's convolution)."""
    last = None
    for m in block.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            last = m.out_channels
        elif isinstance(m, nn.Linear):
            last = m.out_features
    if last is None:
        raise ValueError(f"cannot tell the output channels of {type(block).__name__}: it has no conv or linear layer")
    return last


def middle_features(model: nn.Module, call, batch: int) -> torch.Tensor:
    """The output of `model`'s middle block as [batch, C, positions] during `call()` (a function that runs `model`
    once on `batch` samples, e.g. through a denoiser view), with the rest of that forward pass skipped. A block
    may give [batch * k, C, ...] with each sample's k rows consecutive (the video U-Net folds frames into the
    batch): they become positions of their sample. Gradients flow to the input."""
    block = middle_block(model)
    if block is None:
        raise ValueError(f"{type(model).__name__} has no middle_block(): it cannot serve as a discriminator backbone")
    taken = []

    def hook(_module, _inputs, output):
        taken.append(output)
        raise _Stop

    handle = block.register_forward_hook(hook)
    try:
        call()
    except _Stop:
        pass
    finally:
        handle.remove()
    if not taken:
        raise ValueError(f"{type(model).__name__}'s forward pass never ran its middle_block()")
    f = taken[0]
    rows, channels = f.shape[0], f.shape[1]
    if rows % batch:
        raise ValueError(f"{type(model).__name__}'s middle block gave {rows} rows for a batch of {batch}")
    return f.reshape(batch, rows // batch, channels, -1).transpose(1, 2).reshape(batch, channels, -1)


class FeatureHead(nn.Module):
    """Real/fake logits from backbone features [B, C, *positions]: a per-position MLP (one logit per position,
    PatchGAN-like: local evidence, averaged by the loss), plus, for class-conditional data, a projection term
    <embed(y), h> (Miyato & Koyama 2018) so the head judges "a real 3" rather than "a real digit". Label
    `num_classes` is the null label (no class), which gets its own embedding."""

    def __init__(self, channels: int, num_classes: int = 0, hidden: int = 0):
        super().__init__()
        hidden = hidden or channels
        self.inner = nn.Linear(channels, hidden)
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.scale = 1 / math.sqrt(hidden)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, feats: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.nn.functional.silu(self.inner(feats.flatten(2).transpose(1, 2).float()))   # [B, N, hidden]
        logits = self.out(h).squeeze(-1)                                                     # [B, N]
        if self.embed is not None and y is not None:
            logits = logits + (h * self.embed(y.long()).unsqueeze(1)).sum(-1) * self.scale
        return logits.float()


class FeatureDiscriminator(nn.Module):
    """Real/fake logits of noisy inputs `z` at level (`t`, `abar`) with the model inputs `cond`: a copy of
    `network` (trained; the original is not touched) seen through `objective` as the denoiser sees it, read up
    to its middle block, and a FeatureHead on those features (class projection from cond["y"] when
    `num_classes`). The copy's learning rate is `backbone_lr_scale` times the head's (param_groups): a
    pretrained network fine-tuned, a new head learned."""

    def __init__(self, network: nn.Module, objective, num_classes: int = 0, backbone_lr_scale: float = 0.1):
        super().__init__()
        self.backbone = copy.deepcopy(network).eval().requires_grad_(True)
        self.head = FeatureHead(middle_channels(middle_block(self.backbone)), num_classes)
        self.view = Denoiser.of(self.backbone, objective)  # (a plain object: not a second copy in state_dict)
        self.backbone_lr_scale = float(backbone_lr_scale)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.head.parameters()), "lr": lr},
                {"params": list(self.backbone.parameters()), "lr": lr * self.backbone_lr_scale}]

    def forward(self, z: torch.Tensor, t, abar, cond: dict) -> torch.Tensor:
        feats = middle_features(self.backbone, lambda: self.view.vp(z, t, abar, **cond), len(z))
        return self.head(feats, cond.get("y"))
