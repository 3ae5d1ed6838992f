"""Known-frame masks for video completion (1 = a known frame, 0 = a frame to generate).

A mask is float [B, 1, T, 1, 1]: it broadcasts over channels and pixels, so the core's masked
sampling (`sample(..., mask=, known=)`) and a frame-conditioned model's extra input channels
([mask, known * mask]) take it as it is.

Patterns (for training a frame-conditioned model and for evaluation):
  prefix   the first k frames are known, k uniform in 1..T//2   (prediction)
  ends     the first and the last frame are known                (interpolation)
  none     no frame is known                                     (plain generation, same model)

Command-line form (`--known-frames`): comma-separated frame numbers and START:STOP ranges
(Python slices, STOP excluded): "0:4" = frames 0-3, "0,15" = the first and the 16th, "0:2,7".
"""
from __future__ import annotations

import torch

PATTERNS = ("prefix", "ends", "none")


def parse_known_frames(spec: str, frames: int) -> list[int]:
    """'0:4' | '0,15' | '0:2,7' -> sorted frame numbers in [0, frames); negative numbers count from the end."""
    def frame(text: str) -> int:
        try:
            k = int(text)
        except ValueError:
            raise ValueError(f"--known-frames {spec!r}: {text!r} is not a frame number; write e.g. 0:4 or 0,15") \
                from None
        k = k + frames if k < 0 else k
        if not 0 <= k < frames:
            raise ValueError(f"--known-frames {spec!r}: frame {text} is outside the clip's {frames} frames "
                             f"(0..{frames - 1})")
        return k

    known: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if ":" in part:
            a, _, b = part.partition(":")
            start = frame(a) if a.strip() else 0
            stop = frames if not b.strip() or b.strip() == str(frames) else frame(b)
            if stop <= start:
                raise ValueError(f"--known-frames {spec!r}: the range {part!r} is empty")
            known.update(range(start, stop))
        else:
            known.add(frame(part))
    if not known:
        raise ValueError(f"--known-frames {spec!r} names no frame; write e.g. 0:4 (prediction) or 0,15 (interpolation)")
    if len(known) == frames:
        raise ValueError(f"--known-frames {spec!r} marks all {frames} frames as known: nothing is left to generate")
    return sorted(known)


def frames_mask(known: list[int], frames: int, batch: int = 1) -> torch.Tensor:
    """[batch, 1, T, 1, 1] with 1 at the known frames."""
    m = torch.zeros(batch, 1, frames, 1, 1)
    m[:, :, known] = 1.0
    return m


def pattern_mask(pattern: str, frames: int, k: int | None = None) -> torch.Tensor:
    """One pattern's mask [1, 1, T, 1, 1]; `k` = the known prefix length for 'prefix'."""
    if pattern == "prefix":
        return frames_mask(list(range(k if k is not None else max(1, frames // 2))), frames)
    if pattern == "ends":
        return frames_mask(sorted({0, frames - 1}), frames)
    if pattern == "none":
        return torch.zeros(1, 1, frames, 1, 1)
    raise ValueError(f"unknown known-frame pattern {pattern!r}; choose from {PATTERNS}")


def random_frame_masks(n: int, frames: int, patterns, uniform: torch.Tensor) -> torch.Tensor:
    """[n, 1, T, 1, 1]: sample i takes pattern patterns[floor(u0 * len)] and, for 'prefix',
    k = 1 + floor(u1 * T//2). `uniform` [n, 2] in [0, 1) are the draws (from the trainer's BatchRandom,
    so the masks replay after a resume)."""
    bad = [p for p in patterns if p not in PATTERNS]
    if not patterns or bad:
        raise ValueError(f"known-frame patterns must be a non-empty list from {PATTERNS}, got {list(patterns)}")
    if frames < 2:
        raise ValueError(f"frame-conditioned training needs clips of at least 2 frames, got {frames}")
    out = torch.empty(n, 1, frames, 1, 1)
    for i in range(n):
        p = patterns[min(len(patterns) - 1, int(uniform[i, 0] * len(patterns)))]
        k = 1 + min(frames // 2 - 1, int(uniform[i, 1] * (frames // 2))) if p == "prefix" else None
        out[i] = pattern_mask(p, frames, k)[0]
    return out
