"""Writing clips: MP4 (H.264 via PyAV), AVI, WebM, GIF, and grids of clips; atomic writes."""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from ..utils import atomic_path
from .image import save_image_grid


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


# H.264 when this PyAV build has libx264; otherwise MPEG-4 part 2 (plays everywhere, bigger files)
H264 = "libx264" if _has_encoder("libx264") else "mpeg4"
_CODECS = {".mp4": (H264, "mp4"), ".mkv": (H264, "matroska"), ".mov": (H264, "mov"),
           ".avi": ("mpeg4", "avi"), ".webm": ("libvpx-vp9", "webm")}


# ---------------------------------------------------------------------------------------- writing

def _to_uint8(clip: torch.Tensor, what: str) -> np.ndarray:
    """[C, T, H, W] in [-1, 1] -> uint8 [T, H, W, C]."""
    x = torch.as_tensor(clip).detach().float().cpu()
    if x.dim() != 4 or x.shape[0] not in (1, 3) or x.shape[1] == 0:
        raise ValueError(f"{what} takes a clip [C, T, H, W] with C = 1 or 3 and T >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        warnings.warn(f"{what}: NaN/inf values are drawn as mid-gray", stacklevel=3)
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def write_video(clip: torch.Tensor, path, fps: float = 8, crf: int = 18) -> Path:
    """A clip [C, T, H, W] in [-1, 1] -> a video file: .mp4/.mkv/.mov H.264 (libx264, yuv420p, `crf`
    quality: 0 lossless .. 51; MPEG-4 part 2 where PyAV lacks libx264), .avi MPEG-4 part 2, .webm VP9,
    .gif (write_gif). H.264/VP9 need even sizes: an odd width/height gets one more column/row, a copy
    of the last one. Written to a temp file then renamed: never half a video."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".gif":
        return write_gif(clip, path, fps)
    if ext not in _CODECS:
        raise ValueError(f"write_video writes {', '.join(list(_CODECS) + ['.gif'])} files, not '{path}'")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    x = _to_uint8(clip, "write_video")
    t, h, w, c = x.shape
    x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec, fmt = _CODECS[ext]
    if not _has_encoder(codec):
        raise ValueError(f"this PyAV build has no {codec} encoder for '{path}': write .mp4 or .gif instead")
    opts = {"libx264": {"crf": str(crf), "preset": "medium"},
            "libvpx-vp9": {"crf": str(max(4, crf)), "b": "0", "deadline": "good", "cpu-used": "4"}}.get(codec, {})
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=fmt) as out:
            s = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=opts)
            s.width, s.height, s.pix_fmt = x.shape[2], x.shape[1], "yuv420p"
            if codec == "mpeg4":
                s.codec_context.bit_rate = max(1_000_000, x.shape[1] * x.shape[2] * 3 * int(math.ceil(fps)))
            for f in x:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., 0] if c == 1 else f),
                                                   format="gray" if c == 1 else "rgb24")
                out.mux(s.encode(frame))
            out.mux(s.encode())
    return path


def write_gif(clip: torch.Tensor, path, fps: float = 8) -> Path:
    """A clip [C, T, H, W] in [-1, 1] -> an animated GIF that loops. Grayscale is exact; RGB uses one
    256-color palette fitted to the whole clip. GIF timing is in 1/100 s: frame i starts at
    round(100 i / fps) so the frame rate holds on average (fps <= 50). Atomic like write_video."""
    if not 0 < fps <= 50:
        raise ValueError(f"GIF frame rates go up to 50 fps (delays are in 1/100 s), got {fps!r}")
    x = _to_uint8(clip, "write_gif")
    t, h, w, c = x.shape
    if c == 3:
        pal_img = Image.fromarray(x.reshape(t * h, w, 3)).quantize(256, method=Image.Quantize.MEDIANCUT)
        pal = np.array(pal_img.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)
        argb = np.zeros((256, 4), np.uint8)
        argb[:, 0], argb[:len(pal), 1:] = 255, pal
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="gif") as out:
            s = out.add_stream("gif", rate=Fraction(fps).limit_denominator(1001))
            s.width, s.height, s.pix_fmt = w, h, "gray" if c == 1 else "pal8"
            s.time_base = Fraction(1, 100)
            for i, f in enumerate(x):
                if c == 1:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., 0]), format="gray")
                else:
                    idx = np.asarray(Image.fromarray(f).quantize(palette=pal_img, dither=Image.Dither.NONE))
                    frame = av.VideoFrame.from_ndarray((idx, argb), format="pal8")
                frame.pts, frame.time_base = round(i * 100 / fps), Fraction(1, 100)
                out.mux(s.encode(frame))
            out.mux(s.encode())
    return Path(path)


def save_video_grid(clips: torch.Tensor, path, nrow: int | None = None, fps: float = 8, padding: int = 2) -> Path:
    """A batch of clips [B, C, T, H, W] (or one [C, T, H, W]) in [-1, 1] -> one video of the clips
    side by side, `nrow` per row (default: about square); .mp4 (or another write_video type) or .gif."""
    x = torch.as_tensor(clips).detach().float().cpu()
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5 or x.shape[1] not in (1, 3) or x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"save_video_grid takes [B, C, T, H, W] with C = 1 or 3, B >= 1, T >= 1, "
                         f"got {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(b)), b))
    rows = math.ceil(b / nrow)
    grid = torch.full((c, t, rows * (h + padding) + padding, nrow * (w + padding) + padding), -1.0)
    for i in range(b):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, :, top:top + h, left:left + w] = x[i]
    return write_video(grid, path, fps)


def save_frame_grid(clips: torch.Tensor, path) -> Path:
    """A PNG with one row per clip and one column per frame (what a page can show without playing)."""
    B, C, T, H, W = clips.shape
    return save_image_grid(clips.transpose(1, 2).reshape(B * T, C, H, W), path, nrow=T)


def save_clips(clips: torch.Tensor, out_dir, fps: float, nrow: int | None = None) -> dict:
    """Each clip as clip_XXXX.mp4 + .gif, plus grid.mp4, grid.gif and frames.png of all of them."""
    out_dir = Path(out_dir)
    for i, c in enumerate(clips):
        write_video(c, out_dir / f"clip_{i:04d}.mp4", fps=fps)
        write_gif(c, out_dir / f"clip_{i:04d}.gif", fps=fps)
    save_video_grid(clips, out_dir / "grid.mp4", nrow=nrow, fps=fps)
    save_video_grid(clips, out_dir / "grid.gif", nrow=nrow, fps=fps)
    save_frame_grid(clips, out_dir / "frames.png")
    return {"clips": len(clips), "dir": str(out_dir)}
