"""Autoencoder recipes: train the KL autoencoder of latent diffusion with the shared Trainer, then
compute its latent scale and held-out reconstruction quality.

Stages: prepare (data) -> train -> scale (1/std of train-set latents, written with the weights'
hash to RUN/autoencoder.json, which latent recipes read) -> evaluate (held-out PSNR/SSIM).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ..data.image import ImageData, build_image_dataset, save_image_grid
from ..metrics import psnr, ssim
from ..models.autoencoder import Autoencoder, AutoencoderConfig, PatchDiscriminator, gan_losses
from ..engine import TrainConfig, Trainer, latest_checkpoint
from ..engine.checkpoint import load_optimizer_tensors, optimizer_tensors
from ..engine.precision import autocast, resolve_precision
from ..utils import write_json, write_text
from . import image
from .latent_codec import INFO_FILE, LatentCodec, load_autoencoder, weights_hash
from ..engine.runs import Run, section_hash


@dataclass
class AutoencoderLoss:
    """The [loss] section. Reconstruction is a per-pixel mean; the KL (summed over latent elements)
    is divided by the pixels per image, so kl_weight has the meaning of latent-diffusion's
    kl_weight on summed losses (1e-6 there)."""
    reconstruction: str = "l1"        # l1 | l2
    kl_weight: float = 1e-6
    disc_weight: float = 0.0          # > 0: PatchGAN loss (after disc_start steps); 0 = off
    disc_start: int = 1000
    gan_loss: str = "hinge"           # hinge | non_saturating
    adaptive_weight: bool = True      # scale the GAN term by |grad rec| / |grad gan| at the decoder's last layer
    disc_lr: float = 0.0              # 0 = train.lr
    disc_channels: int = 32
    disc_layers: int = 2

    def __post_init__(self):
        if self.reconstruction not in ("l1", "l2"):
            raise ValueError(f"loss.reconstruction must be 'l1' or 'l2', got {self.reconstruction!r}")
        gan_losses(self.gan_loss)
        if self.kl_weight < 0 or self.disc_weight < 0:
            raise ValueError("loss.kl_weight and loss.disc_weight must be >= 0")


@dataclass
class AutoencoderEval:
    """The [eval] section: held-out reconstruction quality."""
    n: int = 0                        # held-out images (0 = the whole test split)
    ssim_window: int = 7              # small images: a 7-tap window (11 needs >= 11 px)
    batch: int = 100


SCHEMA = {"data": ImageData, "model": AutoencoderConfig, "loss": AutoencoderLoss, "train": TrainConfig,
          "eval": AutoencoderEval}


def _unwrap(net):
    return getattr(net, "module", net)  # DistributedDataParallel


class AutoencoderTask:
    """Reconstruction + KL loss of the autoencoder; with loss.disc_weight > 0 also a PatchGAN, trained by
    the Trainer's after_step hook with its own optimizer and saved in each checkpoint (extra_state)."""

    channels_last = True

    def __init__(self, sections: dict, device, bf16: bool, preview_images: torch.Tensor):
        self.s, self.cfg, self.device, self.bf16 = sections, sections["loss"], device, bf16
        self.preview_images = preview_images
        self.gen_loss, self.disc_loss = gan_losses(self.cfg.gan_loss)
        self.disc = self.disc_opt = None
        if self.cfg.disc_weight > 0:
            data = sections["data"]
            self.disc = PatchDiscriminator(data.channels, self.cfg.disc_channels, self.cfg.disc_layers,
                                           sections["model"].norm_groups)
            self.disc = self.disc.to(device, memory_format=torch.channels_last)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=self.cfg.disc_lr or sections["train"].lr,
                                              betas=(0.5, 0.9), weight_decay=0.0)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []   # (real, fake) for the discriminator step
        self._sums: dict[str, list[float]] = {}

    def _gan_on(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.disc_start

    def _record(self, **values) -> None:
        for k, v in values.items():
            self._sums.setdefault(k, []).append(float(v))

    def loss(self, net, batch, rand):
        x = batch[0].to(self.device)
        if self.s["data"].random_flip:
            x = torch.where((rand.rand() < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
        x = x.contiguous(memory_format=torch.channels_last)
        cfg, ae = self.cfg, _unwrap(net)
        f = ae.factor
        eps = rand.randn(ae.cfg.latent_channels, x.shape[-2] // f, x.shape[-1] // f)
        recon, post = net(x, eps)
        err = (recon - x.float())
        rec = err.abs().mean() if cfg.reconstruction == "l1" else err.square().mean()
        kl = post.kl().mean() / x[0].numel()
        total = rec + cfg.kl_weight * kl
        self._record(rec=rec.detach(), kl=kl.detach())
        if self._gan_on(rand.step):
            self.disc.requires_grad_(False)
            g = self.gen_loss(self.disc(recon.to(x.dtype).contiguous(memory_format=torch.channels_last)))
            w = cfg.disc_weight
            if cfg.adaptive_weight:
                last = ae.decoder.out_conv.weight
                g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
                g_gan = torch.autograd.grad(g, last, retain_graph=True)[0]
                w = w * (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4).detach()
            total = total + w * g
            fake = recon.detach().to(x.dtype).contiguous(memory_format=torch.channels_last)
            self._pending.append((x.detach(), fake))
            self._record(g_loss=g.detach(), g_weight=w)
        return total

    def after_step(self, step: int) -> None:
        if not self._pending:
            return
        self.disc.requires_grad_(True)
        self.disc_opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.bf16):
            for real, fake in self._pending:
                d = self.disc_loss(self.disc(real), self.disc(fake)) / len(self._pending)
                d.backward()
                self._record(d_loss=d.detach() * len(self._pending))
        if torch_dist.is_available() and torch_dist.is_initialized():  # the model's grads go through DDP
            for p in self.disc.parameters():
                torch_dist.all_reduce(p.grad)
                p.grad /= torch_dist.get_world_size()
        self.disc_opt.step()
        self._pending = []

    def log_values(self) -> dict:
        out = {k: sum(v) / len(v) for k, v in self._sums.items()}
        self._sums = {}
        return out

    def extra_state(self) -> dict:
        if self.disc is None:
            return {}
        tensors, _ = optimizer_tensors(self.disc_opt)
        return {**{f"disc.{k}": v for k, v in self.disc.state_dict().items()},
                **{f"disc_opt.{k}": v for k, v in tensors.items()}}

    def load_extra_state(self, tensors: dict) -> None:
        if self.disc is None:
            return
        self.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        opt = {k[9:]: v for k, v in tensors.items() if k.startswith("disc_opt.")}
        groups = json.dumps(self.disc_opt.state_dict()["param_groups"])  # lr & co. come from the config
        load_optimizer_tensors(self.disc_opt, opt, {"param_groups": groups})

    @torch.no_grad()
    def preview(self, model, path) -> None:
        codec = LatentCodec(model, 1.0, {}, self.device, self.bf16)
        save_image_grid(torch.cat([self.preview_images, codec.reconstruct(self.preview_images)]), path,
                        nrow=len(self.preview_images))


def load_model(run: Run) -> tuple[Autoencoder, object]:
    from ..engine import load_ema_weights

    ckpt = latest_checkpoint(run.dir / "checkpoints")
    if ckpt is None:
        raise ValueError(f"'{run.dir}' has no autoencoder checkpoint yet; run its train stage first")
    return load_ema_weights(ckpt, Autoencoder(run["model"])), ckpt


# ---- the pipeline -----------------------------------------------------------------------
def check_fits(sections: dict) -> None:
    data, model = sections["data"], sections["model"]
    if model.in_channels != data.channels:
        raise ValueError(f"model.in_channels = {model.in_channels} but data.channels = {data.channels}; "
                         "make them equal")
    f = model.factor
    if data.size % f:
        raise ValueError(f"data.size = {data.size} is not divisible by the autoencoder's factor {f} "
                         f"(channel_mult {model.channel_mult}); use a multiple of {f}")


def train(run: Run, dist, resume: bool) -> dict:
    sections = run.sections
    dataset = build_image_dataset(sections["data"], "train")
    test = build_image_dataset(sections["data"], "test")
    preview = torch.stack([test[i][0] for i in range(min(8, len(test)))])
    bf16 = resolve_precision(sections["train"].precision, dist.device)
    task = AutoencoderTask(sections, dist.device, bf16, preview)
    fp = "autoencoder:" + section_hash(sections, ["data", "model", "loss"])
    trainer = Trainer(Autoencoder(sections["model"]), dataset, task, sections["train"], run.dir, dist=dist,
                      fingerprint=fp)
    ckpt = trainer.fit(resume=resume)
    return {"checkpoint": str(ckpt), "precision": "bf16" if trainer.bf16 else "fp32"}


def _images(ds, n: int = 0):
    n = len(ds) if n <= 0 else min(n, len(ds))
    return torch.stack([ds[i][0] for i in range(n)])


def scale_stage(run: Run, dist) -> dict:
    """1/std of posterior samples of the whole train split (latent-diffusion's scale_factor, there from
    one batch), so the diffusion model sees unit-variance latents."""
    model, ckpt = load_model(run)
    codec = LatentCodec(model, 1.0, {}, dist.device, resolve_precision(run["train"].precision, dist.device))
    x = _images(build_image_dataset(run["data"], "train"))
    z = codec.encode(x, sample=True, generator=torch.Generator().manual_seed(0), batch=run["eval"].batch)
    std, mean = float(z.std()), float(z.mean())
    info = {"format": "multidiff.autoencoder/1", "checkpoint": str(ckpt.relative_to(run.dir)),
            "weights_sha256": weights_hash(ckpt / "ema.safetensors"), "scale": 1.0 / std,
            "latent_std": std, "latent_mean": mean, "latent_channels": run["model"].latent_channels,
            "factor": model.factor, "in_channels": run["data"].channels, "image_size": run["data"].size,
            "encoded_items": len(x)}
    write_json(run.dir / INFO_FILE, info)
    return {"scale": info["scale"], "latent_std": std, "file": str(run.dir / INFO_FILE)}


def evaluate(run: Run, dist) -> dict:
    codec = load_autoencoder(run.dir, dist.device, resolve_precision(run["train"].precision, dist.device))
    x = _images(build_image_dataset(run["data"], "test"), run["eval"].n)
    r = codec.reconstruct(x, batch=run["eval"].batch)
    result = {"n": len(x), "psnr": float(psnr(r, x).mean()),
              "ssim": float(ssim(r, x, window=run["eval"].ssim_window).mean()),
              "latent_shape": list(codec.latent_shape(run["data"].size)), "scale": codec.scale,
              "compression": x[0].numel() / (codec.latent_channels * (run["data"].size // codec.factor) ** 2)}
    grid = save_image_grid(torch.cat([x[:16], r[:16]]), run.dir / "samples" / "reconstructions.png", nrow=16)
    result["grid"] = str(grid)
    write_json(run.dir / "eval.json", result)
    write_text(run.dir / "eval.md", "| held-out images | PSNR (dB) | SSIM | latent | scale |\n|---|---|---|---|---|\n"
               f"| {result['n']} | {result['psnr']:.2f} | {result['ssim']:.4f} | "
               f"{'x'.join(map(str, result['latent_shape']))} | {result['scale']:.4f} |\n")
    run.log(f"[evaluate] held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}")
    return {"psnr": result["psnr"], "ssim": result["ssim"]}


def run_recipe(run: Run, dist, resume: bool) -> None:
    check_fits(run.sections)
    run.stage("prepare", ["data"], lambda: image.prepare(run))
    run.stage("train", ["data", "model", "loss", "train"], lambda: train(run, dist, resume))
    if dist.is_main:
        run.stage("scale", ["data", "model", "loss", "train"], lambda: scale_stage(run, dist))
        run.stage("evaluate", ["data", "model", "loss", "train", "eval"], lambda: evaluate(run, dist))
