"""Image inpainting recipes: one unconditional model (filled by RePaint or plain replacement) and
one mask-conditioned model (trained on random masks), trained on the same data and compared
on the same held-out images and masks."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import torch

from ..core import sample
from ..data.image import build_image_dataset, save_image_grid
from ..data.masks import make_mask
from ..metrics import psnr, ssim
from ..engine.config import ConfigError
from ..engine.precision import resolve_precision
from ..utils import write_json, write_text
from . import image
from ..engine.runs import Run, save_resolved

METHODS = ("repaint", "replace", "reconstruction", "conditioned")


@dataclass
class CompletionSampling:
    """How each completion method samples: the keys the [inpaint] (images) and [predict] (video
    frames) sections share, read by `inpaint` for images, latents and clips alike."""
    SECTION: ClassVar[str] = "inpaint"
    METHODS: ClassVar[tuple[str, ...]] = METHODS
    repaint_sampler: str = "ddpm"     # RePaint: ddpm (the paper) or ddim steps with resampling jumps
    repaint_steps: int = 50
    jump_length: int = 5
    jump_n_sample: int = 5
    replace_sampler: str = "ddpm"     # plain known-region replacement, no resampling
    replace_steps: int = 50
    reconstruction_sampler: str = "ddpm"  # replacement + reconstruction guidance (Ho et al. 2022)
    reconstruction_steps: int = 50
    reconstruction_weight: float = 20.0
    conditioned_sampler: str = "dpmpp_2m"
    conditioned_steps: int = 20
    ssim_window: int = 7
    seed: int = 2

    def __post_init__(self):
        bad = [m for m in getattr(self, "methods", ()) if m not in self.METHODS]  # the sections list methods
        if bad:
            raise ValueError(f"{self.SECTION}.methods: unknown {bad}; choose from {self.METHODS}")


@dataclass
class InpaintConfig(CompletionSampling):
    """The [inpaint] section."""
    train_masks: list[str] = field(default_factory=lambda: ["mixture"])  # masks the conditioned model sees
    eval_masks: list[str] = field(default_factory=lambda: ["center", "left", "box", "strokes"])
    eval_n: int = 100                 # held-out images per mask kind
    methods: list[str] = field(default_factory=lambda: list(METHODS))


SCHEMA = {**image.SCHEMA, "inpaint": InpaintConfig}


def sub_sections(sections: dict, conditioned: bool) -> dict:
    """The plain image config of one of the two models (what its own run directory holds)."""
    out = {k: v for k, v in sections.items() if k in image.SCHEMA}
    out["recipe"] = dataclasses.replace(sections["recipe"], kind="image")
    if conditioned:
        out["model"] = dataclasses.replace(sections["model"], extra_in_channels=sections["data"].channels + 1)
    return out


def is_conditioned(sections: dict) -> bool:
    return sections["model"].extra_in_channels > 0


def inpaint(method: str, sections: dict, model, known: torch.Tensor, mask: torch.Tensor, cfg: InpaintConfig,
            device, bf16: bool, generator: torch.Generator, clip_x0: float | None = 1.0) -> torch.Tensor:
    """Fill mask == 0 of `known` [B, C, H, W] (mask [B or 1, 1, H, W], 1 = known) with `method`.
    clip_x0: the data's range (None for unbounded data such as latents)."""
    if method not in METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {METHODS}")
    C = sections["data"].channels
    if is_conditioned(sections) != (method == "conditioned"):
        need = "a mask-conditioned model (model.extra_in_channels > 0)" if method == "conditioned" else \
            "an unconditional model"
        raise ConfigError(f"method '{method}' needs {need}; this run's model is "
                          f"{'mask-conditioned' if is_conditioned(sections) else 'unconditional'}")
    den = image.denoiser(sections, model, device, bf16)
    noise = torch.randn(known.shape, generator=generator)
    mask = mask.expand(known.shape[0], 1, *known.shape[2:]).to(known.dtype)  # images [.., H, W], clips [.., T, H, W]
    kw = dict(mask=mask, known=known, generator=generator, clip_x0=clip_x0)
    if method == "repaint":
        x = sample(den, noise, cfg.repaint_sampler, steps=cfg.repaint_steps, repaint=(cfg.jump_length,
                                                                                    cfg.jump_n_sample), **kw)
    elif method == "replace":
        x = sample(den, noise, cfg.replace_sampler, steps=cfg.replace_steps, **kw)
    elif method == "reconstruction":
        x = sample(den, noise, cfg.reconstruction_sampler, steps=cfg.reconstruction_steps,
                   reconstruction=cfg.reconstruction_weight, **kw)
    else:
        concat = torch.cat([mask, known * mask], 1)
        assert concat.shape[1] == C + 1
        x = sample(den, noise, cfg.conditioned_sampler, steps=cfg.conditioned_steps, spacing="karras",
                   cond={"concat": concat}, **kw)
    return x.clamp(-clip_x0, clip_x0) if clip_x0 else x


