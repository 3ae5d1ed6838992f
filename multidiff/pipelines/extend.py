"""Clips longer than a model's training clips, and clips that start from given frames (a still as
frame 0): window by window along the time axis (axis 2 of [B, C, T, ...]), each window of the trained
length.

  autoregressive (the default; a frame-conditioned model trained with the "prefix" pattern): the first
      window is generated (or completed from its known frames), then each next window starts with the
      last `context` frames of what exists -- given to the model as known frames and kept exactly --
      and generates the rest (MCVD's block-wise sampling, Voleti et al. 2022). Frames known from the
      start (a still, frames of an input clip) are known in every window that holds them.
  fusion (`--overlap-fusion`; any video model): windows overlapping by `context` frames are denoised
      together, and at every step the model's outputs are averaged where windows overlap
      (MultiDiffusion, Bar-Tal et al. 2023; FreeNoise, Qiu et al. 2024, does this along time), so the
      long clip is one sample rather than a chain. `noise="rescheduled"` starts from FreeNoise's
      noise: each later stretch of frames reuses a shuffle of the first window's noise frames.

Every model output (eps, x0, v, flow, EDM) is an affine function of the clean estimate with the same
coefficients for every frame at a given level, so averaging outputs is averaging clean estimates.
In an autoencoder's latent space windows are chained in latents (context latents kept exactly),
decoded once at the end, and the known pixel frames pasted back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..modalities.base import Modality, Trained
from ..modalities.sections import SampleConfig
from ..nn.conditioning import null_condition
from .generate import sampling_kwargs

NOISES = ("independent", "rescheduled")


@dataclass(frozen=True)
class Extension:
    """Windows of `block` frames, consecutive ones sharing `context` frames; `fusion`: denoised jointly."""
    block: int
    context: int
    fusion: bool = False
    noise: str = "independent"   # fusion's starting noise: independent | rescheduled (FreeNoise)

    def __post_init__(self):
        if not 1 <= self.context < self.block:
            raise ValueError(f"windows of {self.block} frames can share 1 to {self.block - 1} frames, "
                             f"not {self.context}")
        if self.noise not in NOISES:
            raise ValueError(f"unknown fusion noise {self.noise!r}; choose from {NOISES}")

    def starts(self, total: int) -> list[int]:
        """The first frame of each window; the last window may run past `total` (its tail is dropped)."""
        starts = [0]
        while starts[-1] + self.block < total:
            starts.append(starts[-1] + self.block - self.context)
        return starts


def plan(modality: Modality, sections: dict, length: int | None, context: int | None = None,
         fusion: bool = False, still: bool = False, run_dir="the run") -> Extension | None:
    """How to make clips of `length` frames (None: the run's default length): None = in one pass, as
    always (they fit the trained window, or the model is plain and no option asks for windows); a
    ValueError (one line for the user) where --context / --overlap-fusion / a still cannot apply."""
    block = modality.block_length(sections)
    if block is None:
        if still:
            raise ValueError(f"'{run_dir}' holds a {modality.name} model: `multidiff animate` needs a video run")
        if context is not None or fusion:
            raise ValueError("--context and --overlap-fusion apply to video runs only")
        return None
    total = length or modality.sample_shape(sections, None)[1]
    if block < 2 and (context is not None or fusion or still or total > block):
        raise ValueError(f"'{run_dir}' was trained on clips of {block} frame: it cannot continue a clip window by "
                         "window")
    if context is not None and not 1 <= context < block:
        raise ValueError(f"--context {context}: windows of the model's {block} frames can share 1 to {block - 1} "
                         "frames")
    k = context if context is not None else block // 2
    if fusion:
        return Extension(block, k, fusion=True)
    continues = modality.conditioned(sections) and modality.continues(sections)
    if still or context is not None or (total > block and continues):
        if not continues:
            what = "animate a still" if still else "extend clips block by block (--context)"
            raise ValueError(f"'{run_dir}' cannot {what}: that needs a frame-conditioned model trained to continue "
                             "from known first frames ([video] known_patterns with \"prefix\", e.g. [\"none\", "
                             "\"prefix\", \"ends\"]); with this model use --overlap-fusion")
        return Extension(block, k)
    return None


def class_labels(num_classes: int, n: int, label: int | None) -> torch.Tensor | None:
    """Labels as `multidiff sample` draws them: the given class, else 0..K-1 cycling (None: unconditional)."""
    if num_classes <= 0:
        return None
    return torch.full((n,), label) if label is not None else torch.arange(n) % num_classes


@torch.no_grad()
def extend(trained: Trained, n: int, total: int | None, ext: Extension, cfg: SampleConfig, device, bf16: bool, *,
           labels: torch.Tensor | None = None, guidance: float | None = None, seed: int | None = None,
           known: torch.Tensor | None = None, mask: torch.Tensor | None = None, batch: int = 64,
           progress: bool = True) -> torch.Tensor:
    """n clips of `total` frames (None: the run's default length) in [-1, 1], [n, C, total, ...], window by
    window (module docstring).
    labels [n] (None: the null label); `guidance` (default cfg.guidance_scale) needs labels. known
    [1 or n, C, total, ...] with mask [1 or n, 1, total, 1, 1] (1 = known): those frames come out exactly."""
    m, s = trained.modality, trained.sections
    total = total or m.sample_shape(s, None)[1]
    starts = ext.starts(total)
    L = starts[-1] + ext.block
    shape = m.sample_shape(s, L)                                   # model space: [C, L, ...]
    if (known is None) != (mask is None):
        raise ValueError("extend: give `known` and `mask` together")
    if known is not None:
        pad = [0, 0] * (known.ndim - 3) + [0, L - total]
        known_l = torch.nn.functional.pad(known.float(), pad)
        mask_l = torch.nn.functional.pad(mask.float(), [0, 0] * (mask.ndim - 3) + [0, L - total])
        z_known, z_mask = m.encode(known_l).cpu().float(), m.encode_mask(mask_l).cpu().float()
    else:
        z_known, z_mask = torch.zeros(1, *shape), torch.zeros(1, 1, L, *[1] * (len(shape) - 2))
    den = trained.denoiser(device, bf16)
    kw = sampling_kwargs(trained, cfg)
    scale = cfg.guidance_scale if guidance is None else guidance
    guided = labels is not None and trained.num_classes > 0 and scale != 1.0
    g = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    out = []
    for b0 in range(0, n, batch):
        b = min(batch, n - b0)
        zk, zm = (t[b0:b0 + b] if t.shape[0] > 1 else t.expand(b, *t.shape[1:]) for t in (z_known, z_mask))
        y = labels[b0:b0 + b] if labels is not None else None
        window = _Window(trained, den, kw, scale if guided else 1.0, y, g, device)
        z = _fused(window, ext, starts, zk, zm) if ext.fusion else _chained(window, ext, starts, zk, zm, progress)
        out.append(m.decode(z[:, :, :total]).clamp(-1, 1).cpu())
    x = torch.cat(out)
    if known is not None:  # exactly the given frames (a latent decoder only approximates them)
        x = torch.where(mask.bool(), known.to(x.dtype), x)
    return x


class _Window:
    """One call of the sampler on a window: labels, guidance, the known frames as model input (a
    frame-conditioned model) and by replacement (every model), the rest generated."""

    def __init__(self, trained: Trained, den, kw: dict, scale: float, y, generator, device):
        self.trained, self.den, self.kw, self.scale, self.y, self.g, self.device = \
            trained, den, kw, scale, y, generator, device

    def __call__(self, noise: torch.Tensor, known: torch.Tensor, mask: torch.Tensor, den=None) -> torch.Tensor:
        t, m = self.trained, self.trained.modality
        cond = {}
        if m.conditioned(t.sections):
            cond["concat"] = torch.cat([mask.expand(noise.shape[0], 1, *noise.shape[2:]), known * mask], 1)
        if self.y is not None:
            cond["y"] = self.y
        extra = {}
        if self.scale != 1.0:
            extra = {"guidance_scale": self.scale, "uncond": null_condition(cond, t.num_classes)}
        if bool(mask.any()):
            extra.update(mask=mask, known=known)
        return t.sample(den or self.den, noise, self.g, cond, self.device, **self.kw, **extra)


def _chained(window: _Window, ext: Extension, starts, zk, zm, progress: bool) -> torch.Tensor:
    z, have = zk.clone(), zm.clone()
    B, C, _, *space = z.shape
    for s0 in tqdm(starts, desc="windows", disable=not progress or len(starts) < 2, leave=False):
        w = slice(s0, s0 + ext.block)
        wm = have[:, :, w]                   # the context frames (generated before) and frames known from the start
        noise = torch.randn(B, C, ext.block, *space, generator=window.g)
        x = window(noise, z[:, :, w] * wm, wm)
        z[:, :, w] = torch.where(wm.bool(), z[:, :, w], x.to(z.device, z.dtype))
        have[:, :, w] = 1
    return z


def _fused(window: _Window, ext: Extension, starts, zk, zm) -> torch.Tensor:
    B, C, L, *space = zk.shape
    if ext.noise == "rescheduled":
        noise = rescheduled_noise(B, C, L, space, ext.block, window.g)
    else:
        noise = torch.randn(B, C, L, *space, generator=window.g)
    den = window.den.with_model(WindowFusion(window.den.model, starts, ext.block))
    x = window(noise, zk * zm, zm, den=den)
    return torch.where(zm.bool(), zk, x.to(zk.device, zk.dtype))


def rescheduled_noise(B: int, C: int, L: int, space, block: int, generator) -> torch.Tensor:
    """FreeNoise's noise rescheduling: the first window's noise, then each further stretch of up to `block`
    frames a random permutation of those noise frames (long-range correlation, locally shuffled)."""
    first = torch.randn(B, C, block, *space, generator=generator)
    parts, have = [first], block
    while have < L:
        take = min(block, L - have)
        parts.append(first[:, :, torch.randperm(block, generator=generator)[:take]])
        have += take
    return torch.cat(parts, 2)


class WindowFusion(torch.nn.Module):
    """A model wrapper: the model run on each window of a long clip (condition tensors with the clip's
    length sliced alike), outputs averaged where windows overlap."""

    def __init__(self, model, starts: list[int], block: int):
        super().__init__()
        self.model, self.starts, self.block = model, list(starts), block

    def forward(self, x, t, **cond):
        L = x.shape[2]
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        count = torch.zeros(L, dtype=torch.float32, device=x.device)
        for s0 in self.starts:
            w = slice(s0, s0 + self.block)
            c = {k: v[:, :, w] if torch.is_tensor(v) and v.ndim >= 3 and v.shape[2] == L else v
                 for k, v in cond.items()}
            out[:, :, w] += self.model(x[:, :, w], t, **c).to(out.device, torch.float32)
            count[w] += 1
        return out / count.view(1, 1, L, *[1] * (x.ndim - 3))
