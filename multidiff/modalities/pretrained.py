"""Images from a pretrained diffusers folder (models/diffusers_unet.py), opened as a run.

Such a run's config (kinds/pretrained.py builds it from the folder) has the image sections with a
[model] that names the folder and a [diffusion] that holds the scheduler's own betas; `FolderImage` is
the image modality on it: everything but the model (writing PNGs, reading images and masks,
--crop-to-mask) is the image modality's own, so every sampler and completion method runs on the
pretrained weights unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.schedule import Schedule
from ..engine.config import ConfigError
from ..models.diffusers_unet import inspect_folder, load_unet
from .image import ImageModality
from .sections import DiffusionConfig


@dataclass
class FolderModel:
    """[model] of a diffusers folder opened as a run (never written to a config.toml)."""
    folder: str = ""
    config: str = ""              # the UNet's config.json
    weights: str = ""             # its (first) safetensors file
    scheduler: str = ""           # the scheduler config read, "" for diffusers' DDPM defaults
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 0          # the UNet's num_class_embeds (no null class: no classifier-free guidance)
    extra_in_channels: int = 0    # (a pretrained UNet is never mask-conditioned)
    notes: str = ""               # what was assumed (no scheduler config: diffusers' DDPM defaults)


@dataclass
class FolderDiffusion(DiffusionConfig):
    """[diffusion] of a diffusers folder: the DiffusionConfig keys describe it (schedule, timesteps, betas'
    range, prediction), and `betas` -- diffusers' own, from the scheduler config -- are the levels, exactly."""
    betas: list[float] = field(default_factory=list)
    scheduler: str = "DDPMScheduler"
    beta_schedule: str = "linear"
    steps_offset: int = 0         # DDIM's "leading" timesteps are shifted by it (e.g. 1 in Stable Diffusion's)
    ddpm_variance: str = "posterior"  # our ddpm's variance for the scheduler's variance_type (fixed_small)

    def build_schedule(self) -> Schedule:
        return Schedule.from_betas(self.betas)


class FolderImage(ImageModality):
    name = "diffusers image"
    model_section = FolderModel

    def check(self, sections: dict) -> None:
        pass  # the folder was checked when it was opened (inspect_folder)

    def fingerprint(self, sections: dict, **options) -> str:
        m = sections["model"]
        return f"diffusers:{m.weights}"

    def prepare(self, run) -> dict:
        raise ConfigError("a diffusers model folder holds a trained model: there is nothing to prepare or train")

    def dataset(self, run, split: str):
        raise ConfigError("a diffusers model folder has no dataset")

    def build_model(self, sections: dict):
        return load_unet(inspect_folder(sections["model"].folder))

    def sampling(self, sections: dict, sampler: str, steps: int, spacing: str | None = None,
                 eta: float | None = None) -> dict:
        kw = super().sampling(sections, sampler, steps, spacing, eta)
        d = sections["diffusion"]
        kw["variance"] = d.ddpm_variance  # (ddpm's, also under RePaint; the other samplers ignore it)
        if d.steps_offset and kw.get("spacing", "leading") == "leading":
            # diffusers' "leading" with steps_offset: the listed timesteps, shifted (Schedule.timesteps offset)
            kw.pop("spacing", None)
            kw["timesteps"] = d.build_schedule().timesteps(steps, "leading", d.steps_offset)
        return kw


FOLDER_IMAGE = FolderImage()
