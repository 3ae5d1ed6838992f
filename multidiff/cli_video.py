"""`multidiff sample` and `multidiff inpaint` for video runs (kinds video and video_prediction)."""
from __future__ import annotations

from pathlib import Path

import torch

from .cli_common import sample_settings
from .cli_image import _device
from .data.frame_masks import frames_mask, parse_known_frames
from .data.video import read_video, save_video_grid, write_video
from .recipes import registry, video
from .engine.runs import load_run
from .recipes.image_inpainting import with_steps
from .recipes.video_prediction import PredictConfig, plain_model
from .engine.config import ConfigError
from .engine.precision import resolve_precision

VIDEO_KINDS = ("video", "video_prediction")


def _is_folder(out: str) -> bool:
    return out.endswith(("/", "\\")) or Path(out).is_dir()


def sample_command(args) -> int:
    sections = load_run(args.run_dir, registry.schemas())
    if video.is_conditioned(sections):
        raise ConfigError(f"'{args.run_dir}' holds a frame-conditioned model: use `multidiff inpaint "
                          f"{args.run_dir} --input clip.mp4 --known-frames 0:4 --out pred.mp4` with it")
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    codec = video.codec_of(sections, dev, bf16)
    model, ckpt = video.load_trained(Path(args.run_dir), sections, codec)
    cfg, labels = sample_settings(args, sections)
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    x = video.generate(sections, model, cfg, args.n, dev, bf16, labels=labels, guidance=args.guidance,
                       frames=args.frames, codec=codec)
    fps = args.fps or cfg.fps
    if _is_folder(args.out):
        video.save_clips(x, Path(args.out), fps, nrow=video.nrow_for(sections, args.n) if labels is None else None)
        print(f"wrote {len(x)} clips of {x.shape[2]} frames (MP4 + GIF each, grid.mp4, grid.gif, frames.png) "
              f"to {args.out} (from {ckpt})")
    else:
        if Path(args.out).suffix.lower() == ".png":
            video.save_frame_grid(x, Path(args.out))
        else:
            save_video_grid(x, args.out, fps=fps)
        print(f"wrote {args.out}: {len(x)} clips of {x.shape[2]} frames (from {ckpt})")
    return 0


def _model_for(run_dir: Path, method: str):
    """The sections, model, sampler settings and latent codec `method` needs from a video or
    video_prediction run."""
    sections = load_run(run_dir, registry.schemas())
    cfg = sections.get("predict", PredictConfig())
    conditioned = video.is_conditioned(sections)
    if method == "conditioned":
        if not conditioned:
            raise ConfigError(f"--method conditioned needs a frame-conditioned run (a video_prediction recipe); "
                              f"'{run_dir}' holds a plain video model: use --method replace, repaint or reconstruction")
        codec = video.codec_of(sections)
        return sections, video.load_trained(run_dir, sections, codec)[0], cfg, codec
    if conditioned:
        if sections["recipe"].kind != "video_prediction":
            raise ConfigError(f"'{run_dir}' holds a frame-conditioned model: use --method conditioned")
        from .engine.runs import Run

        sub, model, codec = plain_model(Run(run_dir, sections, log=lambda *a: None), None, resume=False, train=False)
        return sub, model, cfg, codec
    codec = video.codec_of(sections)
    return sections, video.load_trained(run_dir, sections, codec)[0], cfg, codec


def inpaint_command(args) -> int:
    run_dir = Path(args.run_dir)
    sections = load_run(run_dir, registry.schemas())
    method = args.method or ("conditioned" if video.is_conditioned(sections) else "replace")
    if not args.known_frames:
        raise ConfigError("video completion needs --known-frames, e.g. 0:4 (predict the rest from the first 4) "
                          "or 0,15 (interpolate between the first and the 16th)")
    sections, model, cfg, codec = _model_for(run_dir, method)
    d = sections["data"]
    T = args.frames or d.frames
    known_idx = parse_known_frames(args.known_frames, T)
    clip = read_video(args.input, d.size, d.channels, d.frame_stride, d.fps, max_frames=T)
    if clip.shape[1] <= known_idx[-1]:
        raise ConfigError(f"'{args.input}' has {clip.shape[1]} frames, but --known-frames {args.known_frames} needs "
                          f"frame {known_idx[-1]}: give a longer video or other --known-frames")
    known = torch.zeros(1, d.channels, T, d.size, d.size)
    known[:, :, :clip.shape[1]] = clip  # frames past the input's end are generated (never read)
    if args.steps:
        cfg = with_steps(cfg, args.steps)
    dev = _device()
    x = video.complete(method, sections, model, known, frames_mask(known_idx, T), cfg, dev,
                       resolve_precision(args.precision, dev), torch.Generator().manual_seed(args.seed), codec)
    fps = args.fps or sections["sample"].fps
    if Path(args.out).suffix.lower() == ".png":
        video.save_frame_grid(x, Path(args.out))
    else:
        write_video(x[0], args.out, fps=fps)
    print(f"wrote {args.out} ({method}: {T - len(known_idx)} of {T} frames generated, frames "
          f"{', '.join(map(str, known_idx))} kept)")
    return 0
