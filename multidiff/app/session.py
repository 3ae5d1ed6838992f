"""What the web page does, without the page: one run opened once, and completions of uploaded files
through the modality protocol (read_known -> complete -> write_completed), the way `multidiff inpaint`
does them. No gradio here, so it is tested on its own (tests/test_app.py).

Safety: every input file must lie in the app's upload folder (what the page received), uploads are
capped in size, and outputs go to the app's own temporary folder only.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import kinds
from ..core.guidance import repaint_schedule
from ..core.samplers import nfe
from ..engine.precision import resolve_precision
from ..errors import UserError
from ..evaluation.model_calls import counting
from ..pipelines.complete import METHODS, complete, with_steps

MAX_STEPS = 1000


class Request(argparse.Namespace):
    """What a modality's read_known / write_completed read of the command line, filled in by the page; an
    option the page does not set reads as None -- off, like a command-line flag left out."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


# the page a run gets, from what its completions are written as (the modality's completed_output)
PAGES = {".png": "image", ".wav": "audio", ".mp4": "video"}


@dataclass
class Result:
    path: Path       # the written file (PNG, WAV, MP4) in the app's output folder
    summary: str     # what was filled, e.g. "31 of 256 pixels filled"
    method: str
    steps: int | None
    mask: Path | None = None  # images: the region filled at the model's size (white), as a PNG


