"""Per-image PSNR and SSIM for [B, C, H, W] images in [-1, 1], optionally on the filled region only.

With a mask (1 = known, broadcastable to the images, e.g. [B, 1, H, W]) the
metric is computed over the pixels where mask == 0, i.e. the part a model had
to inpaint; the known part is copied from the reference and would only inflate
the score.

SSIM follows Wang et al. 2004 as implemented by scikit-image with
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False`: an 11-tap
Gaussian window (radius int(3.5 * sigma + 0.5)), statistics in float64, and the
SSIM map computed at full size with symmetric ("reflect" in scipy) padding.
Without a mask the map is averaged over the interior (a window-radius strip at
the border is dropped), which is exactly scikit-image's number. With a mask the
map is averaged over every filled pixel, border included, because holes often
touch the border (outpainting); so a mask of all zeros gives the mean of the
full map, a slightly different number from mask=None.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_K1, _K2 = 0.01, 0.03


def _check(a: torch.Tensor, b: torch.Tensor, mask, fn: str):
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"{fn}: expected two tensors [B, C, H, W] of the same shape, got "
                         f"{tuple(getattr(a, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}")
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{fn}: the images contain NaN/inf")
    if mask is None:
        return a, b, None
    mask = torch.as_tensor(mask).detach().to(a.device)
    try:
        filled = (mask == 0).expand_as(a)
    except RuntimeError:
        raise ValueError(f"{fn}: mask of shape {tuple(mask.shape)} does not broadcast to the "
                         f"images {tuple(a.shape)}; pass [B, 1, H, W] or [B, C, H, W] "
                         "(1 = known, 0 = filled)") from None
    empty = ~filled.flatten(1).any(1)
    if empty.any():
        raise ValueError(f"{fn}: the mask marks every pixel as known (1) for sample(s) "
                         f"{empty.nonzero().flatten().tolist()}, so there is no filled region "
                         "to score; pass mask=None to score whole images")
    return a, b, filled


def psnr(a, b, mask=None, data_range: float = 2.0) -> torch.Tensor:
    """PSNR in dB per sample, [B] float64 (inf where the images are equal)."""
    a, b, filled = _check(a, b, mask, "psnr")
    err = (a - b).square()
    if filled is None:
        mse = err.flatten(1).mean(1)
    else:
        w = filled.double()
        mse = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_taps(window: int, sigma: float) -> torch.Tensor:
    r = window // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of [N, 1, H, W] with scipy's 'reflect' (edge-repeating) padding."""
    p = taps.numel() // 2
    x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], -1)
    x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], -2)
    x = F.conv2d(x, taps.view(1, 1, 1, -1))
    return F.conv2d(x, taps.view(1, 1, -1, 1))


def ssim_map(a, b, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Full-size SSIM map [B, C, H, W] (float64), as scikit-image's `full=True` returns."""
    a, b, _ = _check(a, b, None, "ssim")
    if window not in (7, 11):
        raise ValueError(f"ssim: window must be 7 or 11, got {window}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: images of {a.shape[-2]}x{a.shape[-1]} are smaller than the "
                         f"{window}x{window} window; pass window=7 or score larger images")
    taps = _gaussian_taps(window, sigma).to(a.device)
    B, C, H, W = a.shape
    # one batched filter call over the five statistics of every channel
    stacked = torch.stack([a, b, a * a, b * b, a * b]).reshape(5 * B * C, 1, H, W)
    ux, uy, uxx, uyy, uxy = _blur(stacked, taps).reshape(5, B, C, H, W)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim(a, b, mask=None, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per sample, [B] float64 (see the module docstring for the averaging region)."""
    _, _, filled = _check(a, b, mask, "ssim")
    s = ssim_map(a, b, data_range, window, sigma)
    if filled is None:
        p = window // 2
        return s[..., p:-p, p:-p].flatten(1).mean(1)
    w = filled.double()
    return (s * w).flatten(1).sum(1) / w.flatten(1).sum(1)


__all__ = ["psnr", "ssim", "ssim_map"]
