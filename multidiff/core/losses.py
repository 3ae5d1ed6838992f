"""The training loss: noise x0 to a random timestep, regress the model's prediction type."""
from __future__ import annotations

import torch

from .denoiser import check_prediction, target_for
from .schedule import Schedule

WEIGHTINGS = ("uniform", "min_snr")
LOSS_TYPES = ("l2", "l1")
REDUCTIONS = ("mean", "none")


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023), expressed for each target so that every prediction type
    gets the x0-space weight min(SNR, gamma): eps-MSE = SNR * x0-MSE, v-MSE = (SNR + 1) * x0-MSE."""
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1)
    # eps: min(SNR, gamma) / SNR -> 1 as SNR -> 0 (the pure-noise step of a zero-terminal-SNR schedule)
    return torch.where(snr > 0, clipped / snr.clamp(min=1e-20), torch.ones_like(snr))


def diffusion_loss(model, sched: Schedule, x0: torch.Tensor, prediction: str = "eps", weighting: str = "uniform", *,
                   min_snr_gamma: float = 5.0, loss_type: str = "l2", mask: torch.Tensor | None = None,
                   reduction: str = "mean", t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, cond: dict | None = None,
                   error_map=None) -> torch.Tensor:
    """Denoising loss of `model(x_t, t, **cond)` on a batch of clean data x0 [B, C, *dims].

    t (default: uniform integer steps) and noise (default: N(0, I)) may be given for
    reproducibility. `mask` (broadcastable to x0) restricts the loss to where mask = 1, averaged
    over the masked elements of each sample. reduction 'none' returns the per-sample loss [B].
    A noise prior N(0, L L^T) passes `noise` = L eps and `error_map` ~ L^-1, the weighting that makes
    the loss PriorGrad's / SpecGrad's (any fixed positive weighting keeps the optimum, E[target | x_t]).
    """
    check_prediction(prediction)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch [B, C, *dims], got shape {tuple(x0.shape)}")
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, sched.T, (B,), generator=generator, device="cpu").to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    if t.shape != (B,):
        raise ValueError(f"t must have shape [{B}], got {tuple(t.shape)}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)

    ab = sched.alpha_bar_at(t)
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    x_t = sched.add_noise(x0, t, noise)
    out = model(x_t, t.to(x0.device, torch.float32), **(cond or {}))
    if out.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)}, expected the input's {tuple(x0.shape)}")
    target = target_for(prediction, x0, noise, alpha, sigma).to(torch.float32)
    err = out.float() - target
    if error_map is not None:
        err = error_map(err)
    err = err.square() if loss_type == "l2" else err.abs()

    if mask is None:
        per_sample = err.flatten(1).mean(1)
    else:
        m = torch.broadcast_to(mask.to(err.dtype), err.shape)
        per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    if weighting == "min_snr":
        w = min_snr_weight(sched.snr(t), prediction, min_snr_gamma)
        per_sample = per_sample * w.to(per_sample.device, per_sample.dtype)
    return per_sample if reduction == "none" else per_sample.mean()
