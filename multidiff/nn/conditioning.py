"""Conditioning, defined once for every denoiser: the label embedding with its null label, condition
dropout in training, and the null (unconditional) branch classifier-free guidance runs.

Classifier-free guidance (Ho & Salimans 2022) needs an unconditional model inside the conditional
one: a label table has one extra row, index num_classes, meaning 'no label'; in training a share
`class_dropout` of the labels is replaced by it, so that row learns p(x); at sampling the null
branch is the same condition with the label set to it. A model without a label (y=None) gets the
null label. A new conditioning (text, speaker) adds its embedding and its null entry here.
"""
from __future__ import annotations

import torch
from torch import nn


def check_class_dropout(value) -> float:
    """value as a float in [0, 1] (the share of labels dropped in training), or a ValueError naming the key."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:  # NaN fails too
        raise ValueError(f"[model] class_dropout must be in [0, 1], got {value}")
    return p


def null_condition(cond: dict, num_classes: int) -> dict:
    """The unconditional branch of `cond` for classifier-free guidance: the same keys (a mel, a concat
    stay, they are not what guidance contrasts), with the labels y replaced by the null label num_classes.
    Without labels (no y, or y=None) the model already uses the null label, and cond comes back as a copy."""
    if num_classes <= 0:
        raise ValueError(f"classifier-free guidance needs a class-conditional model ([model] num_classes > 0), "
                         f"got num_classes = {num_classes}")
    out = dict(cond)
    y = out.get("y")
    if y is not None:
        out["y"] = torch.full_like(torch.as_tensor(y), num_classes)
    return out


class LabelEmbedding(nn.Embedding):
    """nn.Embedding(num_classes + 1, dim) whose last row is the null label.

    A subclass, so a model's state dict keeps `<attr>.weight` (checkpoints and lmnt-com/diffwave
    imports load as they are) and the initialisation draws are those of nn.Embedding. Calling it
    looks labels up, as nn.Embedding does; `labels()` resolves y first (None -> the null label,
    condition dropout in training) and `embed()` does both.
    """

    def __init__(self, num_classes: int, dim: int, dropout: float = 0.0):
        if int(num_classes) <= 0:
            raise ValueError(f"a label embedding needs num_classes > 0, got {num_classes}")
        super().__init__(int(num_classes) + 1, dim)
        self.num_classes = int(num_classes)
        self.dropout = check_class_dropout(dropout)

    @property
    def null_label(self) -> int:
        """The label index meaning 'no class' (classifier-free guidance)."""
        return self.num_classes

    def labels(self, y: torch.Tensor | None, batch: int, device, dropout: float | None = None) -> torch.Tensor:
        """The labels to look up: y=None -> the null label for each of `batch` rows (on `device`);
        in training, each label replaced by the null label with probability `dropout` (default: the
        one given at construction; the models pass their config's, read per call).

        The random draw is one torch.rand(y.shape, device=y.device), made only in training with
        dropout > 0, so seeded runs draw exactly what they drew before this module existed."""
        p = self.dropout if dropout is None else dropout
        if y is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        if self.training and p > 0:
            drop = torch.rand(y.shape, device=y.device) < p
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        return y

    def embed(self, y: torch.Tensor | None, batch: int, device, dropout: float | None = None) -> torch.Tensor:
        """[batch, dim] embeddings of labels() (a forward hook on this module sees the resolved labels)."""
        return self(self.labels(y, batch, device, dropout).long())

    def extra_repr(self) -> str:
        return f"{self.num_classes} classes + null, {self.embedding_dim}, dropout={self.dropout}"
