"""The modality protocol: what one kind of signal supplies so that the shared engine trains it, the
shared pipelines sample and complete it, and the one command line reads and writes it.

A modality is an object with the methods of `Modality` below. Everything above this layer
(pipelines/, evaluation/, kinds/, commands.py) talks to a modality only through them, so a new kind
of signal is: a subclass here, its denoiser in models/, its data source in data/ -- and no edit
anywhere else (tests/helpers/sines.py defines a fourth modality that way; docs/extending.md walks
through it).

`Trained` is a trained model ready to sample: its modality, config, EMA weights and checkpoint,
and the one denoiser view the core's samplers see.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..core import Denoiser, sample
from ..engine.checkpoint import latest_checkpoint, load_ema_weights
from ..engine.config import ConfigError
from ..engine.precision import InferenceModel
from ..engine.runs import section_hash
from ..engine.trainer import TrainConfig
from ..outputs import OutputSpec
from .sections import DiffusionConfig, DistillConfig, SampleConfig

# the sections every diffusion modality reads, beside its own [data] and [model]
COMMON_SECTIONS = {"diffusion": DiffusionConfig, "train": TrainConfig, "distill": DistillConfig}


class Modality:
    """The protocol (with the defaults most modalities share). `sections` is a run's config: a dict
    of section name -> dataclass, with at least [data], [model], [diffusion], [train]."""

    name = "modality"
    data_section: type = object        # the [data] dataclass
    model_section: type = object       # the [model] dataclass
    extra_sections: dict[str, type] = {}  # the modality's own further sections, e.g. audio's [vocode]
    channels_last = False              # the fast memory layout for the trainer (images, videos)
    final_samples = "final.png"        # what the sample stage writes under RUN/samples/ (a file, or a folder/)
    preview_count = 0                  # samples in a training preview (0 = none)
    conditioned_name = "mask-conditioned"  # what a model conditioned on the known part is called
    default_completion = "replace"     # the completion method a plain model fills gaps with by default

    # ---- config ---------------------------------------------------------------------------------
    def schema(self) -> dict[str, type]:
        return {"data": self.data_section, "model": self.model_section, **COMMON_SECTIONS, **self.extra_sections}

    def check(self, sections: dict) -> None:
        """Refuse a config whose parts do not fit together (model vs data), naming the keys to change."""

    def fingerprint(self, sections: dict, **options) -> str:
        """What a checkpoint's weights depend on: a resumed or sampled run must agree on it. `options`:
        the training options of task() that change what is learned (e.g. the masks of a mask-conditioned model)."""
        return section_hash(sections, ["data", "model", "diffusion"])

    def num_classes(self, sections: dict) -> int:
        return int(getattr(sections["model"], "num_classes", 0))

    def conditioned(self, sections: dict) -> bool:
        """True for a model that takes the known part as extra input (mask- or frame-conditioned)."""
        return False

    def generates(self, sections: dict) -> bool:
        """True for a model that draws from noise alone: a plain one, or a conditioned one trained with
        nothing known too (a video model with the "none" known-frame pattern, MCVD-style)."""
        return not self.conditioned(sections)

    def generation_cond(self, sections: dict, shape: tuple) -> dict:
        """Model inputs that plain generation of a batch of `shape` (model space) needs besides the noise:
        a conditioned model that generates is told that nothing is known (an all-zero mask)."""
        return {}

    def block_length(self, sections: dict) -> int | None:
        """Frames (along axis 2 of [B, C, T, ...]) of the windows the model was trained on, where longer
        signals are made window by window (pipelines/extend.py); None: not extended that way."""
        return None

    def continues(self, sections: dict) -> bool:
        """True for a model trained to continue from known leading frames given as input."""
        return False

    def check_latent(self, view: dict, sections: dict, codec) -> None:
        """check() for a model in an autoencoder's latent space (latent.py): `view` is what the denoiser sees."""
        raise ConfigError(f"{self.name} models cannot be trained in an autoencoder's latent space")

    # ---- data and training ---------------------------------------------------------------------
    def prepare(self, run) -> dict:
        """Build or validate the run's data (the prepare stage); returns its summary."""
        raise NotImplementedError

    def dataset(self, run, split: str):
        raise NotImplementedError

    def build_model(self, sections: dict) -> torch.nn.Module:
        raise NotImplementedError

    def task(self, sections: dict, device: torch.device, bf16: bool, preview=None, model=None, **options):
        """The trainer's task: the loss of a micro-batch (and `preview(model, path)` when given); `model` is
        the network being trained (for what it carries besides its weights, e.g. a noise prior)."""
        raise NotImplementedError

    def fit_model(self, run, model: torch.nn.Module, dataset) -> None:
        """Anything fitted on the training data before step 1 (e.g. a noise prior)."""

    # ---- sampling ---------------------------------------------------------------------------------
    def sample_shape(self, sections: dict, length: int | None = None) -> tuple[int, ...]:
        """One generated item's shape [C, *dims]; `length` is frames or samples where it applies."""
        raise NotImplementedError

    def sample_settings(self, sections: dict) -> SampleConfig:
        """How `multidiff sample` draws by default: the run's [sample] section."""
        return sections["sample"]

    def sampling(self, sections: dict, sampler: str, steps: int, spacing: str | None = None,
                 eta: float | None = None) -> dict:
        """The core `sample()` keywords for a sampler and step count (levels, options)."""
        kw: dict[str, Any] = {"sampler": sampler, "steps": steps}
        if spacing is not None:
            kw["spacing"] = spacing
        if eta is not None:
            kw["eta"] = eta
        return kw

    def estimate_clip(self, sections: dict) -> float | None:
        """Completion clamps every clean estimate to [-r, r] (generation: where [sample] clip_x0 says);
        None where the model's data is not bounded to [-1, 1] (latents) or clamping is not wanted."""
        return 1.0

    def build_denoiser(self, sections: dict, model) -> Denoiser:
        """The samplers' view of `model(x_in, c_noise, **cond)`: [diffusion]'s objective (a distilled consistency
        student's view is its consistency function, modalities/student.py)."""
        return sections["diffusion"].build_denoiser(model)

    def sample_extras(self, model: torch.nn.Module, cond: dict | None, device) -> dict:
        """Further `sample()` keywords a model needs, e.g. the noise coloring of a noise prior."""
        return {}

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Generated tensors -> the signal (a latent modality decodes)."""
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask

    # ---- the command line's inputs and outputs ---------------------------------------------
    def generation_refusal(self, sections: dict, run_dir) -> str | None:
        """Why `multidiff sample` cannot draw from this model (it needs an input), or None."""
        if not self.generates(sections):
            return f"'{run_dir}' holds a model conditioned on known parts: use `multidiff inpaint` with it"
        return None

    def generation_length(self, sections: dict, request) -> int | None:
        """The `length` for sample_shape asked for on the command line (--frames, --seconds), or None."""
        return None

    def write_samples(self, x: torch.Tensor, out: str, sections: dict, labels, request) -> str:
        """Write generated items to `out` (a file or a folder/); returns what was written."""
        raise NotImplementedError

    def sample_output(self, sections: dict, n: int) -> OutputSpec | None:
        """What write_samples makes of n items: file suffixes and/or a folder/ (checked before sampling;
        None: any name, with the checks every output gets -- inputs, existing files, a writable folder)."""
        return None

    def write_preview(self, x: torch.Tensor, path: Path, sections: dict) -> None:
        """A training preview of `preview_count` samples as one picture."""
        raise NotImplementedError

    def completion_steps(self, sections: dict, known: "Known") -> int | None:
        """Sampling steps for completion when the command line gives none (None: the method's setting)."""
        return None

    def read_known(self, request, sections: dict) -> "Known":
        """The signal to complete and its mask (1 = known) from the command line's inputs."""
        raise NotImplementedError(f"{self.name} has no completion inputs")

    def write_completed(self, x: torch.Tensor, out: str, sections: dict, known: "Known", request) -> str:
        raise NotImplementedError

    def read_still(self, request, sections: dict, frames: int) -> "Known":
        """`multidiff animate`: the still (request.image) as frame 0 of a clip of `frames`, mask = frame 0."""
        raise ValueError(f"a {self.name} run cannot animate a still image: `multidiff animate` needs a video run")

    def completed_output(self, sections: dict) -> OutputSpec | None:
        """What write_completed writes (as sample_output)."""
        return None


class Prepared(NamedTuple):
    """A training micro-batch as a task prepares it for the loss (crops, latents, labels, masks, a noise prior):
    clean signals x0 [B, C, *dims], the model's `cond` inputs, and the loss keywords of sections.batch_loss
    (noise_color / error_map of a noise prior). The plain loss and distillation (pipelines/distill.py) share it."""
    x0: torch.Tensor
    cond: dict
    loss_kw: dict


@dataclass
class Known:
    """What a completion command fills: `signal` [1, C, *dims] and `mask` [1, 1, *dims] (1 = known),
    `summary` for the message, `extra_cond` the model inputs it implies (a vocoder's bridged mel)."""
    signal: torch.Tensor
    mask: torch.Tensor
    summary: str
    extra_cond: dict | None = None


class Trained:
    """A trained model of a modality, ready to sample: EMA weights, config, checkpoint."""

    def __init__(self, modality: Modality, sections: dict, model: torch.nn.Module, checkpoint: Path):
        self.modality, self.sections, self.model, self.checkpoint = modality, sections, model, checkpoint

    @property
    def num_classes(self) -> int:
        return self.modality.num_classes(self.sections)

    def denoiser(self, device, bf16: bool) -> Denoiser:
        """The samplers' view of the model on `device` (built once per device and precision: at batch 1
        building it -- eval mode, the schedule -- cost as much as a small U-Net's model call)."""
        key = (str(device), bool(bf16))
        built = self.__dict__.setdefault("_denoisers", {})
        if key not in built:
            built[key] = self.modality.build_denoiser(self.sections, InferenceModel(self.model, device, bf16))
        self.model.eval()  # (as InferenceModel sets it: the model may have been put back in training mode since)
        return built[key]

    def sample(self, den: Denoiser, noise: torch.Tensor, generator, cond: dict | None, device, **kw) -> torch.Tensor:
        """core.sample with what this model needs besides (noise prior coloring)."""
        return sample(den, noise, generator=generator, cond=cond or None,
                      **self.modality.sample_extras(self.model, cond, device), **kw)


def load_trained(modality: Modality, sections: dict, run_dir) -> Trained:
    """The EMA weights of the latest checkpoint of `run_dir`, in the modality's model."""
    ckpt = latest_checkpoint(Path(run_dir) / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"'{run_dir}' has no checkpoint yet: train it first (multidiff train ...)")
    return Trained(modality, sections, load_ema_weights(ckpt, modality.build_model(sections)), ckpt)


def split_summary(train, test, unit: str) -> dict:
    """What a prepare stage reports of a train and a test split (and the files it left out)."""
    return {f"train_{unit}": len(train), f"test_{unit}": len(test), "classes": train.num_classes,
            "skipped": [f"{p}: {r}" for p, r in train.skipped + test.skipped]}


def check_labels_fit(sections: dict, dataset, num_classes: int) -> None:
    """A class-conditional model must have the data's number of classes."""
    if num_classes and num_classes != dataset.num_classes:
        raise ConfigError(f"model.num_classes = {num_classes} but the data has {dataset.num_classes} classes; "
                          f"set model.num_classes = {dataset.num_classes} (or 0)")
