"""The loss template every training objective shares (objectives.py holds the objectives themselves):
the per-sample random draws it takes, the clean estimate it returns, and `Objective` -- the noise
level drawn for each sample, the network's input at that level, the target, the weight, and the
loss with error map, l1/l2, mask and reduction."""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import torch

from .schedule import Schedule

WEIGHTINGS = ("uniform", "min_snr")
LOSS_TYPES = ("l2", "l1")
REDUCTIONS = ("mean", "none")


class Estimate(NamedTuple):
    x0: torch.Tensor
    eps: torch.Tensor


def bcast(v, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample [B] quantity shaped to broadcast over [B, C, *dims]."""
    if isinstance(v, float | int) or (isinstance(v, torch.Tensor) and v.ndim == 0):
        return float(v)  # python scalars broadcast for free and keep the tensor's dtype
    v = torch.as_tensor(v, dtype=torch.float64)
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


class Draws(Protocol):
    """The random draws of one batch, one row per sample. The trainer's BatchRandom is one (its
    draws do not depend on the number of processes); GeneratorDraws is the plain one."""

    def randint(self, high: int) -> torch.Tensor: ...

    def randn(self, *shape: int) -> torch.Tensor: ...

    def rand(self, *shape: int) -> torch.Tensor: ...


class GeneratorDraws:
    """Draws for a batch of n from one torch.Generator (None: torch's global one) on the CPU;
    normal draws come in `dtype`, so that the stream is the one a plain torch.randn would give."""

    def __init__(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        self.n, self.generator, self.dtype = n, generator, dtype

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, (self.n, *shape), generator=self.generator, device="cpu")

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn((self.n, *shape), generator=self.generator, dtype=self.dtype, device="cpu")

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand((self.n, *shape), generator=self.generator, dtype=self.dtype, device="cpu")


def check_batch(x0: torch.Tensor) -> None:
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch [B, C, *dims], got shape {tuple(x0.shape)}")


def _same_layout(noise: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    for ndim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if like.ndim == ndim and like.is_contiguous(memory_format=fmt):
            return noise.contiguous(memory_format=fmt)  # x_t keeps the fast layout
    return noise


class Objective:
    """The loss template. A subclass sets `name` and defines the level draw, the network input,
    the target, the signal-to-noise ratio at a level and its min-SNR weight expression; and, for
    the Denoiser, `denoise` / `denoise_vp` (and `input_scale_vp`, what the network input is in
    units of the VP state). A "level" is the objective's own noise variable: a timestep for VP,
    the flow time t for flow matching, sigma for EDM."""

    name = ""
    schedule_type: type = Schedule   # the level map it runs over (Denoiser.schedule, the levels samplers walk)
    defined_at_pure_noise = True     # False where the clean estimate is undefined at abar = 0

    def __init__(self, schedule, weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 loss_type: str = "l2"):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        self.schedule = schedule
        self.weighting, self.min_snr_gamma, self.loss_type = weighting, float(min_snr_gamma), loss_type

    # ---- what a subclass defines -------------------------------------------------------
    def draw_t(self, draws: Draws) -> torch.Tensor:
        """The noise level of each sample, float64 [B] on the CPU."""
        raise NotImplementedError

    def network_input(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """(x_in, c_noise): what the network is called with at levels t for this noise."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def min_snr_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """The weight that makes this objective's loss min(SNR, gamma) times the x0-space error."""
        raise NotImplementedError

    def denoise(self, raw: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma) -> torch.Tensor:
        """The clean estimate at the VE state x = x0 + sigma eps; `raw(x_in)` calls the network once
        (at the level's noise input). sigma: a float, or per-sample [B]."""
        raise NotImplementedError

    def denoise_vp(self, raw, x_vp: torch.Tensor, alpha, sigma) -> Estimate:
        """(x0, eps) at the VP state x_vp = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1)."""
        raise NotImplementedError

    def input_scale_vp(self, alpha, sigma):
        """The network's input is input_scale_vp * x_vp (1.0: the VP state itself)."""
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------
    def draw_noise(self, draws: Draws, x0: torch.Tensor) -> torch.Tensor:
        return _same_layout(draws.randn(*x0.shape[1:]).to(x0.device, x0.dtype), x0)

    def weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weight [B]; None for uniform weighting (no multiply at all)."""
        if self.weighting == "uniform":
            return None
        return self.min_snr_weight(self.snr(t), self.min_snr_gamma)

    def loss(self, model, x0: torch.Tensor, draws: Draws | None = None, *, t=None, noise: torch.Tensor | None = None,
             cond: dict | None = None, mask: torch.Tensor | None = None, noise_color=None, error_map=None,
             reduction: str = "mean") -> torch.Tensor:
        """Denoising loss of `model(x_in, c_noise, **cond)` on a batch of clean data x0 [B, C, *dims].

        t, then noise, are drawn from `draws` unless given (in that order: the random streams of a
        run depend on it). `mask` (broadcastable to x0) restricts the loss to where mask = 1,
        averaged over the masked elements of each sample; reduction 'none' returns the per-sample
        loss [B]. A noise prior N(0, L L^T) passes `noise_color` = L (applied to the drawn noise) or
        `noise` = L eps, and `error_map` ~ L^-1, the weighting that makes the loss PriorGrad's /
        SpecGrad's (any fixed positive weighting keeps the optimum, E[target | x_t]).
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        check_batch(x0)
        B = x0.shape[0]
        if (t is None or noise is None) and draws is None:
            raise ValueError("give `draws` (or a torch.Generator to diffusion_loss) to draw t / noise from")
        if t is None:
            t = self.draw_t(draws)
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if t.shape != (B,):
            raise ValueError(f"t must have shape [{B}], got {tuple(t.shape)}")
        if noise is None:
            noise = self.draw_noise(draws, x0)
            if noise_color is not None:
                noise = noise_color(noise)
        elif noise_color is not None:
            raise ValueError("give `noise` already colored, or `noise_color` to color the drawn noise, not both")

        x_in, c_noise = self.network_input(x0, t, noise)
        out = model(x_in, c_noise, **(cond or {}))
        if out.shape != x0.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}, expected the input's {tuple(x0.shape)}")
        err = out.float() - self.training_target(x0, t, noise).to(torch.float32)
        if error_map is not None:
            err = error_map(err)
        err = err.square() if self.loss_type == "l2" else err.abs()

        if mask is None:
            per_sample = err.flatten(1).mean(1)
        else:
            m = torch.broadcast_to(mask.to(err.dtype), err.shape)
            per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
        w = self.weight(t)
        if w is not None:
            per_sample = per_sample * w.to(per_sample.device, per_sample.dtype)
        return per_sample if reduction == "none" else per_sample.mean()
