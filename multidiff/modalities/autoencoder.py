"""The KL autoencoder of latent diffusion as a trainable "modality" of its own (trained with the
shared Trainer on images), and a trained autoencoder run as an image <-> latent codec: the one API
latent runs (images, and videos frame by frame) use.

    codec = load_autoencoder("runs/autoencoder_digits")        # checks autoencoder.json vs the weights
    z = codec.encode(x)          # x [N, C, H, W] in [-1, 1] -> z [N, latent_channels, H/f, W/f], * scale
    x = codec.decode(z)          # the inverse (un-scales first), fp32 [N, C, H, W]
    codec.scale, codec.factor, codec.latent_channels, codec.identity()   # what a latent run records

Both run in batches, without grad, under the run's precision (bf16 autocast + channels_last on a
fast CPU). Latents are scaled by 1/std of the train set's latents (RUN/autoencoder.json, written by
the autoencoder recipe's scale stage, `compute_scale`), so a diffusion model sees unit-variance data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.image import ImageData, build_image_dataset, save_image_grid
from ..engine.adversarial import GAN_LOSSES, AdversarialTerm
from ..engine.checkpoint import latest_checkpoint, load_ema_weights
from ..engine.config import ConfigError
from ..engine.precision import autocast, resolve_precision
from ..engine.runs import load_sections, section_hash
from ..engine.trainer import TrainConfig
from ..models.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian, PatchDiscriminator
from ..utils import read_json, write_json
from .base import Modality
from .image import IMAGE

INFO_FILE = "autoencoder.json"


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
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"loss.gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.kl_weight < 0 or self.disc_weight < 0:
            raise ValueError("loss.kl_weight and loss.disc_weight must be >= 0")


@dataclass
class AutoencoderEval:
    """The [eval] section: held-out reconstruction quality."""
    n: int = 0                        # held-out images (0 = the whole test split)
    ssim_window: int = 7              # small images: a 7-tap window (11 needs >= 11 px)
    batch: int = 100



def _unwrap(net):
    return getattr(net, "module", net)  # DistributedDataParallel


class AutoencoderTask:
    """Reconstruction + KL loss of the autoencoder; with loss.disc_weight > 0 also a PatchGAN (engine/adversarial.py:
    trained by the Trainer's after_step hook with its own optimizer and saved in each checkpoint)."""

    channels_last = True

    def __init__(self, sections: dict, device, bf16: bool, preview_images: torch.Tensor):
        self.s, self.cfg, self.device, self.bf16 = sections, sections["loss"], device, bf16
        self.preview_images = preview_images
        self.gan = None
        if self.cfg.disc_weight > 0:
            data = sections["data"]
            disc = PatchDiscriminator(data.channels, self.cfg.disc_channels, self.cfg.disc_layers,
                                      sections["model"].norm_groups).to(device, memory_format=torch.channels_last)
            self.gan = AdversarialTerm(disc, self.cfg.disc_lr or sections["train"].lr, self.cfg.disc_weight, device,
                                       bf16, self.cfg.gan_loss, self.cfg.adaptive_weight)
        self._sums: dict[str, list[float]] = {}

    def _gan_on(self, step: int) -> bool:
        return self.gan is not None and step >= self.cfg.disc_start

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
            fake = recon.to(x.dtype).contiguous(memory_format=torch.channels_last)
            total = total + self.gan.generator_loss((fake,), (x,), rec=rec, last=ae.decoder.out_conv.weight)
        return total

    def after_step(self, step: int) -> None:
        if self.gan is not None:
            self.gan.after_step()

    def log_values(self) -> dict:
        out = {k: sum(v) / len(v) for k, v in self._sums.items()}
        self._sums = {}
        return {**out, **(self.gan.log_values() if self.gan is not None else {})}

    def extra_state(self) -> dict:
        return self.gan.extra_state() if self.gan is not None else {}

    def load_extra_state(self, tensors: dict) -> None:
        if self.gan is not None:
            self.gan.load_extra_state(tensors)

    @torch.no_grad()
    def preview(self, model, path) -> None:
        codec = LatentCodec(model, 1.0, {}, self.device, self.bf16)
        save_image_grid(torch.cat([self.preview_images, codec.reconstruct(self.preview_images)]), path,
                        nrow=len(self.preview_images))



def weights_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class LatentCodec:
    def __init__(self, model: Autoencoder, scale: float, info: dict, device=None, bf16: bool = False):
        self.device = torch.device(device or "cpu")
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.scale, self.info, self.bf16 = float(scale), info, bf16

    @property
    def factor(self) -> int:
        return self.model.factor

    @property
    def latent_channels(self) -> int:
        return self.model.cfg.latent_channels

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        return self.latent_channels, size // self.factor, size // self.factor

    def identity(self) -> dict:
        """What a model trained on these latents depends on (recorded by latent runs, checked on load)."""
        return {k: self.info.get(k) for k in ("weights_sha256", "scale", "latent_channels", "factor")}

    def _batches(self, x: torch.Tensor, batch: int, fn) -> torch.Tensor:
        out = []
        with torch.no_grad(), autocast(self.device, self.bf16):
            for i in range(0, len(x), batch):
                xb = x[i:i + batch].to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
                out.append(fn(xb).float().cpu())
        return torch.cat(out) if out else x.new_zeros(0)

    def moments(self, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """[N, 2 * latent_channels, h, w]: mean and logvar of q(z | x), unscaled (what the latent cache stores)."""
        return self._batches(x, batch, lambda xb: self.model.encoder(xb))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               batch: int = 128) -> torch.Tensor:
        """Scaled latents of images x: the posterior mean, or a sample of it (sample=True)."""
        post = DiagonalGaussian.from_moments(self.moments(x, batch))
        return self.scale * (post.sample(generator) if sample else post.mode())

    def from_moments(self, moments: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """Scaled latent sample mean + std * eps from cached moments (eps None: the mean)."""
        post = DiagonalGaussian.from_moments(moments)
        return self.scale * (post.mean if eps is None else post.mean + post.std * eps.to(post.mean))

    def decode(self, z: torch.Tensor, batch: int = 128) -> torch.Tensor:
        return self._batches(z / self.scale, batch, lambda zb: self.model.decode(zb))

    def reconstruct(self, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
        return self.decode(self.encode(x, batch=batch), batch).clamp(-1, 1)

    def downsample_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (1 = known) at latent resolution: a latent cell is known only if every pixel of its
        f x f patch is, so a hole of any size is regenerated (min-pooling)."""
        return -F.max_pool2d(-mask.float(), self.factor)



def load_autoencoder(run_dir, device=None, bf16: bool | None = None, precision: str = "auto") -> LatentCodec:
    """The codec of an autoencoder run directory (its EMA weights and latent scale).

    Raises ConfigError, naming the file and the fix, when the run is missing, unfinished, or its
    autoencoder.json no longer matches the weights beside it."""
    run_dir = Path(run_dir)
    info_path = run_dir / INFO_FILE
    if not info_path.is_file():
        raise ConfigError(f"no trained autoencoder at '{run_dir}' (missing '{info_path}'); train it first: "
                          f"multidiff train recipes/autoencoder_digits --out {run_dir} (or your autoencoder recipe)")
    sections = load_sections(run_dir, AUTOENCODER.schema())
    if sections["recipe"].kind != "autoencoder":
        raise ConfigError(f"'{run_dir}' is a {sections['recipe'].kind!r} run, not an autoencoder run")
    info = read_json(info_path)
    ckpt = run_dir / info["checkpoint"]
    weights = ckpt / "ema.safetensors"
    if not weights.is_file():
        raise ConfigError(f"'{info_path}' names the checkpoint '{ckpt}', which is gone; re-run "
                          f"`multidiff train <autoencoder recipe> --out {run_dir}` after deleting "
                          f"'{run_dir / 'stages' / 'scale.json'}' to recompute the scale for the latest weights")
    if weights_hash(weights) != info["weights_sha256"]:
        raise ConfigError(f"'{weights}' changed after '{info_path}' computed the latent scale for it; delete "
                          f"'{run_dir / 'stages' / 'scale.json'}' and re-run the autoencoder recipe to recompute it")
    device = torch.device(device or "cpu")
    if bf16 is None:
        bf16 = resolve_precision(precision, device)
    model = load_ema_weights(ckpt, Autoencoder(sections["model"]))
    return LatentCodec(model, info["scale"], {**info, "run_dir": str(run_dir)}, device, bf16)


def stack_images(ds, n: int = 0) -> torch.Tensor:
    """The first n items' images of a dataset (n <= 0: all)."""
    n = len(ds) if n <= 0 else min(n, len(ds))
    return torch.stack([ds[i][0] for i in range(n)])


def load_model(run) -> tuple[Autoencoder, Path]:
    ckpt = latest_checkpoint(run.dir / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"'{run.dir}' has no autoencoder checkpoint yet; run its train stage first")
    return load_ema_weights(ckpt, Autoencoder(run["model"])), ckpt


def compute_scale(run, dist) -> dict:
    """1/std of posterior samples of the whole train split (latent-diffusion's scale_factor, there from
    one batch), so the diffusion model sees unit-variance latents."""
    model, ckpt = load_model(run)
    codec = LatentCodec(model, 1.0, {}, dist.device, resolve_precision(run["train"].precision, dist.device))
    x = stack_images(build_image_dataset(run["data"], "train"))
    z = codec.encode(x, sample=True, generator=torch.Generator().manual_seed(0), batch=run["eval"].batch)
    std, mean = float(z.std()), float(z.mean())
    info = {"format": "multidiff.autoencoder/1", "checkpoint": str(ckpt.relative_to(run.dir)),
            "weights_sha256": weights_hash(ckpt / "ema.safetensors"), "scale": 1.0 / std,
            "latent_std": std, "latent_mean": mean, "latent_channels": run["model"].latent_channels,
            "factor": model.factor, "in_channels": run["data"].channels, "image_size": run["data"].size,
            "encoded_items": len(x)}
    write_json(run.dir / INFO_FILE, info)
    return {"scale": info["scale"], "latent_std": std, "file": str(run.dir / INFO_FILE)}




class AutoencoderModality(Modality):
    """Not a diffusion model: what the shared engine needs to train an autoencoder on images."""

    name = "autoencoder"
    data_section, model_section = ImageData, AutoencoderConfig
    extra_sections = {"loss": AutoencoderLoss, "eval": AutoencoderEval}
    channels_last = True

    def schema(self) -> dict[str, type]:
        return {"data": ImageData, "model": AutoencoderConfig, "loss": AutoencoderLoss, "train": TrainConfig,
                "eval": AutoencoderEval}

    def check(self, sections: dict) -> None:
        data, model = sections["data"], sections["model"]
        if model.in_channels != data.channels:
            raise ConfigError(f"model.in_channels = {model.in_channels} but data.channels = {data.channels}; "
                              "make them equal")
        f = model.factor
        if data.size % f:
            raise ConfigError(f"data.size = {data.size} is not divisible by the autoencoder's factor {f} "
                              f"(channel_mult {model.channel_mult}); use a multiple of {f}")

    def fingerprint(self, sections: dict) -> str:
        return "autoencoder:" + section_hash(sections, ["data", "model", "loss"])

    def prepare(self, run) -> dict:
        return IMAGE.prepare(run)

    def dataset(self, run, split: str):
        return build_image_dataset(run["data"], split)

    def build_model(self, sections: dict) -> Autoencoder:
        return Autoencoder(sections["model"])

    def task(self, sections, device, bf16, preview=None, model=None):
        test = build_image_dataset(sections["data"], "test")
        return AutoencoderTask(sections, device, bf16, stack_images(test, 8))

    def generation_refusal(self, sections: dict, run_dir) -> str:
        return f"'{run_dir}' is an autoencoder run: use a latent run that uses it (recipes/latent_*)"


AUTOENCODER = AutoencoderModality()
