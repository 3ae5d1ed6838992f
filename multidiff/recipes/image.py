"""Image generation recipes: prepare data, train the U-Net, sample a grid, evaluate."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core import Denoiser, sample
from ..data.image import ImageData, build_image_dataset, save_image_grid
from ..models.unet2d import UNet2D, UNet2DConfig
from ..engine import TrainConfig, Trainer, latest_checkpoint, load_ema_weights
from ..engine.config import ConfigError
from ..modalities.sections import DiffusionConfig, SampleConfig, batch_loss
from ..engine.distributed import DistInfo
from ..engine.precision import InferenceModel, resolve_precision
from ..engine.runs import Run, section_hash


@dataclass
class ImageEvalConfig:
    """The [eval] section: sample quality vs sampler and steps."""
    n: int = 500                       # samples per table row
    batch: int = 250
    table: list[str] = field(default_factory=lambda: ["ddpm:1000", "ddim:50", "ddim:20", "ddim:10", "dpmpp_2m:20",
                                                      "dpmpp_2m:10", "heun:10"])
    classifier_epochs: int = 12
    inception_weights: str = ""        # local torchvision Inception-v3 weights: FID for non-digit data
    seed: int = 1


SCHEMA = {"data": ImageData, "model": UNet2DConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
          "sample": SampleConfig, "eval": ImageEvalConfig}


def check_model_fits_data(run_or_sections) -> None:
    data, model = run_or_sections["data"], run_or_sections["model"]
    for key, want in (("in_channels", data.channels), ("image_size", data.size)):
        if getattr(model, key) != want:
            raise ConfigError(f"model.{key} = {getattr(model, key)} but the data gives {want} "
                              f"(data.{'channels' if key == 'in_channels' else 'size'}); make them equal")


def fingerprint(sections: dict) -> str:
    """What a checkpoint's weights depend on: a resumed run must agree on it."""
    return section_hash(sections, ["data", "model", "diffusion"])


class ImageTask:
    """Loss and previews for image denoisers; with `mask_kinds`, trains a mask-conditioned model
    (input: x_t + [mask, masked image]) on random masks drawn from those kinds.

    With `latent` (a LatentCodec) it trains in latent space: `sections` is then the latent view
    (data.size/channels of the latents), batches hold cached posterior moments that are sampled
    with the step's seeded draws, masks are drawn at pixel resolution and downsampled, and
    previews are decoded to images."""

    channels_last = True

    def __init__(self, sections: dict, device: torch.device, bf16: bool, mask_kinds: list[str] | None = None,
                 latent=None):
        self.s, self.device, self.bf16 = sections, device, bf16
        self.sched = sections["diffusion"].build_schedule()
        self.mask_kinds, self.latent = mask_kinds, latent

    def loss(self, net, batch, rand):
        x0, y = batch
        x0 = x0.to(self.device)
        if self.latent is not None:
            C, S = self.s["data"].channels, self.s["data"].size  # the latent view: latent channels and size
            x0 = self.latent.from_moments(x0, rand.randn(C, S, S)).to(self.device)
        if self.s["data"].random_flip:
            flip = rand.rand() < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        cond = {}
        if self.s["model"].num_classes > 0:
            cond["y"] = y.to(self.device)
        if self.mask_kinds:
            from ..data.masks import random_masks

            f = self.latent.factor if self.latent is not None else 1
            m = random_masks(rand.global_n, self.s["data"].size * f, self.mask_kinds, generator=rand.generator)
            m = m[rand.part].to(self.device)
            if self.latent is not None:
                m = self.latent.downsample_mask(m)
            cond["concat"] = torch.cat([m, x0 * m], 1).contiguous(memory_format=torch.channels_last)
        return batch_loss(net, self.s["diffusion"], self.sched, x0, rand, cond)

    def preview(self, model, path: Path) -> None:
        if self.mask_kinds:
            return  # a conditioned model needs images to fill; the recipe's evaluation shows those
        x = generate(self.s, model, self.s["sample"], n=min(self.s["sample"].n, 64), device=self.device,
                     bf16=self.bf16, progress=False, decode=self.latent.decode if self.latent else None)
        save_image_grid(x, path, nrow=_nrow(self.s, len(x)))


def _nrow(sections, n: int) -> int:
    return 10 if sections["model"].num_classes == 10 and n % 10 == 0 else max(1, round(math.sqrt(n)))


def build_model(sections: dict, **overrides) -> UNet2D:
    cfg = sections["model"]
    if overrides:
        cfg = UNet2DConfig(**{**cfg.__dict__, **overrides})
    return UNet2D(cfg)


def denoiser(sections: dict, model, device, bf16) -> Denoiser:
    d = sections["diffusion"]
    return Denoiser(InferenceModel(model, device, bf16), d.build_schedule(), d.prediction)


