"""Exponential moving average of weights, the model used for sampling."""
from __future__ import annotations

import copy

import torch


class EMA:
    """shadow <- d * shadow + (1 - d) * param, with d warmed up as min(decay, (1 + n) / (10 + n))
    so early, still-random weights are forgotten quickly (the schedule of the DDPM/ADM code)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int) -> None:
        d = self.decay_at(updates)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.lerp_(v.detach().float(), 1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state misses {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    def model_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` holding the EMA weights, in eval mode."""
        m = copy.deepcopy(model)
        m.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return m.eval()
