"""Latent diffusion recipes: the image pipeline (same core, U-Net, Trainer, samplers, guidance,
inpainting) run on the latents of a trained autoencoder run, with samples decoded to images.

The U-Net sees a "latent view" of the config: [data] size and channels become the latents' (size / f,
latent_channels), so every image function works unchanged; `decode` turns its output into images.
Stages: prepare -> train (encodes the train split once into a validated latent cache, then trains)
-> sample -> evaluate (samples decoded and scored as images, like the image recipes).

The autoencoder: [latent] autoencoder names its run directory. When that run does not exist yet and
[latent] autoencoder_recipe names a recipe, it is trained first (its own stages, into that
directory); otherwise the run stops with the exact command to train it. RUN/latent.json records the
autoencoder a model was trained with; sampling, inpainting and re-runs refuse a different one.
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
from . import image, image_inpainting
from .latent_codec import INFO_FILE, LatentCodec, load_autoencoder
from ..engine.runs import Run, load_recipe, save_resolved

RECORD = "latent.json"


@dataclass
class LatentConfig:
    """The [latent] section."""
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


SCHEMA = {**image.SCHEMA, "latent": LatentConfig}


def latent_view(sections: dict, codec: LatentCodec) -> dict:
    data = sections["data"]
    view = dataclasses.replace(data, size=data.size // codec.factor, channels=codec.latent_channels,
                               random_flip=False)
    return {**sections, "data": view}


def check_fits(sections: dict, codec: LatentCodec) -> None:
    data, model, ae = sections["data"], sections["model"], codec.info.get("run_dir", "the autoencoder")
    C, S = codec.latent_channels, data.size // codec.factor
    problems = []
    if data.channels != codec.info.get("in_channels", data.channels):
        problems.append(f"data.channels = {data.channels} but '{ae}' encodes {codec.info['in_channels']}-channel "
                        "images; make them equal")
    if data.size % codec.factor:
        problems.append(f"data.size = {data.size} is not a multiple of the autoencoder's factor {codec.factor}")
    if model.in_channels != C:
        problems.append(f"model.in_channels = {model.in_channels} but the latents of '{ae}' have {C} channels; "
                        f"set model.in_channels = {C}")
    if model.image_size != S:
        problems.append(f"model.image_size = {model.image_size} but {data.size} px images give {S}x{S} latents "
                        f"(factor {codec.factor}); set model.image_size = {S}")
    want_extra = C + 1 if sections["latent"].train_masks else 0
    if model.extra_in_channels != want_extra:
        problems.append(f"model.extra_in_channels = {model.extra_in_channels}; with latent.train_masks = "
                        f"{sections['latent'].train_masks} it must be {want_extra}")
    if data.random_flip:
        problems.append("data.random_flip = true flips latents, not images; set it to false")
    if sections["sample"].clip_x0 > 0:
        problems.append(f"sample.clip_x0 = {sections['sample'].clip_x0} would clamp unit-variance latents; "
                        "set sample.clip_x0 = 0")
    if problems:
        raise ConfigError("latent recipe: " + "; ".join(problems))


def ensure_autoencoder(run: Run, dist, resume: bool) -> LatentCodec:
    cfg = run["latent"]
    ae_dir = Path(cfg.autoencoder)
    if not (ae_dir / INFO_FILE).exists() and cfg.autoencoder_recipe:
        from . import registry

        file, sections = load_recipe(cfg.autoencoder_recipe, [], registry.schemas())
        if sections["recipe"].kind != "autoencoder":
            raise ConfigError(f"latent.autoencoder_recipe = '{file}' is a {sections['recipe'].kind!r} recipe, "
                              "not an autoencoder recipe")
        run.log(f"[autoencoder] '{ae_dir}' does not exist yet: training it with {file}")
        if dist.is_main:
            save_resolved(ae_dir, sections)
        registry.module("autoencoder").run_recipe(Run(ae_dir, sections, run.log, run.main), dist, resume)
        barrier(dist)
    return load_autoencoder(ae_dir, dist.device, precision=run["train"].precision)


def check_record(run_dir: Path, codec: LatentCodec) -> None:
    """A model trained on one autoencoder's latents is meaningless with another's: refuse, naming both files."""
    path = Path(run_dir) / RECORD
    if not path.exists():
        return
    rec = read_json(path)
    now = codec.identity()
    diff = [f"{k} {rec['identity'].get(k)!r} -> {now[k]!r}" for k in now if rec["identity"].get(k) != now[k]]
    if diff:
        raise ConfigError(f"'{path}': this model was trained on the latents of '{rec['autoencoder']}', but "
                          f"'{Path(codec.info['run_dir']) / INFO_FILE}' now differs ({'; '.join(diff)}). Restore "
                          "that autoencoder, or train the latent model again into a new --out directory")


def codec_of_run(run_dir, sections: dict, device, bf16: bool) -> LatentCodec:
    """The autoencoder a trained latent run was trained with, checked against RUN/latent.json."""
    if not (Path(run_dir) / RECORD).exists():
        raise ConfigError(f"'{run_dir}' has no {RECORD}: its latent model was not trained yet "
                          "(multidiff train <latent recipe> --out ...)")
    codec = load_autoencoder(sections["latent"].autoencoder, device, bf16)
    check_record(run_dir, codec)
    return codec


def encode_split(run: Run, codec: LatentCodec, split: str, dist=None):
    """The split's latents from the run's cache (built, resumed or rebuilt as needed; rank 0 writes)."""
    cfg = run["latent"]
    key = {"autoencoder": codec.identity(), "data": dataclasses.asdict(run["data"]), "split": split}
    images = build_image_dataset(run["data"], split)
    C, h, _ = codec.latent_shape(run["data"].size)

    def build():
        return build_latent_cache(run.dir / "latents" / split, images, lambda x: codec.moments(x, cfg.encode_batch),
                                  key, [2 * C, h, h], cfg.shard_size, run.log)
    if dist is None or not dist.enabled:
        return build()
    if dist.is_main:
        build()
    barrier(dist)
    return build()  # every shard now valid: only reads


def inpaint(method: str, sections: dict, model, known: torch.Tensor, mask: torch.Tensor, cfg, device, bf16: bool,
            generator: torch.Generator, codec: LatentCodec) -> torch.Tensor:
    """image_inpainting.inpaint in latent space: encode the known image, min-pool the mask to latent cells,
    fill, decode, then paste the known pixels back (the decoder only approximates them)."""
    mask = mask.expand(known.shape[0], 1, *known.shape[-2:]).float()
    z = image_inpainting.inpaint(method, latent_view(sections, codec), model, codec.encode(known),
                                 codec.downsample_mask(mask), cfg, device, bf16, generator, clip_x0=None)
    x = codec.decode(z).clamp(-1, 1)
    return mask * known + (1 - mask) * x


# ---- the pipeline -----------------------------------------------------------------------
def train(run: Run, view: Run, codec: LatentCodec, dist, resume: bool) -> dict:
    dataset, report = encode_split(run, codec, "train", dist)
    if dist.is_main:
        write_json(run.dir / RECORD, {"autoencoder": run["latent"].autoencoder, "identity": codec.identity()})
    masks = run["latent"].train_masks or None
    return {**image.train(view, dist, resume, mask_kinds=masks, dataset=dataset, latent=codec), "latent_cache": report}


def evaluate(run: Run, view: Run, codec: LatentCodec, dist) -> dict:
    from .image_eval import evaluate as evaluate_images

    summary = evaluate_images(run, dist, gen_sections=view.sections, decode=codec.decode)
    result = read_json(run.dir / "eval.json")
    ae_eval = Path(codec.info["run_dir"]) / "eval.json"
    result["autoencoder"] = {**codec.identity(), "run_dir": codec.info["run_dir"],
                             **({"held_out": read_json(ae_eval)} if ae_eval.exists() else {})}
    write_json(run.dir / "eval.json", result)
    return summary


def run_recipe(run: Run, dist, resume: bool) -> None:
    codec = ensure_autoencoder(run, dist, resume)
    check_fits(run.sections, codec)
    check_record(run.dir, codec)
    view = Run(run.dir, latent_view(run.sections, codec), run.log, run.main)
    # stage hashes include the autoencoder's identity: a retrained autoencoder re-runs them
    ident = Run(run.dir, {**run.sections, "autoencoder": AutoencoderIdentity(**codec.identity())}, run.log, run.main)
    deps = ["data", "model", "diffusion", "train", "latent", "autoencoder"]
    ident.stage("prepare", ["data"], lambda: image.prepare(run))
    ident.stage("train", deps, lambda: train(run, view, codec, dist, resume))
    if dist.is_main and not run["latent"].train_masks:  # a mask-conditioned model needs images to fill
        ident.stage("sample", deps + ["sample"], lambda: image.sample_stage(view, dist, decode=codec.decode))
        ident.stage("evaluate", deps + ["sample", "eval"], lambda: evaluate(run, view, codec, dist))
