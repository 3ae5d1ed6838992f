"""Any modality in the latent space of a trained autoencoder (latent diffusion, Rombach et al. 2022).

`LatentModality(inner, codec)` is itself a modality: the denoiser sees a "latent view" of the config
([data] channels and size of the latents: latent_channels, size / f), samples are decoded to the
inner modality's signal, known signals are encoded and masks min-pooled to latent cells for
completion. Images and videos (frame by frame) use it alike; the inner modality says how it trains:
images on a validated cache of posterior moments ("cache"), videos encode clips in the loss
("on_the_fly": decoded clips are cached as uint8 already, and the encoder costs a fraction of the U-Net).

The autoencoder's identity (weights hash, scale, channels, factor) is part of the model's
fingerprint and recorded in RUN/latent.json; sampling, completion and re-runs refuse another one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.image import build_image_dataset
from ..data.latents import build_latent_cache
from ..engine.config import ConfigError
from ..engine.distributed import barrier
from ..utils import read_json, write_json
from .autoencoder import INFO_FILE, LatentCodec
from .base import Known, Modality

RECORD = "latent.json"


@dataclass
class LatentConfig:
    """The [latent] section of a latent image recipe."""
    autoencoder: str = "runs/autoencoder_digits"   # the autoencoder's run directory
    autoencoder_recipe: str = ""    # if set and that run does not exist: train it first with this recipe
    shard_size: int = 256           # latents per cache shard
    encode_batch: int = 128
    train_masks: list[str] = field(default_factory=list)  # non-empty: a mask-conditioned model on these masks


@dataclass
class AutoencoderIdentity:
    """What a latent model depends on besides its own config (part of its stages' hashes)."""
    weights_sha256: str = ""
    scale: float = 0.0
    latent_channels: int = 0
    factor: int = 0


def _frames(x: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def _clips(f: torch.Tensor, batch: int) -> torch.Tensor:
    BT, C, H, W = f.shape
    return f.reshape(batch, BT // batch, C, H, W).transpose(1, 2).contiguous()


class LatentModality(Modality):
    def __init__(self, inner: Modality, codec: LatentCodec):
        self.inner, self.codec = inner, codec
        self.name = f"latent {inner.name}"
        for name in ("channels_last", "final_samples", "preview_count", "conditioned_name",
                     "default_completion"):
            setattr(self, name, getattr(inner, name))
        self.data_section, self.model_section = inner.data_section, inner.model_section

    def schema(self) -> dict[str, type]:
        return self.inner.schema()

    def view(self, sections: dict) -> dict:
        """sections with [data] channels and size of the latents (what the denoiser and sampler see)."""
        d = sections["data"]
        change = {"channels": self.codec.latent_channels, "size": d.size // self.codec.factor}
        if hasattr(d, "random_flip"):
            change["random_flip"] = False  # flipping latents is not flipping pictures
        return {**sections, "data": dataclasses.replace(d, **change)}

    # ---- the codec on any signal: images [B, C, H, W], clips frame by frame [B, C, T, H, W] ------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            return _clips(self.codec.encode(_frames(x)), x.shape[0]).to(x.device)
        return self.codec.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim == 5:
            return _clips(self.codec.decode(_frames(z)), z.shape[0]).clamp(-1, 1)
        return self.codec.decode(z).clamp(-1, 1)

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A latent cell is known only if every pixel of its f x f patch is (min-pooling), so a hole
        of any size is regenerated; a mask that is constant over a frame (known frames) stays as it is."""
        if mask.shape[-1] == 1 and mask.shape[-2] == 1:
            return mask
        if mask.ndim == 5:
            return _clips(self.codec.downsample_mask(_frames(mask)), mask.shape[0])
        return self.codec.downsample_mask(mask)

    # ---- the protocol, through the inner modality -------------------------------------------
    def check(self, sections: dict) -> None:
        d, ae = sections["data"], self.codec.info.get("run_dir", "the autoencoder")
        if d.channels != self.codec.info.get("in_channels", d.channels):
            raise ConfigError(f"data.channels = {d.channels} but the autoencoder '{ae}' encodes "
                              f"{self.codec.info['in_channels']}-channel images; make them equal")
        if d.size % self.codec.factor:
            raise ConfigError(f"data.size = {d.size} is not a multiple of the autoencoder's factor {self.codec.factor}")
        self.inner.check_latent(self.view(sections), sections, self.codec)

    def fingerprint(self, sections: dict, **options) -> str:
        sha = self.codec.identity()["weights_sha256"]
        return self.inner.fingerprint(self.view(sections), **options) + f"+autoencoder:{sha}"

    def identity(self) -> AutoencoderIdentity:
        return AutoencoderIdentity(**self.codec.identity())

    def num_classes(self, sections: dict) -> int:
        return self.inner.num_classes(sections)

    def conditioned(self, sections: dict) -> bool:
        return self.inner.conditioned(sections)

    def generates(self, sections: dict) -> bool:
        return self.inner.generates(sections)

    def generation_cond(self, sections: dict, shape: tuple) -> dict:
        return self.inner.generation_cond(self.view(sections), shape)

    def block_length(self, sections: dict):
        return self.inner.block_length(sections)

    def continues(self, sections: dict) -> bool:
        return self.inner.continues(sections)

    def prepare(self, run) -> dict:
        return self.inner.prepare(run)

    def dataset(self, run, split: str):
        if self.inner.latent_training == "cache":
            return self.cached_split(run, split)[0]
        return self.inner.dataset(run, split)

    def build_model(self, sections: dict) -> torch.nn.Module:
        return self.inner.build_model(self.view(sections))

    def task(self, sections, device, bf16, preview=None, **options):
        if self.inner.latent_training == "cache":  # batches are cached moments of the latent view
            return self.inner.task(self.view(sections), device, bf16, preview=preview, latent=self.codec, **options)
        return self.inner.task(sections, device, bf16, preview=preview, latent=self, **options)

    def sample_shape(self, sections: dict, length: int | None = None) -> tuple[int, ...]:
        return self.inner.sample_shape(self.view(sections), length)

    def sampling(self, sections: dict, sampler: str, steps: int, spacing=None, eta=None) -> dict:
        return self.inner.sampling(self.view(sections), sampler, steps, spacing, eta)

    def estimate_clip(self, sections: dict) -> None:
        return None  # latents are not bounded to [-1, 1]

    def generation_refusal(self, sections: dict, run_dir) -> str | None:
        return self.inner.generation_refusal(self.view(sections), run_dir)

    def generation_length(self, sections: dict, request):
        return self.inner.generation_length(sections, request)

    def write_samples(self, x, out, sections, labels, request) -> str:
        return self.inner.write_samples(x, out, sections, labels, request)

    def sample_output(self, sections: dict, n: int):
        return self.inner.sample_output(sections, n)

    def completed_output(self, sections: dict):
        return self.inner.completed_output(sections)

    def write_preview(self, x, path, sections: dict) -> None:
        self.inner.write_preview(x, path, sections)

    def read_known(self, request, sections: dict) -> Known:
        return self.inner.read_known(request, sections)

    def write_completed(self, x, out, sections, known, request) -> str:
        return self.inner.write_completed(x, out, sections, known, request)

    def read_still(self, request, sections: dict, frames: int) -> Known:
        return self.inner.read_still(request, sections, frames)

    # ---- the cache of an image split's posterior moments ---------------------------------------
    def cached_split(self, run, split: str, dist=None):
        """The split's latent moments from the run's cache (built, resumed or rebuilt as needed; rank 0 writes)."""
        cfg, codec = run["latent"], self.codec
        key = {"autoencoder": codec.identity(), "data": dataclasses.asdict(run["data"]), "split": split}
        images = build_image_dataset(run["data"], split)
        C, h, _ = codec.latent_shape(run["data"].size)

        def build():
            return build_latent_cache(run.dir / "latents" / split, images,
                                      lambda x: codec.moments(x, cfg.encode_batch), key, [2 * C, h, h],
                                      cfg.shard_size, run.log)
        if dist is None or not dist.enabled:
            return build()
        if dist.is_main:
            build()
        barrier(dist)
        return build()  # every shard now valid: only reads

    # ---- RUN/latent.json: which autoencoder a model was trained with ---------------------------
    def write_record(self, run_dir: Path, autoencoder: str) -> None:
        write_json(Path(run_dir) / RECORD, {"autoencoder": autoencoder, "identity": self.codec.identity()})

    def check_record(self, run_dir: Path, required: bool) -> None:
        """A model trained on one autoencoder's latents is meaningless with another's: refuse, naming both files."""
        path = Path(run_dir) / RECORD
        if not path.exists():
            if required:
                raise ConfigError(f"'{run_dir}' has no {RECORD}: its latent model was not trained yet "
                                  "(multidiff train <latent recipe> --out ...)")
            return
        rec, now = read_json(path), self.codec.identity()
        diff = [f"{k} {rec['identity'].get(k)!r} -> {now[k]!r}" for k in now if rec["identity"].get(k) != now[k]]
        if diff:
            raise ConfigError(f"'{path}': this model was not trained on the latents of '{rec['autoencoder']}' as "
                              f"it is now: '{Path(self.codec.info['run_dir']) / INFO_FILE}' differs "
                              f"({'; '.join(diff)}). Restore that autoencoder, or train the latent model again into "
                              "a new --out directory")