class AppRun:
    """A trained run opened for the app: its page (image | audio | video), its completion methods, the
    trained models (loaded once, on first use) and the folders the app may read and write."""

    def __init__(self, run_dir, *, max_upload_mb: float = 20.0, precision: str = "auto", workdir=None):
        self.run_dir = Path(run_dir).expanduser()
        if not self.run_dir.is_dir():
            raise UserError(f"'{run_dir}' is not a run directory: give the --out folder of a `multidiff train` run")
        if not max_upload_mb > 0 or not math.isfinite(max_upload_mb):
            raise UserError(f"--max-upload-mb must be a number > 0, got {max_upload_mb}")
        self.sections = kinds.open_run(self.run_dir)
        self.kind = kinds.kind_of(self.sections)
        roles = self.kind.roles(self.sections)
        self.methods = [name for name, spec in METHODS.items() if ("conditioned" if spec.conditioned else "plain") in roles]
        if not self.methods:
            raise UserError(f"'{run_dir}' holds no model that completes signals: the app needs a run `multidiff "
                            "inpaint` works with")
        spec = self.kind.base.completed_output(self.sections)
        suffixes = spec.suffixes if spec is not None else ()
        page = next((PAGES[s] for s in suffixes if s in PAGES), None)
        if page is None:
            raise UserError(f"'{run_dir}' is {article(self.sections['recipe'].kind)} run; the app has pages for "
                            "image, audio and video runs (use `multidiff inpaint` for this one)")
        self.page, self.suffix = page, next(s for s in suffixes if s in PAGES)
        default = self.kind.default_method(self.sections)
        self.default_method = default if default in self.methods else self.methods[0]
        self.max_upload_mb, self.max_bytes = max_upload_mb, int(max_upload_mb * 2 ** 20)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = resolve_precision(precision, self.device)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="multidiff-app-"))
        self.uploads, self.outputs = self.workdir / "uploads", self.workdir / "outputs"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.outputs.mkdir(parents=True, exist_ok=True)
        self._trained: dict[str, object] = {}
        self._lock = threading.Lock()  # one completion at a time: they share the models and the cores

    # ---- what the page offers -----------------------------------------------------------------
    def describe(self) -> str:
        d = self.sections.get("data")
        size = getattr(d, "size", None)
        what = {"image": f"{size}x{size} pictures" if size else "pictures",
                "audio": f"{getattr(d, 'sample_rate', '?')} Hz audio",
                "video": f"{getattr(d, 'frames', '?')}-frame clips of {size}x{size}" if size else "video clips"}
        return f"{self.run_dir.name}: {article(self.sections['recipe'].kind)} run ({what[self.page]})"

    def model_size(self) -> int | None:
        return getattr(self.sections.get("data"), "size", None)

    # ---- checks of what the page sends --------------------------------------------------------------
    def uploaded(self, path, upload_root=None) -> Path:
        """`path` if it is a file the page received (inside the upload folder) within the size cap."""
        if not path:
            raise UserError("upload a file first")
        root = Path(upload_root or self.uploads).resolve()
        p = Path(path).resolve()
        if not p.is_relative_to(root):
            raise UserError(f"'{path}' is not an uploaded file: the app reads only what is uploaded to it")
        if not p.is_file():
            raise UserError(f"the upload '{p.name}' is gone: upload it again")
        self._check_size(p.stat().st_size, p.name)
        return p

    def _check_size(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.max_bytes:
            size = f"{n_bytes / 2 ** 20:.1f} MB" if n_bytes >= 2 ** 20 / 10 else f"{n_bytes / 1024:.1f} KB"
            raise UserError(f"'{what}' is {size}; this app takes uploads up to {self.max_upload_mb:g} MB "
                            "(multidiff app --max-upload-mb)")

    def _options(self, method, steps, seed) -> tuple[str, int | None, int]:
        if method not in self.methods:
            raise UserError(f"method {method!r} is not one this run offers: choose one of {', '.join(self.methods)}")
        if steps in (None, "", 0):
            steps = None
        else:
            steps = float(steps)
            if not steps.is_integer() or not 1 <= steps <= MAX_STEPS:
                raise UserError(f"steps must be a whole number from 1 to {MAX_STEPS} (0: the run's setting), "
                                f"got {steps:g}")
            steps = int(steps)
        seed = 0 if seed in (None, "") else float(seed)
        if not float(seed).is_integer() or not 0 <= seed < 2 ** 63:
            raise UserError(f"seed must be a whole number >= 0, got {seed}")
        return method, steps, int(seed)

    # ---- completions ------------------------------------------------------------------------------
    def complete_image(self, image: np.ndarray, fill: np.ndarray, method: str, steps=None, seed=0,
                       progress=None) -> Result:
        """An uploaded picture (H x W [x C] uint8) and the painted region (H x W, True = fill) -> PNG."""
        if image is None:
            raise UserError("upload an image first")
        image = np.asarray(image)
        self._check_size(image.nbytes, "the image")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise UserError(f"the image has shape {image.shape}: give a grey, RGB or RGBA picture")
        fill = np.asarray(fill, dtype=bool) if fill is not None else None
        if fill is None or fill.shape != image.shape[:2]:
            raise UserError("paint the region to fill on the image (the mask must cover the picture)")
        if not fill.any():
            raise UserError("nothing is painted: paint the region to fill with the brush")
        if fill.all():
            raise UserError("the whole picture is painted: leave some of it to keep (use `multidiff sample` to "
                            "generate from nothing)")
        method, steps, seed = self._options(method, steps, seed)
        job = self.uploads / f"image-{uuid.uuid4().hex}"
        job.mkdir()
        picture = image if image.ndim == 2 or image.shape[2] != 1 else image[..., 0]
        Image.fromarray(picture.astype(np.uint8)).save(job / "image.png")
        Image.fromarray((fill * 255).astype(np.uint8)).save(job / "mask.png")  # white = fill
        request = Request(image=str(job / "image.png"), mask=str(job / "mask.png"), seed=seed)
        return self._complete(request, method, steps, seed, progress)

    def complete_audio(self, path, gap_start: float, gap_end: float, method: str, steps=None, seed=0,
                       progress=None, upload_root=None) -> Result:
        """An uploaded WAV/FLAC and the stretch to fill, in seconds -> WAV."""
        p = self.uploaded(path, upload_root)
        try:
            a, b = float(gap_start), float(gap_end)
        except (TypeError, ValueError):
            raise UserError("give the gap's start and end in seconds") from None
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b <= a:
            raise UserError(f"the gap {a:g} s to {b:g} s is not a stretch: give 0 <= start < end (seconds)")
        method, steps, seed = self._options(method, steps, seed)
        return self._complete(Request(input=str(p), gap=f"{a}:{b}", seed=seed), method, steps, seed, progress)

    def complete_video(self, path, known_frames: str, method: str, steps=None, seed=0, frames=None,
                       progress=None, upload_root=None) -> Result:
        """An uploaded clip and the frames to keep (e.g. 0:4 or 0,15) -> MP4."""
        p = self.uploaded(path, upload_root)
        if not known_frames or not str(known_frames).strip():
            raise UserError("give the frames to keep, e.g. 0:4 (predict the rest) or 0,15 (interpolate)")
        if frames in (None, "", 0):
            frames = None
        elif not float(frames).is_integer() or not 1 <= float(frames) <= 1024:
            raise UserError(f"frames must be a whole number from 1 to 1024 (0: the run's clip length), got {frames}")
        method, steps, seed = self._options(method, steps, seed)
        request = Request(input=str(p), known_frames=str(known_frames).strip(),
                          frames=int(frames) if frames else None, seed=seed)
        return self._complete(request, method, steps, seed, progress)

    def _trained_model(self, role: str):
        if role not in self._trained:
            self._trained[role] = self.kind.model(self.run_dir, self.sections, role, self.device, self.bf16).load()
        return self._trained[role]

    def _complete(self, request: Request, method: str, steps: int | None, seed: int, progress) -> Result:
        role = "conditioned" if METHODS[method].conditioned else "plain"
        ref = self.kind.model(self.run_dir, self.sections, role, self.device, self.bf16)
        m = ref.modality
        known = m.read_known(request, ref.sections)
        if not bool(torch.isfinite(known.signal).all()):
            raise UserError("the upload holds NaN or inf values: give a file of finite samples")
        with self._lock:
            trained = self._trained_model(role)
            cfg = self.kind.completion_config(self.sections)
            n = steps if steps is not None else m.completion_steps(trained.sections, known)
            if n:
                cfg = with_steps(cfg, n)
            expected = expected_calls(method, cfg)
            with counting(trained.model) as calls:
                if progress is not None:
                    hook = trained.model.register_forward_pre_hook(
                        lambda module, args: progress(min(calls.items / max(expected, 1), 0.99)))
                try:
                    x = complete(trained, method, known.signal, known.mask, cfg, self.device, self.bf16,
                                 torch.Generator().manual_seed(seed), cond=known.extra_cond)
                finally:
                    if progress is not None:
                        hook.remove()
            out = self.outputs / f"{method}-{uuid.uuid4().hex[:12]}{self.suffix}"
            m.write_completed(x, str(out), trained.sections, known, request)
            mask = None
            if self.page == "image":  # the hole as the model saw it (after the crop and resize to its size)
                mask = out.with_name(out.stem + "-mask.png")
                Image.fromarray(((1 - known.mask[0, 0]).numpy() * 255).astype(np.uint8)).save(mask)
        if progress is not None:
            progress(1.0)
        return Result(out, known.summary, method, steps, mask)


def article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def expected_calls(method: str, cfg) -> int:
    """Model calls a completion will make (for the progress bar): its sampler's, or the RePaint / time-travel
    schedule's steps down."""
    sampler, steps, extra = METHODS[method].options(cfg)
    if "repaint" in extra:
        sched = repaint_schedule(steps, *extra["repaint"])
        return sum(b < a for a, b in zip(sched[:-1], sched[1:]))
    return nfe(sampler, steps)
