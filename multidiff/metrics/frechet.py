"""Frechet distance between two Gaussians fitted to feature sets (FID, FAD, FVD, ...).

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

The trace term is computed from the eigenvalues of the symmetric PSD matrix
S1^1/2 S2 S1^1/2 (which has the same eigenvalues as S1 S2), all in float64. This
never produces the complex values or NaNs that `scipy.linalg.sqrtm(S1 @ S2)` can
give for near-singular products (e.g. fewer samples than feature dimensions),
so no offset fallback is needed; tiny negative eigenvalues from round-off are
clamped to zero.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def limit_threads(n: int | None):
    """Run with at most n intra-op threads (None: leave torch's setting).

    Small convolutions and eigendecompositions gain little from more threads, and on a
    shared CPU extra OpenMP threads spin-wait: measured 6 s on one thread vs 48 s on two
    for the same digit-classifier training while other jobs used the cores, and 1.4 s
    vs 0.02 s for one 128x128 eigh."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _f64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    t = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf; the features it came from are broken "
                         "(check the images fed to the feature extractor)")
    return t


def feature_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] (float64 tensors) of features [N, D].

    Accepts a tensor or numpy array; `frechet_distance` accepts either kind too,
    so statistics saved by other tools (e.g. pytorch-fid .npz files) can be mixed in.
    """
    f = _f64(feats, "features")
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    sigma = torch.atleast_2d(torch.cov(f.T, correction=1))
    return mu, sigma


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), a float >= 0."""
    mu1, mu2 = _f64(mu1, "mu1"), _f64(mu2, "mu2")
    s1, s2 = _f64(sigma1, "sigma1"), _f64(sigma2, "sigma2")
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError("frechet_distance needs mu [D] and sigma [D, D] for both sets with the "
                         f"same D; got mu1 {tuple(mu1.shape)}, sigma1 {tuple(s1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(s2.shape)}")
    s1 = (s1 + s1.T) / 2  # covariances are symmetric; remove round-off asymmetry
    s2 = (s2 + s2.T) / 2
    with limit_threads(1 if d <= 512 else None):
        r1 = _sqrt_psd(s1)
        m = r1 @ s2 @ r1
        eig = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    dist = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * eig.sqrt().sum()
    # round-off can leave a tiny negative value for identical statistics
    return max(float(dist), 0.0)