def generate(sections: dict, model, sample_cfg: SampleConfig, n: int, device, bf16: bool, seed: int | None = None,
             labels: torch.Tensor | None = None, guidance: float | None = None, batch: int = 256,
             progress: bool = True, sampler_kw: dict | None = None, decode=None, shape=None) -> torch.Tensor:
    """n samples in [-1, 1]. Class-conditional models get labels cycling 0..K-1 unless given.
    `decode` (latent models): maps each batch of generated latents to images. `shape`: one sample's
    shape when it is not an image [data.channels, data.size, data.size] (a video clip [C, T, H, W])."""
    den = denoiser(sections, model, device, bf16)
    shape = shape or (sections["data"].channels, sections["data"].size, sections["data"].size)
    K = sections["model"].num_classes
    scale = sample_cfg.guidance_scale if guidance is None else guidance
    g = torch.Generator().manual_seed(sample_cfg.seed if seed is None else seed)
    kw = {**sample_cfg.kwargs(), **(sampler_kw or {})}
    out = []
    for start in tqdm(range(0, n, batch), desc="sample", disable=not progress, leave=False):
        b = min(batch, n - start)
        noise = torch.randn(b, *shape, generator=g)
        extra = {}
        if K > 0:
            y = labels[start:start + b] if labels is not None else torch.arange(start, start + b) % K
            extra = {"cond": {"y": y}}
            if scale != 1.0:
                extra.update(guidance_scale=scale, uncond={"y": torch.full_like(y, K)})
        x = sample(den, noise, generator=g, **kw, **extra)
        out.append((decode(x) if decode else x).clamp(-1, 1).cpu())
    return torch.cat(out)


def load_trained(run_dir: Path, sections: dict, device=None) -> tuple[torch.nn.Module, Path]:
    ckpt = latest_checkpoint(Path(run_dir) / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"'{run_dir}' has no checkpoint yet: train it first (multidiff train ...)")
    return load_ema_weights(ckpt, build_model(sections)), ckpt


# ---- the pipeline -----------------------------------------------------------------------
def prepare(run: Run) -> dict:
    train, test = build_image_dataset(run["data"], "train"), build_image_dataset(run["data"], "test")
    return {"train_items": len(train), "test_items": len(test), "classes": train.num_classes,
            "skipped": [f"{p}: {r}" for p, r in train.skipped + test.skipped]}


def train(run: Run, dist: DistInfo, resume: bool, run_dir: Path | None = None, mask_kinds=None,
          model_overrides: dict | None = None, dataset=None, latent=None) -> dict:
    """`dataset` and `latent` (a LatentCodec): train on cached latents (recipes/latent.py)."""
    run_dir = run_dir or run.dir
    sections = run.sections
    dataset = dataset if dataset is not None else build_image_dataset(sections["data"], "train")
    if sections["model"].num_classes and sections["model"].num_classes != dataset.num_classes:
        raise ConfigError(f"model.num_classes = {sections['model'].num_classes} but the data has "
                          f"{dataset.num_classes} classes; set model.num_classes = {dataset.num_classes} (or 0)")
    model = build_model(sections, **(model_overrides or {}))
    bf16 = resolve_precision(sections["train"].precision, dist.device)
    task = ImageTask(sections, dist.device, bf16, mask_kinds, latent)
    fp = fingerprint(sections) + (f"+masks:{','.join(mask_kinds)}" if mask_kinds else "")
    if latent is not None:
        fp += f"+autoencoder:{latent.identity()['weights_sha256']}"
    trainer = Trainer(model, dataset, task, sections["train"], run_dir, dist=dist, fingerprint=fp)
    ckpt = trainer.fit(resume=resume)
    return {"checkpoint": str(ckpt), "precision": "bf16" if trainer.bf16 else "fp32"}


def sample_stage(run: Run, dist: DistInfo, decode=None) -> dict:
    model, ckpt = load_trained(run.dir, run.sections)
    bf16 = resolve_precision(run["train"].precision, dist.device)
    x = generate(run.sections, model, run["sample"], run["sample"].n, dist.device, bf16, decode=decode)
    path = save_image_grid(x, run.dir / "samples" / "final.png", nrow=_nrow(run.sections, len(x)))
    return {"grid": str(path), "checkpoint": str(ckpt)}


def run_recipe(run: Run, dist: DistInfo, resume: bool) -> None:
    from .image_eval import evaluate

    check_model_fits_data(run)
    run.stage("prepare", ["data"], lambda: prepare(run))
    run.stage("train", ["data", "model", "diffusion", "train"], lambda: train(run, dist, resume))
    if dist.is_main:
        run.stage("sample", ["data", "model", "diffusion", "train", "sample"], lambda: sample_stage(run, dist))
        run.stage("evaluate", ["data", "model", "diffusion", "train", "eval"], lambda: evaluate(run, dist))
