"""A pretrained diffusers model folder opened as a run (`multidiff sample FOLDER`, `multidiff inpaint FOLDER`).

A folder with no config.toml that holds a diffusers model (models/diffusers_unet.py: a UNet2DModel's
config.json and safetensors weights, or a DDPM/DDIM pipeline folder) gets the config such a run would have:

    [data]       size, channels      <- the UNet's sample_size, in_channels
    [model]      the folder, its config and weights files, num_classes <- num_class_embeds
    [diffusion]  diffusers' own betas and prediction_type of the scheduler config (+ steps_offset)
    [sample]     ddim, 50 steps, eta 0 (its default; DDIMPipeline's defaults), the scheduler's timestep_spacing, and
                 clip_x0 = clip_sample_range where clip_sample (our ddim then equals DDIMScheduler with
                 use_clipped_model_output=True)

and the kind "diffusers" (one "plain" model, nothing to train) loads its weights. The command line reaches
it through `kinds.open_run`, with no branch of its own.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..data.image import ImageData
from ..engine.config import ConfigError
from ..engine.runs import RecipeInfo
from ..models.diffusers_unet import inspect_folder, looks_like_model_folder, scheduler_settings
from ..modalities.base import Trained
from ..modalities.pretrained import FOLDER_IMAGE, FolderDiffusion, FolderModel
from ..modalities.sections import SampleConfig
from .base import Kind, ModelRef

# diffusers' beta_schedule -> our schedule of the same curve (descriptive: the levels are diffusers' own betas)
SCHEDULE_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


class FolderRef(ModelRef):
    """The folder's UNet with its weights (no checkpoints/: the safetensors file is the checkpoint)."""

    def load(self) -> Trained:
        m = self.sections["model"]
        trained = Trained(self.modality, self.sections, self.modality.build_model(self.sections), Path(m.weights))
        if m.notes:  # what was assumed, once the model is there (a refusal stays one line)
            print(f"multidiff: note: '{m.folder}': {m.notes}", file=sys.stderr)
        return trained


class FolderKind(Kind):
    name = "diffusers"
    base = FOLDER_IMAGE

    def schema(self):
        return {"data": ImageData, "model": FolderModel, "diffusion": FolderDiffusion, "sample": SampleConfig}

    def check(self, sections):
        pass

    def stages(self, run, dist, resume):
        raise ConfigError("a diffusers model folder is trained already: use `multidiff sample` or `multidiff inpaint` "
                          "with it")

    def model(self, run_dir, sections, role, device=None, bf16=False):
        return FolderRef(self.base, sections, Path(run_dir))


FOLDER_KIND = FolderKind()


def is_model_folder(path) -> bool:
    return looks_like_model_folder(path)


def folder_sections(path) -> dict:
    """The config of the diffusers folder `path` as a run's sections (one FolderError if it cannot be used)."""
    info = inspect_folder(path)
    st = scheduler_settings(info)
    S, C = info.size, info.channels
    diffusion = FolderDiffusion(
        schedule=SCHEDULE_NAMES.get(st.beta_schedule, "linear"), timesteps=len(st.betas), beta_start=st.beta_start,
        beta_end=st.beta_end, zero_terminal_snr=st.zero_terminal_snr, prediction=st.prediction, betas=st.betas,
        scheduler=st.class_name, beta_schedule=st.beta_schedule, steps_offset=st.steps_offset,
        ddpm_variance=st.variance)
    return {
        "recipe": RecipeInfo(kind=FOLDER_KIND.name, description=f"diffusers folder {info.root}"),
        "data": ImageData(source="folder", root=str(info.root), size=S, channels=C),
        "model": FolderModel(folder=str(info.root), config=str(info.config_file), weights=str(info.weights[0]),
                             scheduler=str(info.scheduler_file or ""), in_channels=C, image_size=S,
                             num_classes=info.num_classes, notes="; ".join(info.notes + st.notes)),
        "diffusion": diffusion,
        "sample": SampleConfig(sampler="ddim", steps=50, spacing=st.spacing, n=16, seed=0, clip_x0=st.clip_x0),
    }
