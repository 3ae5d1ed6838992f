"""The one generation loop for every modality: batches of noise, class labels (cycling through the
classes unless given), classifier-free guidance against the null condition, decoding (latent
models), and what the sample stage and the training previews write."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from ..modalities.base import Trained
from ..modalities.sections import SampleConfig
from ..nn.conditioning import null_condition


def sampling_kwargs(trained: Trained, cfg: SampleConfig, **overrides) -> dict:
    """The core sample() keywords of a [sample]-style config with some keys replaced (sampler, steps,
    spacing, eta, clip_x0), in the modality's terms (e.g. DiffWave's fast schedule)."""
    m, s = trained.modality, trained.sections
    opts = {"sampler": cfg.sampler, "steps": cfg.steps, "spacing": cfg.spacing,
            "eta": cfg.eta_or_none(), **overrides}
    kw = m.sampling(s, opts["sampler"], opts["steps"], opts["spacing"], opts["eta"])
    clip = cfg.clip_x0 if cfg.clip_x0 > 0 else None
    kw["clip_x0"] = opts.get("clip_x0", clip) if m.estimate_clip(s) is not None else None
    return kw


def generate(trained: Trained, n: int, cfg: SampleConfig, device, bf16: bool, *, seed: int | None = None,
             labels: torch.Tensor | None = None, guidance: float | None = None, batch: int = 256,
             progress: bool = True, length: int | None = None, sampler_kw: dict | None = None) -> torch.Tensor:
    """n items in [-1, 1], [n, *signal shape]. Class-conditional models get labels cycling 0..K-1 unless
    given; `guidance` (default: cfg.guidance_scale) != 1 mixes in the null condition's prediction."""
    m, s = trained.modality, trained.sections
    den = trained.denoiser(device, bf16)
    shape = m.sample_shape(s, length)
    K = trained.num_classes
    scale = cfg.guidance_scale if guidance is None else guidance
    g = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    kw = sampling_kwargs(trained, cfg, **(sampler_kw or {}))
    out = []
    for start in tqdm(range(0, n, batch), desc="sample", disable=not progress, leave=False):
        b = min(batch, n - start)
        noise = torch.randn(b, *shape, generator=g)
        cond, extra = dict(m.generation_cond(s, noise.shape)), {}  # (e.g. a frame-conditioned model: no frame known)
        if K > 0:
            y = labels[start:start + b] if labels is not None else torch.arange(start, start + b) % K
            cond["y"] = y
            if scale != 1.0:
                extra = {"guidance_scale": scale, "uncond": null_condition(cond, K)}
        x = trained.sample(den, noise, g, cond, device, **kw, **extra)
        out.append(m.decode(x).clamp(-1, 1).cpu())
    return torch.cat(out)


def check_label_request(trained: Trained, label: int | None, guidance: float | None) -> None:
    """--class and --guidance need a class-conditional model, and a class it knows."""
    K = trained.num_classes
    if label is not None and not 0 <= label < K:
        raise ValueError(f"--class {label}: " + (f"this run has classes 0..{K - 1}" if K else
                         "this run is unconditional ([model] num_classes = 0); drop --class"))
    if guidance not in (None, 1.0) and K == 0:
        raise ValueError("--guidance needs a class-conditional model (classifier-free guidance)")


def sample_stage(run, trained: Trained, device, bf16: bool) -> dict:
    """The recipe's sample stage: [sample] n items into RUN/samples/final(.png or /)."""
    m, cfg = trained.modality, trained.sections["sample"]
    x = generate(trained, cfg.n, cfg, device, bf16)
    written = m.write_samples(x, f"{run.dir / 'samples'}/{m.final_samples}", trained.sections, None,
                              SimpleNamespace(fps=None))
    return {"written": written, "checkpoint": str(trained.checkpoint)}


def previewer(modality, sections: dict, device, bf16: bool, count: int):
    """The trainer's preview hook: `count` samples of the EMA model written as the modality writes them."""
    def preview(model, path: Path) -> None:
        trained = Trained(modality, sections, model, None)
        x = generate(trained, min(sections["sample"].n, count), sections["sample"], device, bf16, progress=False)
        modality.write_preview(x, path, sections)
    return preview