# ---- the pipeline -----------------------------------------------------------------------
def run_recipe(run: Run, dist, resume: bool) -> None:
    image.check_model_fits_data(run)
    run.stage("prepare", ["data"], lambda: image.prepare(run))
    for name, conditioned in (("unconditional", False), ("conditioned", True)):
        sub = sub_sections(run.sections, conditioned)
        sub_dir = run.dir / name
        if dist.is_main:
            save_resolved(sub_dir, sub)
        masks = run["inpaint"].train_masks if conditioned else None
        sub_run = Run(sub_dir, sub, run.log, run.main)
        deps = ["data", "model", "diffusion", "train"] + (["inpaint.train_masks"] if conditioned else [])
        run.stage(f"train_{name}", deps,
                  lambda: image.train(sub_run, dist, resume, mask_kinds=masks))
    if dist.is_main:
        run.stage("evaluate", ["data", "model", "diffusion", "train", "inpaint"], lambda: evaluate(run, dist))


def eval_masks(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([make_mask(kind, size, g) for _ in range(n)])


def evaluate(run: Run, dist) -> dict:
    from .image_eval import digit_classifier, stack

    cfg = run["inpaint"]
    bf16 = resolve_precision(run["train"].precision, dist.device)
    test = build_image_dataset(run["data"], "test")
    originals = stack(test, cfg.eval_n)
    labels = torch.tensor(test.labels[:len(originals)])
    digits = run["data"].source == "digits"
    clf = digit_classifier(run)[0] if digits else None
    models = {}
    for name in ("unconditional", "conditioned"):
        sub = sub_sections(run.sections, name == "conditioned")
        models[name] = (sub, image.load_trained(run.dir / name, sub)[0])
    rows, panels = [], []
    for kind in cfg.eval_masks:
        mask = eval_masks(kind, len(originals), run["data"].size, cfg.seed)
        shown = [originals[:8], (originals * mask - (1 - mask))[:8]]  # holes drawn black
        for method in cfg.methods:
            sub, model = models["conditioned" if method == "conditioned" else "unconditional"]
            t0 = time.perf_counter()
            x = torch.cat([inpaint(method, sub, model, originals[i:i + 100], mask[i:i + 100], cfg, dist.device, bf16,
                                   torch.Generator().manual_seed(cfg.seed + i)) for i in range(0, len(originals), 100)])
            row = {"mask": kind, "method": method, "n": len(x), "seconds_per_image": (time.perf_counter() - t0) / len(x),
                   "psnr_filled": float(psnr(x, originals, mask).mean()),
                   "ssim_filled": float(ssim(x, originals, mask, window=cfg.ssim_window).mean())}
            if clf is not None:
                with torch.no_grad():
                    row["label_agreement"] = float((clf(x).argmax(1) == labels).double().mean())
            rows.append(row)
            shown.append(x[:8])
            run.log(f"[evaluate] {kind}/{method}: psnr {row['psnr_filled']:.2f} ssim {row['ssim_filled']:.3f}"
                    + (f" labels {row['label_agreement']:.3f}" if clf is not None else ""))
        panels.append(torch.cat(shown))
    grid = save_image_grid(torch.cat(panels), run.dir / "samples" / "inpainting.png", nrow=8)
    result = {"rows": rows, "grid": str(grid), "layout": "per mask kind: originals, masked, then one row per method "
              f"({', '.join(cfg.methods)})", "precision": "bf16" if bf16 else "fp32"}
    if clf is not None:
        with torch.no_grad():
            result["label_agreement_originals"] = float((clf(originals).argmax(1) == labels).double().mean())
    write_json(run.dir / "eval.json", result)
    write_text(run.dir / "eval.md", markdown(rows))
    return {"eval": str(run.dir / "eval.json")}


def markdown(rows) -> str:
    has_labels = rows and "label_agreement" in rows[0]
    lines = ["| mask | method | PSNR filled (dB) | SSIM filled |" + (" label agreement |" if has_labels else "")
             + " s/image |", "|---|---|---|---|" + ("---|" if has_labels else "") + "---|"]
    for r in rows:
        lines.append(f"| {r['mask']} | {r['method']} | {r['psnr_filled']:.2f} | {r['ssim_filled']:.3f} |"
                     + (f" {r['label_agreement']:.3f} |" if has_labels else "") + f" {r['seconds_per_image']:.3f} |")
    return "\n".join(lines) + "\n"


def with_steps(cfg, steps: int):
    """cfg ([inpaint] or [predict]) with every method's sampling steps set to `steps` (--steps)."""
    return dataclasses.replace(cfg, **{f.name: steps for f in dataclasses.fields(cfg) if f.name.endswith("_steps")})


def load_for_inpaint(run_dir: Path, method: str, schemas) -> tuple[dict, torch.nn.Module, InpaintConfig]:
    """The model a method needs from a run directory: an inpainting recipe's run (both models inside)
    or a plain image run (unconditional or mask-conditioned)."""
    from ..engine.runs import load_run

    sections = load_run(run_dir, schemas)
    cfg = sections.get("inpaint", InpaintConfig())
    if sections["recipe"].kind == "image_inpainting":
        name = "conditioned" if method == "conditioned" else "unconditional"
        sub = sub_sections(sections, name == "conditioned")
        return sub, image.load_trained(Path(run_dir) / name, sub)[0], cfg
    return sections, image.load_trained(run_dir, sections)[0], cfg
