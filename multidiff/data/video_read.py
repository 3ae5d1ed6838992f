"""Reading videos: PyAV decoding to uint8 frames, frame-rate resampling, the image module's resize
rule, rotation metadata and transparency; `read_video` for one file. The dataset (data/video.py)
builds on these."""
from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from .image import center_crop_box

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".gif", ".mkv", ".mov", ".m4v")
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
_ALPHA_FORMATS = ("rgba", "bgra", "argb", "abgr", "pal8", "ya8", "yuva420p", "yuva444p")


class VideoDataError(ValueError):
    """A problem with the user's video data or [data] config, with the file and the fix in the message."""


class _Bad(Exception):
    """Why a file is not a usable video (the message is shown to the user)."""


def _resize(img: Image.Image, size: int | None, channels: int) -> np.ndarray:
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=center_crop_box(*img.size, size, size),
                         reducing_gap=3.0)
    a = np.asarray(img)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _frame_image(frame: av.VideoFrame) -> Image.Image:
    if frame.format.name in _ALPHA_FORMATS:  # transparent pixels over white, like the image module
        im = Image.fromarray(frame.to_ndarray(format="rgba"), "RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    else:
        im = Image.fromarray(frame.to_ndarray(format="rgb24"), "RGB")
    # phone videos store portrait as landscape + a display matrix; `rotation` is the counterclockwise
    # angle a player turns the picture by (what the image module's EXIF transpose does for photos)
    turn = _ROTATIONS.get(round(getattr(frame, "rotation", 0) or 0) % 360)
    return im.transpose(turn) if turn is not None else im


def _decode(path, size: int | None, channels: int, frame_stride: int = 1, fps: float = 0.0,
            max_frames: int | None = None) -> np.ndarray:
    """uint8 [T, C, H, W]; raises _Bad (unreadable, no video stream, no frames) or av errors."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 (or None), got {max_frames!r}")
    out: list[np.ndarray] = []
    want = math.inf if max_frames is None else max_frames
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.video:
            raise _Bad("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        prev = prev_t = t0 = prev_arr = None
        n = 0
        for n, frame in enumerate(container.decode(stream), 1):
            if len(out) >= want:
                break
            if fps <= 0:
                if (n - 1) % frame_stride == 0:
                    out.append(_resize(_frame_image(frame), size, channels))
                continue
            t = frame.time if frame.time is not None else (n - 1) / (rate or fps)
            if prev is None:
                t0 = t
            else:  # each sample time gets the frame with the nearest timestamp (ties: the earlier one)
                mid = (prev_t + t) / 2
                while len(out) < want and t0 + len(out) / fps <= mid + 1e-6:
                    if prev_arr is None:
                        prev_arr = _resize(_frame_image(prev), size, channels)
                    out.append(prev_arr)
            prev, prev_t, prev_arr = frame, t, None
        if fps > 0 and prev is not None:  # the last frame lasts one frame duration
            end = prev_t + 1 / (rate or fps)
            while len(out) < want and t0 + len(out) / fps < end - 1e-6:
                if prev_arr is None:
                    prev_arr = _resize(_frame_image(prev), size, channels)
                out.append(prev_arr)
        if n == 0:
            raise _Bad("no video frames could be decoded from it (empty or unsupported video stream)")
    return np.stack(out)


def _reason(e: Exception) -> str:
    if isinstance(e, _Bad):
        return str(e)
    if isinstance(e, av.error.FFmpegError):
        msg = getattr(e, "strerror", None) or str(e)
        return f"not a readable video, or a corrupt/truncated one ({msg})"
    return f"{type(e).__name__}: {e}"


def read_video(path, size: int | None, channels: int = 3, frame_stride: int = 1, fps: float = 0.0,
               max_frames: int | None = None) -> torch.Tensor:
    """One video file (mp4, avi, webm, gif, mkv, mov: whatever PyAV decodes) -> float32 [C, T, H, W] in
    [-1, 1], the project's clip layout, so `write_video(read_video(p, None), q)` round-trips.
    size: frames become size x size by the module's resize rule; None keeps the native size.
    frame_stride keeps every k-th frame; fps > 0 resamples to that rate instead; max_frames stops early."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    if fps > 0 and frame_stride != 1:
        raise ValueError("give frame_stride or fps, not both")
    p = Path(path).expanduser()
    if not p.is_file():
        raise VideoDataError(f"video '{p}' not found: check the path")
    try:
        x = _decode(p, size, channels, frame_stride, fps, max_frames)
    except Exception as e:
        raise VideoDataError(f"cannot read video '{p}': {_reason(e)}. Give a {', '.join(VIDEO_EXTENSIONS)} "
                             f"file that a video player opens") from None
    return _to_float(x)


def _to_float(x: np.ndarray) -> torch.Tensor:
    """uint8 [T, C, H, W] -> float32 [C, T, H, W] in [-1, 1] (numpy arithmetic: cheap in loader workers)."""
    x = np.asarray(x, dtype=np.float32).transpose(1, 0, 2, 3) / np.float32(127.5) - np.float32(1)
    return torch.from_numpy(np.ascontiguousarray(x))
