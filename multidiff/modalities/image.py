"""Images: the 2-D U-Net on [C, size, size] pictures in [-1, 1] (digits, a folder, CIFAR-10)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.image import ImageData, build_image_dataset, load_image, picture_size, save_image_grid
from ..data.masks import MASK_KINDS, load_mask, make_mask, random_masks
from ..engine.config import ConfigError
from ..models.unet2d import UNet2D, UNet2DConfig
from ..outputs import OutputSpec
from .base import Known, Modality, Prepared, split_summary
from .image_crop import CroppedKnown, read_cropped, write_cropped
from .sections import batch_loss


def grid_rows(num_classes: int, n: int) -> int:
    """Images (or clips) per row of a grid: one row per class for 10-class models, else about square."""
    return 10 if num_classes == 10 and n % 10 == 0 else max(1, round(math.sqrt(n)))


# why images are written as PNG only (and `--out x.jpg` is refused, not silently given PNG bytes)
PNG_ONLY = "PNG is lossless, so the known pixels of an inpainting stay exact"


def check_mask_fits(mask, image, resize: bool) -> None:
    """A mask drawn for another picture does not line up with this one: its size must be the image's own
    (both then go through the same crop and resize to the model's size), unless --resize-mask says so."""
    m, i = picture_size(mask), picture_size(image)
    if resize or m is None or i is None or m == i:
        return  # (an unreadable file is named by load_image / load_mask)
    raise ConfigError(f"mask '{mask}' is {m[0]}x{m[1]} pixels but image '{image}' is {i[0]}x{i[1]}: give a mask of "
                      "the image's size (white = fill), or pass --resize-mask to stretch it to the image")


def is_folder(out: str) -> bool:
    """`--out` names a folder (one file per item) when it ends in a slash or already is one."""
    return out.endswith(("/", "\\")) or Path(out).is_dir()


class ImageTask:
    """Loss (and previews) for image denoisers; with `mask_kinds`, trains a mask-conditioned model
    (input: x_t + [mask, masked image]) on random masks drawn from those kinds.

    With `latent` (a LatentCodec) it trains in latent space: `sections` is then the latent view
    (data.size/channels of the latents), batches hold cached posterior moments that are sampled
    with the step's seeded draws, and masks are drawn at pixel resolution and downsampled."""

    channels_last = True

    def __init__(self, sections: dict, device: torch.device, bf16: bool, mask_kinds: list[str] | None = None,
                 latent=None, preview=None):
        self.s, self.device, self.bf16 = sections, device, bf16
        self.sched = sections["diffusion"].build_schedule()
        self.mask_kinds, self.latent, self._preview = mask_kinds, latent, preview

    def loss(self, net, batch, rand):
        p = self.prepare_batch(batch, rand)
        return batch_loss(net, self.s["diffusion"], self.sched, p.x0, rand, p.cond, **p.loss_kw)

    def prepare_batch(self, batch, rand) -> Prepared:
        """The micro-batch as the loss sees it (latents, flips, labels, masks), from the step's draws."""
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
            f = self.latent.factor if self.latent is not None else 1
            m = random_masks(rand.global_n, self.s["data"].size * f, self.mask_kinds, generator=rand.generator)
            m = m[rand.part].to(self.device)
            if self.latent is not None:
                m = self.latent.downsample_mask(m)
            cond["concat"] = torch.cat([m, x0 * m], 1).contiguous(memory_format=torch.channels_last)
        return Prepared(x0, cond, {})

    def preview(self, model, path: Path) -> None:
        if self._preview is not None and not self.mask_kinds:  # a conditioned model needs images to fill
            self._preview(model, path)


class ImageModality(Modality):
    name = "image"
    data_section, model_section = ImageData, UNet2DConfig
    channels_last = True
    preview_count = 64
    default_completion = "repaint"
    latent_training = "cache"   # in an autoencoder's space: train on a cache of posterior moments (latent.py)

    def check(self, sections: dict) -> None:
        data, model = sections["data"], sections["model"]
        for key, want in (("in_channels", data.channels), ("image_size", data.size)):
            if getattr(model, key) != want:
                raise ConfigError(f"model.{key} = {getattr(model, key)} but the data gives {want} "
                                  f"(data.{'channels' if key == 'in_channels' else 'size'}); make them equal")

    def check_latent(self, view: dict, sections: dict, codec) -> None:
        model, ae = sections["model"], codec.info.get("run_dir", "the autoencoder")
        C, S = view["data"].channels, view["data"].size
        problems = []
        if model.in_channels != C:
            problems.append(f"model.in_channels = {model.in_channels} but the latents of '{ae}' have {C} channels; "
                            f"set model.in_channels = {C}")
        if model.image_size != S:
            problems.append(f"model.image_size = {model.image_size} but {sections['data'].size} px images give "
                            f"{S}x{S} latents (factor {codec.factor}); set model.image_size = {S}")
        want_extra = C + 1 if sections["latent"].train_masks else 0
        if model.extra_in_channels != want_extra:
            problems.append(f"model.extra_in_channels = {model.extra_in_channels}; with latent.train_masks = "
                            f"{sections['latent'].train_masks} it must be {want_extra}")
        if sections["data"].random_flip:
            problems.append("data.random_flip = true flips latents, not images; set it to false")
        if sections["sample"].clip_x0 > 0:
            problems.append(f"sample.clip_x0 = {sections['sample'].clip_x0} would clamp unit-variance latents; "
                            "set sample.clip_x0 = 0")
        if problems:
            raise ConfigError("latent recipe: " + "; ".join(problems))

    def fingerprint(self, sections: dict, mask_kinds=None) -> str:
        fp = super().fingerprint(sections)
        return fp + (f"+masks:{','.join(mask_kinds)}" if mask_kinds else "")

    def conditioned(self, sections: dict) -> bool:
        return sections["model"].extra_in_channels > 0

    def prepare(self, run) -> dict:
        return split_summary(self.dataset(run, "train"), self.dataset(run, "test"), "items")

    def dataset(self, run, split: str):
        return build_image_dataset(run["data"], split)

    def build_model(self, sections: dict) -> UNet2D:
        return UNet2D(sections["model"])

    def task(self, sections, device, bf16, preview=None, model=None, mask_kinds=None, latent=None):
        return ImageTask(sections, device, bf16, mask_kinds, latent, preview)

    def sample_shape(self, sections: dict, length: int | None = None) -> tuple[int, ...]:
        d = sections["data"]
        return d.channels, d.size, d.size

    def generation_refusal(self, sections: dict, run_dir) -> str | None:
        if self.conditioned(sections):
            return f"'{run_dir}' holds a mask-conditioned model: use `multidiff inpaint` with it"
        return None

    def write_samples(self, x, out: str, sections: dict, labels, request) -> str:
        if is_folder(out):
            for i, xi in enumerate(x):
                save_image_grid(xi, Path(out) / f"sample_{i:04d}.png", padding=0)
            return f"{len(x)} PNGs to {out}/"
        one_row_per_class = labels is None and self.num_classes(sections) == 10 and len(x) % 10 == 0
        save_image_grid(x, out, nrow=10 if one_row_per_class else None)
        return str(out)

    def sample_output(self, sections: dict, n: int) -> OutputSpec:
        return OutputSpec((".png",), folder=True, why=PNG_ONLY)

    def completed_output(self, sections: dict) -> OutputSpec:
        return OutputSpec((".png",), why=PNG_ONLY)

    def write_preview(self, x, path: Path, sections: dict) -> None:
        save_image_grid(x, path, nrow=grid_rows(self.num_classes(sections), len(x)))

    def read_known(self, request, sections: dict) -> Known:
        if not request.image or not (request.mask or request.mask_kind):
            raise ConfigError("image inpainting needs --image and --mask or --mask-kind")
        if getattr(request, "crop_to_mask", False):  # a crop around the hole of the full-resolution picture
            if request.mask:
                check_mask_fits(request.mask, request.image, request.resize_mask)
            return read_cropped(request, sections)
        size, C = sections["data"].size, sections["data"].channels
        known = load_image(request.image, size, C)[None]
        if request.mask:
            check_mask_fits(request.mask, request.image, request.resize_mask)
            mask = load_mask(request.mask, size)[None]
        else:
            kinds = [k for k in MASK_KINDS if k != "mixture"]
            if request.mask_kind not in kinds:
                raise ConfigError(f"--mask-kind must be one of {', '.join(kinds)}")
            mask = make_mask(request.mask_kind, size, torch.Generator().manual_seed(request.seed))[None]
        return Known(known, mask, f"{int((mask == 0).sum())} of {size * size} pixels filled")

    def write_completed(self, x, out: str, sections: dict, known: Known, request) -> str:
        if isinstance(known, CroppedKnown):
            return write_cropped(x, out, known)
        save_image_grid(x, out, padding=0)
        return str(out)


IMAGE = ImageModality()
