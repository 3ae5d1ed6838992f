"""A trained autoencoder run as an image <-> latent codec: the one API latent recipes (image now,
video frame by frame) use.

    codec = load_autoencoder("runs/autoencoder_digits")        # checks autoencoder.json vs the weights
    z = codec.encode(x)          # x [N, C, H, W] in [-1, 1] -> z [N, latent_channels, H/f, W/f], * scale
    x = codec.decode(z)          # the inverse (un-scales first), fp32 [N, C, H, W]
    codec.scale, codec.factor, codec.latent_channels, codec.identity()   # what a latent run records

Both run in batches, without grad, under the run's precision (bf16 autocast + channels_last on a
fast CPU). Latents are scaled by 1/std of the train set's latents (RUN/autoencoder.json, written by
the autoencoder recipe's scale stage), so a diffusion model sees unit-variance data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.autoencoder import Autoencoder, DiagonalGaussian
from ..engine.config import ConfigError
from ..engine.precision import autocast, resolve_precision
from ..utils import read_json

INFO_FILE = "autoencoder.json"


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
    from ..engine import load_ema_weights
    from . import registry
    from ..engine.runs import load_run

    run_dir = Path(run_dir)
    info_path = run_dir / INFO_FILE
    if not info_path.is_file():
        raise ConfigError(f"no trained autoencoder at '{run_dir}' (missing '{info_path}'); train it first: "
                          f"multidiff train recipes/autoencoder_digits --out {run_dir} (or your autoencoder recipe)")
    sections = load_run(run_dir, registry.schemas())
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
