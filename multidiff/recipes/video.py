"""Video recipes: prepare clips (building Moving-digits when the recipe can), train the
factorised space-time U-Net, write sample clips (MP4 + GIF + a frame grid), evaluate.

One kind serves plain generation (optionally class-conditional, optionally joint image-video
training) and frame-conditioned models for prediction/interpolation ([video] known_patterns:
the model then takes [known-frame mask, known frames] as extra input channels).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.frame_masks import PATTERNS, random_frame_masks
from ..data.image import save_image_grid
from ..data.video import VideoData, build_video_dataset, save_video_grid, write_gif, write_video
from ..models.unet3d import UNet3D, UNet3DConfig
from ..engine import TrainConfig, Trainer, latest_checkpoint, load_ema_weights, to_toml
from ..engine.config import ConfigError
from ..modalities.sections import DiffusionConfig, SampleConfig, batch_loss
from ..engine.distributed import DistInfo
from ..engine.precision import resolve_precision
from . import image
from ..engine.runs import Run
from .video_latent import VideoLatentConfig, codec_of, decode_clips, encode_clips, identity, latent_view


@dataclass
class VideoPrepConfig:
    """The [prep] section: how `prepare` makes the data when data.root is missing."""
    build: str = ""              # "" = the data must exist | "moving_digits": data_prep.moving_digits
    n: int = 1000                # train clips
    n_test: int = 200
    frames: int = 16             # frames per written clip (>= data.frames; clips are cut from them)
    digits: str = "1"            # 1 (labelled by class folder) | 2 | 1-2
    digit_size: int = 0          # 0 = data.size * 28 / 64 (Moving MNIST's proportion)
    seed: int = 0

    def __post_init__(self):
        if self.build not in ("", "moving_digits"):
            raise ValueError(f"prep.build must be '' or 'moving_digits', got {self.build!r}")


@dataclass
class VideoTrainConfig:
    """The [video] section: what the model learns besides plain clips."""
    image_frames: int = 0        # joint image-video training: independent frames appended to each clip
    known_patterns: list[str] = field(default_factory=list)  # frame-conditioned model: prefix | ends | none

    def __post_init__(self):
        bad = [p for p in self.known_patterns if p not in PATTERNS]
        if bad:
            raise ValueError(f"video.known_patterns: unknown {bad}; choose from {PATTERNS}")
        if self.image_frames < 0:
            raise ValueError(f"video.image_frames must be >= 0, got {self.image_frames}")


@dataclass
class VideoSampleConfig(SampleConfig):
    """The [sample] section of a video recipe."""
    n: int = 16
    frames: int = 0              # clip length to generate; 0 = the training length (data.frames)
    fps: float = 8.0


@dataclass
class VideoEvalConfig:
    """The [eval] section."""
    n: int = 100                 # generated clips per table row
    batch: int = 50
    table: list[str] = field(default_factory=lambda: ["dpmpp_2m:20", "ddim:50"])
    classifier_epochs: int = 4
    classifier_frames: int = 4   # frames per real train clip the digit classifier learns from
    i3d_weights: str = ""        # local TorchScript I3D (i3d_torchscript.pt): FVD
    seed: int = 1


SCHEMA = {"data": VideoData, "model": UNet3DConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
          "video": VideoTrainConfig, "sample": VideoSampleConfig, "prep": VideoPrepConfig, "eval": VideoEvalConfig,
          "latent": VideoLatentConfig}


def check_model_fits_data(sections: dict, codec=None) -> None:
    """sections: the pixel config; with a latent codec, the U-Net must fit the latent clips."""
    latent = latent_view(sections, codec)
    data, model, video = latent["data"], sections["model"], sections["video"]
    src = ("the autoencoder's latent_channels", "data.size / its factor") if codec else ("data.channels", "data.size")
    for key, want, where in (("in_channels", data.channels, src[0]), ("image_size", data.size, src[1])):
        if getattr(model, key) != want:
            raise ConfigError(f"model.{key} = {getattr(model, key)} but the data gives {want} ({where}); make them equal")
    extra = data.channels + 1 if video.known_patterns else 0
    if model.extra_in_channels != extra:
        why = (f"video.known_patterns = {video.known_patterns} makes a frame-conditioned model (mask + known frames)"
               if extra else "video.known_patterns is empty (no frame conditioning)")
        raise ConfigError(f"model.extra_in_channels = {model.extra_in_channels} but {why}: set it to {extra}")
    if video.known_patterns and video.image_frames:
        raise ConfigError("video.image_frames (joint image-video training) and video.known_patterns (frame "
                          "conditioning) cannot be combined; set one of them to its default")
    if video.known_patterns and data.frames < 2:
        raise ConfigError(f"frame-conditioned training needs data.frames >= 2, got {data.frames}")


def fingerprint(sections: dict, codec=None) -> str:
    """What the weights depend on (a resumed or sampled run must agree): the config, and the autoencoder."""
    keep = {k: sections[k] for k in ("data", "model", "diffusion", "video")}
    return hashlib.sha256((to_toml(keep, identity=True) + identity(codec)).encode()).hexdigest()[:16]


def is_conditioned(sections: dict) -> bool:
    return bool(sections["video"].known_patterns)


class VideoTask:
    """Loss and previews for the 3-D U-Net: clips [B, C, T, H, W] in channels_last_3d."""

    channels_last = True  # the trainer's channels_last means channels_last_3d for UNet3D

    def __init__(self, sections: dict, device: torch.device, bf16: bool, codec=None):
        self.s, self.device, self.bf16, self.codec = sections, device, bf16, codec  # pixel sections
        self.sched = sections["diffusion"].build_schedule()

    def loss(self, net, batch, rand):
        x0, y = batch
        x0 = x0.to(self.device)
        if self.codec is not None:
            x0 = encode_clips(self.codec, x0)
        B, C, T, H, W = x0.shape
        cond, video = {}, self.s["video"]
        if self.s["model"].num_classes > 0:
            cond["y"] = torch.as_tensor(y).to(self.device)
        if video.image_frames:
            x0, cond["frame_mask"] = self._append_images(x0, rand, video.image_frames)
        x0 = x0.contiguous(memory_format=torch.channels_last_3d)
        if video.known_patterns:
            m = random_frame_masks(B, T, video.known_patterns, rand.rand(2).cpu()).to(x0)
            cond["concat"] = torch.cat([m.expand(B, 1, T, H, W), x0 * m], 1).contiguous(
                memory_format=torch.channels_last_3d)
        return batch_loss(net, self.s["diffusion"], self.sched, x0, rand, cond)

    def _append_images(self, x0, rand, k: int):
        """Joint image-video training (Ho et al. 2022): k frames per clip, each taken from a random clip
        and time of the micro-batch (from its own clip when the model is class-conditional, so its label
        still describes them), appended as independent frames that temporal layers never mix."""
        B, C, T, H, W = x0.shape
        t = rand.randint(T, k)
        src = rand.randint(B, k) if self.s["model"].num_classes == 0 else torch.arange(B)[:, None].expand(B, k)
        images = x0[src.to(x0.device), :, t.to(x0.device)]                # [B, k, C, H, W]
        x = torch.cat([x0, images.permute(0, 2, 1, 3, 4)], dim=2)
        mask = torch.zeros(B, T + k, dtype=torch.bool, device=x0.device)
        mask[:, T:] = True
        return x, mask

    def preview(self, model, path: Path) -> None:
        if is_conditioned(self.s):
            return  # a frame-conditioned model needs frames to complete: the recipe's evaluation shows those
        n = min(self.s["sample"].n, 8)
        x = generate(self.s, model, self.s["sample"], n, self.device, self.bf16, progress=False, codec=self.codec)
        save_frame_grid(x, path)


def build_model(sections: dict) -> UNet3D:
    return UNet3D(sections["model"])


def load_trained(run_dir: Path, sections: dict, codec=None) -> tuple[UNet3D, Path]:
    """The EMA weights of a run; refuses weights trained on other latents than `codec` gives."""
    from ..engine.checkpoint import read_state

    ckpt = latest_checkpoint(Path(run_dir) / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"'{run_dir}' has no checkpoint yet: train it first (multidiff train ...)")
    if codec is not None and read_state(ckpt).get("fingerprint") != fingerprint(sections, codec):
        raise ConfigError(f"'{ckpt}' was not trained on the latents of [latent] autoencoder = "
                          f"'{sections['latent'].autoencoder}' as it is now (its weights or scale changed, or "
                          "it is another run): point [latent] autoencoder at the run the model was trained with")
    return load_ema_weights(ckpt, build_model(sections)), ckpt


def generate(sections: dict, model, sample_cfg: VideoSampleConfig, n: int, device, bf16: bool,
             seed: int | None = None, labels: torch.Tensor | None = None, guidance: float | None = None,
             frames: int | None = None, batch: int = 64, progress: bool = True,
             sampler_kw: dict | None = None, codec=None) -> torch.Tensor:
    """n clips [n, C, T, H, W] in [-1, 1]; T = frames, else sample.frames, else data.frames (a model
    trained on T frames runs on longer clips: its temporal attention's position bias is clipped).
    With a latent codec, latent clips are sampled (unclipped) and decoded frame by frame. The image
    recipe's sampling loop, with a clip's shape."""
    d = latent_view(sections, codec)["data"]
    T = frames or sample_cfg.frames or sections["data"].frames
    kw = dict(sampler_kw or {})
    if codec is not None:
        kw["clip_x0"] = None  # latents are not bounded to [-1, 1]
    return image.generate(sections, model, sample_cfg, n, device, bf16, seed=seed, labels=labels, guidance=guidance,
                          batch=batch, progress=progress, sampler_kw=kw, shape=(d.channels, T, d.size, d.size),
                          decode=(lambda z: decode_clips(codec, z)) if codec is not None else None)


def complete(method: str, sections: dict, model, known: torch.Tensor, mask: torch.Tensor, cfg, device, bf16: bool,
             generator: torch.Generator, codec=None) -> torch.Tensor:
    """Fill the unknown frames (mask [B or 1, 1, T, 1, 1] == 0) of `known` [B, C, T, H, W] with `method`
    (conditioned | replace | repaint: image inpainting's function; a frame mask is a mask like any
    other). With a latent codec the known frames are encoded, completed as latents and decoded."""
    from .image_inpainting import inpaint

    if codec is None:
        return inpaint(method, sections, model, known, mask, cfg, device, bf16, generator)
    z = inpaint(method, latent_view(sections, codec), model, encode_clips(codec, known), mask, cfg, device, bf16,
                generator, clip_x0=None)
    return decode_clips(codec, z)


def save_frame_grid(clips: torch.Tensor, path: Path) -> Path:
    """A PNG with one row per clip and one column per frame (what a page can show without playing)."""
    B, C, T, H, W = clips.shape
    return save_image_grid(clips.transpose(1, 2).reshape(B * T, C, H, W), path, nrow=T)


def save_clips(clips: torch.Tensor, out_dir: Path, fps: float, nrow: int | None = None) -> dict:
    """Each clip as clip_XXXX.mp4 + .gif, plus grid.mp4, grid.gif and frames.png of all of them."""
    out_dir = Path(out_dir)
    for i, c in enumerate(clips):
        write_video(c, out_dir / f"clip_{i:04d}.mp4", fps=fps)
        write_gif(c, out_dir / f"clip_{i:04d}.gif", fps=fps)
    save_video_grid(clips, out_dir / "grid.mp4", nrow=nrow, fps=fps)
    save_video_grid(clips, out_dir / "grid.gif", nrow=nrow, fps=fps)
    save_frame_grid(clips, out_dir / "frames.png")
    return {"clips": len(clips), "dir": str(out_dir)}


def nrow_for(sections: dict, n: int) -> int:
    return 10 if sections["model"].num_classes == 10 and n % 10 == 0 else max(1, round(math.sqrt(n)))


# ---- the pipeline -----------------------------------------------------------------------
def prepare(run: Run) -> dict:
    d, p = run["data"], run["prep"]
    root = Path(d.root)
    if p.build == "moving_digits" and (not (root / "manifest.json").is_file() or _incomplete(root)):
        from data_prep.moving_digits import PrepError, build

        if p.frames < d.frames:
            raise ConfigError(f"prep.frames = {p.frames} is shorter than data.frames = {d.frames}")
        try:
            made = build(root, n=p.n, n_test=p.n_test, frames=p.frames, size=d.size, digit_size=p.digit_size or None,
                         digits=p.digits, seed=p.seed)
        except PrepError as e:
            raise ConfigError(str(e)) from None
        run.log(f"[prepare] moving digits: {made['written']} clips written to {root}")
    elif d.layout == "ucf101" and not (root / "splits" / "classes.txt").is_file():
        from data_prep.ucf101 import PrepError, prepare as check_ucf101

        try:  # validates the download (saying where to get it when it is missing) and writes the split lists
            report = check_ucf101(root, progress=run.main)
        except PrepError as e:
            raise ConfigError(str(e)) from None
        run.log(f"[prepare] UCF-101: {report['present']} videos of {report['classes']} classes, "
                f"{len(report['corrupt'])} corrupt left out; split lists in {root / 'splits'}")
    elif not root.exists():
        raise ConfigError(f"data.root '{root}' does not exist: point data.root to your videos, or set "
                          "prep.build = \"moving_digits\" to build Moving-digits clips there")
    train, test = build_video_dataset(d, "train"), build_video_dataset(d, "test")
    return {"train_clips": len(train), "test_clips": len(test), "classes": train.num_classes,
            "skipped": [f"{p}: {r}" for p, r in train.skipped + test.skipped]}


def _incomplete(root: Path) -> bool:
    """A Moving-digits folder whose build was killed before it finished (its manifest says so)."""
    import json

    f = root / "manifest.json"
    return f.is_file() and not json.loads(f.read_text()).get("complete", False)


def train(run: Run, dist: DistInfo, resume: bool, run_dir: Path | None = None) -> dict:
    sections = run.sections
    dataset = build_video_dataset(sections["data"], "train")
    K = sections["model"].num_classes
    if K and K != dataset.num_classes:
        raise ConfigError(f"model.num_classes = {K} but the data has {dataset.num_classes} classes; "
                          f"set model.num_classes = {dataset.num_classes} (or 0)")
    bf16 = resolve_precision(sections["train"].precision, dist.device)
    codec = codec_of(sections, dist.device, bf16)
    check_model_fits_data(sections, codec)
    task = VideoTask(sections, dist.device, bf16, codec)
    trainer = Trainer(build_model(sections), dataset, task, sections["train"], run_dir or run.dir, dist=dist,
                      fingerprint=fingerprint(sections, codec))
    ckpt = trainer.fit(resume=resume)
    return {"checkpoint": str(ckpt), "precision": "bf16" if trainer.bf16 else "fp32"}


def sample_stage(run: Run, dist: DistInfo) -> dict:
    bf16 = resolve_precision(run["train"].precision, dist.device)
    codec = codec_of(run.sections, dist.device, bf16)
    model, ckpt = load_trained(run.dir, run.sections, codec)
    s = run["sample"]
    x = generate(run.sections, model, s, s.n, dist.device, bf16, codec=codec)
    return {**save_clips(x, run.dir / "samples" / "final", s.fps, nrow_for(run.sections, len(x))),
            "checkpoint": str(ckpt)}


TRAIN_STAGES = ("prepare", "train")


def run_recipe(run: Run, dist: DistInfo, resume: bool, stages=None) -> None:
    """All stages, or only `stages` (what another recipe needs of this one)."""
    from .video_eval import evaluate

    if not run["latent"].autoencoder:
        check_model_fits_data(run.sections)  # (a latent run checks once its autoencoder is loaded)
    want = set(stages or ("prepare", "train", "sample", "evaluate"))
    if "prepare" in want:
        run.stage("prepare", ["data", "prep"], lambda: prepare(run))
    if "train" in want:
        run.stage("train", ["data", "model", "diffusion", "video", "train", "latent"], lambda: train(run, dist, resume))
    if not dist.is_main or is_conditioned(run.sections):
        return  # a frame-conditioned model is sampled and scored by the prediction recipe
    deps = ["data", "model", "diffusion", "video", "train", "latent"]
    if "sample" in want:
        run.stage("sample", deps + ["sample"], lambda: sample_stage(run, dist))
    if "evaluate" in want:
        run.stage("evaluate", deps + ["sample", "eval"], lambda: evaluate(run, dist))
