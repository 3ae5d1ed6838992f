"""Video: the factorised space-time U-Net on clips [C, T, size, size] in [-1, 1] (Moving-digits,
a folder of clips, UCF-101), optionally class-conditional, with joint image-video training, and
frame-conditioned ([video] known_patterns: the model then takes [known-frame mask, known frames] as
extra input channels). Trained with the patterns none / prefix / ends (MCVD, Voleti et al. 2022) one
model generates (all-zero mask), predicts, interpolates, animates a still and extends clips block by
block (pipelines/extend.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_prep import PrepError, moving_digits, ucf101, videos

from ..data.frame_masks import PATTERNS, frames_mask, parse_known_frames, random_frame_masks
from ..data.still import load_still
from ..data.video import VideoData, build_video_dataset, read_video, save_video_grid, write_video
from ..data.video_write import save_clips, save_frame_grid
from ..engine.config import ConfigError
from ..engine.runs import section_hash
from ..models.unet3d import UNet3D, UNet3DConfig
from ..outputs import OutputSpec
from ..utils import added_key
from .base import Known, Modality, Prepared, split_summary
from .image import grid_rows, is_folder
from .sections import SampleConfig, batch_loss


@dataclass
class VideoPrepConfig:
    """The [prep] section: how `prepare` makes the data when data.root is missing."""
    build: str = ""              # "" = the data must exist | "moving_digits": data_prep.moving_digits
                                 # | "videos": your own clips in `source`, cut by data_prep.videos
    n: int = 1000                # train clips
    n_test: int = 200
    frames: int = 16             # frames per written clip (>= data.frames; clips are cut from them)
    digits: str = "1"            # 1 (labelled by class folder) | 2 | 1-2
    digit_size: int = 0          # 0 = data.size * 28 / 64 (Moving MNIST's proportion)
    seed: int = 0
    source: str = added_key("")  # build = "videos": the folder of your clips (or of one subfolder per class)
    fps: float = added_key(0.0)  # build = "videos": resample to this rate (0 = each video's own)

    def __post_init__(self):
        if self.build not in ("", "moving_digits", "videos"):
            raise ValueError(f"prep.build must be '', 'moving_digits' or 'videos', got {self.build!r}")
        if self.build == "videos" and not self.source:
            raise ValueError('prep.build = "videos" needs prep.source: the folder of your video clips')


@dataclass
class VideoTrainConfig:
    """The [video] section: what the model learns besides plain clips."""
    image_frames: int = 0        # joint image-video training: independent frames appended to each clip
    # frame-conditioned model: prefix | ends | none, drawn uniformly per clip (repeat one to weight it);
    # with "none" it also generates from noise alone
    known_patterns: list[str] = field(default_factory=list)

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
class VideoLatentConfig:
    """The [latent] section of a video recipe."""
    autoencoder: str = ""        # a trained autoencoder run directory; "" = pixel space


class VideoTask:
    """Loss and previews for the 3-D U-Net: clips [B, C, T, H, W] in channels_last_3d. With `latent`
    (a frame codec, see latent.py) clips are encoded on the fly: decoded clips are cached as uint8
    already, and the encoder costs a fraction of the U-Net."""

    channels_last = True  # the trainer's channels_last means channels_last_3d for UNet3D

    def __init__(self, sections: dict, device: torch.device, bf16: bool, latent=None, preview=None):
        self.s, self.device, self.bf16, self.latent = sections, device, bf16, latent  # pixel sections
        self.sched = sections["diffusion"].build_schedule()
        self._preview = preview

    def loss(self, net, batch, rand):
        p = self.prepare_batch(batch, rand)
        return batch_loss(net, self.s["diffusion"], self.sched, p.x0, rand, p.cond, **p.loss_kw)

    def prepare_batch(self, batch, rand) -> Prepared:
        """The micro-batch as the loss sees it (latents, appended images, labels, known frames)."""
        x0, y = batch
        x0 = x0.to(self.device)
        if self.latent is not None:
            x0 = self.latent.encode(x0).to(self.device)
        B, C, T, H, W = x0.shape
        cond, video = {}, self.s["video"]
        if self.s["model"].num_classes > 0:
            cond["y"] = torch.as_tensor(y).to(self.device)
        if video.image_frames:
            x0, cond["frame_mask"] = self._append_images(x0, rand, video.image_frames)
        x0 = x0.contiguous(memory_format=torch.channels_last_3d)
        if video.known_patterns:  # over the clip's T frames; appended independent images are never known
            m = random_frame_masks(B, T, video.known_patterns, rand.rand(2).cpu()).to(x0)
            m = torch.cat([m, m.new_zeros(B, 1, x0.shape[2] - T, 1, 1)], 2)
            cond["concat"] = torch.cat([m.expand(B, 1, x0.shape[2], H, W), x0 * m], 1).contiguous(
                memory_format=torch.channels_last_3d)
        return Prepared(x0, cond, {})

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
        patterns = self.s["video"].known_patterns
        if self._preview is not None and (not patterns or "none" in patterns):
            self._preview(model, path)  # a model that only completes needs frames: the evaluation shows those


# what write_video / save_video_grid write, and .png: every frame of every clip in one picture
CLIP_FILES = (".mp4", ".gif", ".webm", ".mkv", ".mov", ".avi", ".png")
CLIP_FILES_WHY = ".png holds the frames side by side"


def _incomplete(root: Path) -> bool:
    """A Moving-digits folder whose build was killed before it finished (its manifest says so)."""
    f = root / "manifest.json"
    return f.is_file() and not json.loads(f.read_text()).get("complete", False)


class VideoModality(Modality):
    name = "video"
    data_section, model_section = VideoData, UNet3DConfig
    extra_sections = {"video": VideoTrainConfig, "prep": VideoPrepConfig, "latent": VideoLatentConfig}
    channels_last = True
    final_samples = "final/"
    preview_count = 8
    conditioned_name = "frame-conditioned"
    latent_training = "on_the_fly"   # in an autoencoder's space: clips are encoded in the loss (latent.py)

    def check(self, sections: dict, source: tuple[str, str] = ("data.channels", "data.size")) -> None:
        """sections: the config the U-Net sees (a latent view names its `source` of channels and size)."""
        data, model, video = sections["data"], sections["model"], sections["video"]
        for key, want, where in (("in_channels", data.channels, source[0]), ("image_size", data.size, source[1])):
            if getattr(model, key) != want:
                raise ConfigError(f"model.{key} = {getattr(model, key)} but the data gives {want} ({where}); "
                                  "make them equal")
        extra = data.channels + 1 if video.known_patterns else 0
        if model.extra_in_channels != extra:
            why = (f"video.known_patterns = {video.known_patterns} makes a frame-conditioned model (mask + known "
                   "frames)" if extra else "video.known_patterns is empty (no frame conditioning)")
            raise ConfigError(f"model.extra_in_channels = {model.extra_in_channels} but {why}: set it to {extra}")
        if video.known_patterns and data.frames < 2:
            raise ConfigError(f"frame-conditioned training needs data.frames >= 2, got {data.frames}")

    def check_latent(self, view: dict, sections: dict, codec) -> None:
        self.check(view, source=("the autoencoder's latent_channels", "data.size / its factor"))

    def fingerprint(self, sections: dict) -> str:
        return section_hash(sections, ["data", "model", "diffusion", "video"])

    def conditioned(self, sections: dict) -> bool:
        return bool(sections["video"].known_patterns)

    def generates(self, sections: dict) -> bool:
        return not self.conditioned(sections) or "none" in sections["video"].known_patterns

    def generation_cond(self, sections: dict, shape: tuple) -> dict:
        if not self.conditioned(sections):
            return {}
        return {"concat": torch.zeros(shape[0], shape[1] + 1, *shape[2:])}  # mask 0: no frame known

    def block_length(self, sections: dict) -> int:
        return sections["data"].frames

    def continues(self, sections: dict) -> bool:
        return "prefix" in sections["video"].known_patterns

    def prepare(self, run) -> dict:
        d, p = run["data"], run["prep"]
        root = Path(d.root)
        if p.build == "moving_digits" and (not (root / "manifest.json").is_file() or _incomplete(root)):
            if p.frames < d.frames:
                raise ConfigError(f"prep.frames = {p.frames} is shorter than data.frames = {d.frames}")
            try:
                made = moving_digits.build(root, n=p.n, n_test=p.n_test, frames=p.frames, size=d.size,
                             digit_size=p.digit_size or None, digits=p.digits, seed=p.seed)
            except PrepError as e:
                raise ConfigError(str(e)) from None
            run.log(f"[prepare] moving digits: {made['written']} clips written to {root}")
        elif p.build == "videos":
            if p.frames < d.frames:
                raise ConfigError(f"prep.frames = {p.frames} is shorter than data.frames = {d.frames}")
            try:
                made = videos.build(p.source, root, size=d.size, frames=p.frames, fps=p.fps, channels=d.channels,
                                    progress=run.main)
            except PrepError as e:
                raise ConfigError(str(e)) from None
            run.log(f"[prepare] {made['videos']} videos of '{p.source}': {made['train']} train / {made['test']} test "
                    f"clips in {root} ({len(made['left_out'])} left out, see {root / 'manifest.json'})")
        elif d.layout == "ucf101" and not (root / "splits" / "classes.txt").is_file():
            try:  # validates the download (saying where to get it when it is missing) and writes the split lists
                report = ucf101.prepare(root, progress=run.main)
            except PrepError as e:
                raise ConfigError(str(e)) from None
            run.log(f"[prepare] UCF-101: {report['present']} videos of {report['classes']} classes, "
                    f"{len(report['corrupt'])} corrupt left out; split lists in {root / 'splits'}")
        elif not root.exists():
            raise ConfigError(f"data.root '{root}' does not exist: point data.root to your videos, or set "
                              "prep.build = \"moving_digits\" to build Moving-digits clips there")
        return split_summary(self.dataset(run, "train"), self.dataset(run, "test"), "clips")

    def dataset(self, run, split: str):
        return build_video_dataset(run["data"], split)

    def build_model(self, sections: dict) -> UNet3D:
        return UNet3D(sections["model"])

    def task(self, sections, device, bf16, preview=None, model=None, latent=None):
        return VideoTask(sections, device, bf16, latent, preview)

    def sample_shape(self, sections: dict, length: int | None = None) -> tuple[int, ...]:
        """A model trained on T frames runs on longer clips: its temporal attention's position bias is clipped."""
        d, s = sections["data"], sections.get("sample")
        T = length or (s.frames if s is not None else 0) or d.frames
        return d.channels, T, d.size, d.size

    def generation_refusal(self, sections: dict, run_dir) -> str | None:
        if not self.generates(sections):
            return (f"'{run_dir}' holds a frame-conditioned model trained without the \"none\" known-frame pattern, "
                    f"so it needs known frames: use `multidiff inpaint {run_dir} --input clip.mp4 --known-frames 0:4 "
                    f"--out pred.mp4` or `multidiff animate {run_dir} --image still.png --out clip.mp4` with it")
        return None

    def generation_length(self, sections: dict, request) -> int | None:
        if request.frames is not None and request.frames < 1:
            raise ConfigError(f"--frames must be >= 1, got {request.frames}")
        return request.frames

    def write_samples(self, x, out: str, sections: dict, labels, request) -> str:
        fps = request.fps or sections["sample"].fps
        if is_folder(out):
            rows = grid_rows(self.num_classes(sections), len(x)) if labels is None else None
            save_clips(x, Path(out), fps, nrow=rows)
            return (f"{len(x)} clips of {x.shape[2]} frames (MP4 + GIF each, grid.mp4, grid.gif, frames.png) "
                    f"to {out}")
        if Path(out).suffix.lower() == ".png":
            save_frame_grid(x, Path(out))
        else:
            save_video_grid(x, out, fps=fps)
        return f"{out}: {len(x)} clips of {x.shape[2]} frames"

    def sample_output(self, sections: dict, n: int) -> OutputSpec:
        return OutputSpec(CLIP_FILES, folder=True, why=CLIP_FILES_WHY)

    def completed_output(self, sections: dict) -> OutputSpec:
        return OutputSpec(CLIP_FILES, why=CLIP_FILES_WHY)

    def write_preview(self, x, path: Path, sections: dict) -> None:
        save_frame_grid(x, path)

    def read_known(self, request, sections: dict) -> Known:
        if not request.input:
            raise ConfigError("video completion needs --input clip.mp4 and --known-frames (e.g. 0:4 or 0,15)")
        if not request.known_frames:
            raise ConfigError("video completion needs --known-frames, e.g. 0:4 (predict the rest from the first 4) "
                              "or 0,15 (interpolate between the first and the 16th)")
        d = sections["data"]
        T = request.frames or d.frames
        known_idx = parse_known_frames(request.known_frames, T)
        clip = read_video(request.input, d.size, d.channels, d.frame_stride, d.fps, max_frames=T)
        if clip.shape[1] <= known_idx[-1]:
            raise ConfigError(f"'{request.input}' has {clip.shape[1]} frames, but --known-frames "
                              f"{request.known_frames} needs frame {known_idx[-1]}: give a longer video or other "
                              "--known-frames")
        known = torch.zeros(1, d.channels, T, d.size, d.size)
        known[:, :, :clip.shape[1]] = clip  # frames past the input's end are generated (never read)
        return Known(known, frames_mask(known_idx, T),
                     f"{T - len(known_idx)} of {T} frames generated, frames {', '.join(map(str, known_idx))} kept")

    def write_completed(self, x, out: str, sections: dict, known: Known, request) -> str:
        if Path(out).suffix.lower() == ".png":
            save_frame_grid(x, Path(out))
        else:
            write_video(x[0], out, fps=request.fps or sections["sample"].fps)
        return str(out)

    def read_still(self, request, sections: dict, frames: int) -> Known:
        d = sections["data"]
        still, notes = load_still(request.image, d.size, d.channels)
        clip = torch.zeros(1, d.channels, frames, d.size, d.size)
        clip[:, :, 0] = still
        return Known(clip, frames_mask([0], frames),
                     f"frame 0 is '{request.image}'" + "".join(f"; {n}" for n in notes))


VIDEO = VideoModality()
