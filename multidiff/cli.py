"""`multidiff` command line: the options of every command, one way of refusing a bad value, and one error
boundary (what a user can fix is one line and exit code 2; a bug keeps its traceback). What the commands do
is in commands.py."""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from pathlib import Path

from .commands import (BENCHMARKS, cmd_animate, cmd_app, cmd_bench, cmd_distill, cmd_inpaint, cmd_sample, cmd_say,
                       cmd_train, cmd_vocode)
from .core.samplers import SAMPLERS
from .core.schedule import SPACINGS
from .engine.trainer import TrainingDiverged
from .kinds.run_dir import OVERWRITE_CONFIG
from .modalities.sections import DISTILL_METHODS
from .outputs import OVERWRITE
from .pipelines.complete import METHODS


OS_FIXES = {errno.EACCES: "check its permissions, or choose another path",
            errno.EPERM: "check its permissions, or choose another path",
            errno.EROFS: "the file system is read-only: choose another path",
            errno.ENOSPC: "the disk is full: free some space, or write to another disk",
            errno.EDQUOT: "the disk quota is full: free some space, or write to another disk",
            errno.ENOENT: "check the path", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "it is a folder: give a file name"}


# ---- option types: every command refuses the same values the same way ---------------------------------
def whole(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= minimum (and <= maximum)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def number(minimum: float | None = None, positive: bool = False):
    """An argparse type: a finite number (> 0 with `positive`, >= minimum)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        return value
    return parse


COUNT, SEED = whole(1), whole(0, 2 ** 63 - 1)


def step_list(text: str) -> list[int]:
    """An argparse type: step counts >= 1, one or several separated by commas (4,2,1)."""
    return [COUNT(part.strip()) for part in text.split(",")]


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line and exit code 2, like every other refusal (argparse would print the
    usage first, and leave with SystemExit from inside main)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="multidiff", description="One diffusion core for image, audio and video.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="run a recipe: prepare data, train, sample, evaluate (idempotent stages)",
                       description="Run a recipe's stages; finished stages are skipped on a re-run. Works the same "
                                   "under torchrun --nproc_per_node=N.")
    t.add_argument("recipe", help="recipe folder (holding config.toml) or a .toml file, e.g. recipes/image_digits")
    t.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    t.add_argument("--resume", action="store_true", help="continue a run that was stopped, from its last checkpoint")
    t.add_argument("--stage", action="append", metavar="NAME",
                   help="run only this stage (repeatable); the stages before it must have run with this config")
    t.add_argument("--force", action="append", metavar="NAME",
                   help="run this stage again even if it finished, and the stages after it (repeatable); "
                        "--force train keeps the previous weights in RUN/previous_training_<time>/")
    t.add_argument("--skip", action="append", metavar="NAME", help="leave this stage out (repeatable)")
    t.add_argument(OVERWRITE_CONFIG, action="store_true",
                   help="replace RUN/config.toml even though it was edited by hand or not written by multidiff "
                        "(without it such a file is kept and the command refused)")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.steps=500")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run (EMA weights) into a PNG grid or a folder")
    s.add_argument("run_dir", help="the --out folder of a `multidiff train` run, or a diffusers UNet2DModel folder "
                                   "(config.json + safetensors weights, e.g. google/ddpm-celebahq-256)")
    s.add_argument("--n", type=COUNT, default=64, help="number of samples")
    s.add_argument("--sampler", choices=SAMPLERS, help="default: the run's [sample] setting")
    s.add_argument("--steps", type=COUNT, help="sampling steps (default: the run's [sample] setting)")
    s.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the run's [sample] setting)")
    s.add_argument("--eta", type=number(minimum=0), help="ddim / euler_ancestral noise scale")
    s.add_argument("--seed", type=SEED, default=0)
    s.add_argument("--class", dest="label", type=int, help="class label for a class-conditional model")
    s.add_argument("--guidance", type=number(), help="classifier-free guidance scale (1 = off)")
    s.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    s.add_argument("--seconds", type=number(positive=True), default=1.0,
                   help="clip length for unconditional audio models")
    s.add_argument("--frames", type=COUNT, help="video: frames per clip (default: the training length)")
    s.add_argument("--fps", type=number(positive=True),
                   help="video: frame rate of the written MP4/GIF (default: the run's [sample] fps)")
    _window_options(s)
    s.add_argument("--out", required=True,
                   help="grid.png (video: .mp4/.gif/.png; audio: .wav with --n 1), or a folder/ for one file per "
                        "sample; checked before sampling")
    s.add_argument(OVERWRITE, action="store_true",
                   help="replace an existing --out file, or write into a folder that holds files")
    s.set_defaults(func=cmd_sample)

    a = sub.add_parser("animate", help="video: a clip that starts with a still picture (kept exactly as frame 0)",
                       description="Animate a still with a frame-conditioned video run: the still is frame 0 "
                                   "(center square, resized to the model's size and converted to its channels, "
                                   "with a note), the model generates the rest, window by window when --frames "
                                   "exceeds its training clips.")
    a.add_argument("run_dir", help="a video run trained with video.known_patterns including \"prefix\"")
    a.add_argument("--image", required=True, help="the still (PNG/JPEG/WebP/BMP)")
    a.add_argument("--frames", type=COUNT, help="frames per clip, the still included (default: the training length)")
    a.add_argument("--n", type=COUNT, default=1, help="clips from the same still (default 1)")
    a.add_argument("--class", dest="label", type=int, help="class label for a class-conditional model")
    a.add_argument("--guidance", type=number(), help="classifier-free guidance scale (needs --class; 1 = off)")
    a.add_argument("--sampler", choices=SAMPLERS, help="default: the run's [sample] setting")
    a.add_argument("--steps", type=COUNT, help="sampling steps (default: the run's [sample] setting)")
    a.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the run's [sample] setting)")
    a.add_argument("--eta", type=number(minimum=0), help="ddim / euler_ancestral noise scale")
    a.add_argument("--seed", type=SEED, default=0)
    a.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    a.add_argument("--fps", type=number(positive=True), help="frame rate of the written clip (default: the run's)")
    _window_options(a)
    a.add_argument("--out", required=True, help="clip.mp4 / .gif (lossless: frame 0 is the still exactly) / .png "
                                                "(the frames side by side), or a folder/; checked first")
    a.add_argument(OVERWRITE, action="store_true", help="replace an existing --out file, or write into a folder "
                                                        "that holds files")
    a.set_defaults(func=cmd_animate)

    i = sub.add_parser("inpaint", help="fill the masked part of an image, audio gap or video frames with a trained run")
    i.add_argument("run_dir", help="an image_inpainting run, a plain image run (repaint/replace), an audio run, or a "
                                   "diffusers UNet2DModel folder")
    i.add_argument("--image", help="the image to complete (PNG/JPEG/WebP); center-cropped and resized to the "
                                   "model's size, like the training images")
    i.add_argument("--input", help="audio: the WAV/FLAC to complete; video: the clip (MP4/AVI/WebM/GIF)")
    i.add_argument("--known-frames", help="video: frames to keep, e.g. 0:4 (prediction) or 0,15 (interpolation)")
    i.add_argument("--frames", type=COUNT, help="video: clip length to complete (default: the training length)")
    i.add_argument("--fps", type=number(positive=True),
                   help="video: frame rate of the written clip (default: the run's)")
    i.add_argument("--gap", help="audio: the stretch to fill, START:END in seconds (e.g. 1.20:1.45)")
    g = i.add_mutually_exclusive_group()
    g.add_argument("--mask", help="mask PNG of the image's size: white = region to fill, black = keep")
    g.add_argument("--mask-kind", help="a generated mask: center, left, right, top, bottom, box, strokes")
    i.add_argument("--method", choices=tuple(METHODS),
                   help="default: repaint for images, conditioned for a frame-conditioned video run, else replace")
    i.add_argument("--resize-mask", action="store_true",
                   help="stretch a --mask of another size than the image to it (otherwise refused)")
    i.add_argument("--crop-to-mask", action="store_true",
                   help="images: complete only a square crop around the hole at the model's size and paste it back "
                        "into the full-resolution picture (pixels outside the hole stay exactly as they were)")
    i.add_argument("--feather", type=whole(0), default=0, metavar="PX",
                   help="with --crop-to-mask: blend the pasted fill over a band of PX pixels inside the hole's "
                        "border (default 0: a hard edge)")
    i.add_argument("--steps", type=COUNT, help="sampling steps (default: the run's [inpaint] setting)")
    i.add_argument("--seed", type=SEED, default=0)
    i.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    i.add_argument("--out", required=True, help="output PNG, WAV or clip (.mp4/.gif/.png); never one of the inputs")
    i.add_argument(OVERWRITE, action="store_true", help="replace an existing --out file")
    i.set_defaults(func=cmd_inpaint)

    v = sub.add_parser("vocode", help="turn speech (WAV/FLAC, re-vocoded) or mels (.npy) into audio with a vocoder run")
    v.add_argument("run_dir", help="the --out folder of an audio vocoder run")
    v.add_argument("--input", nargs="+", required=True, help="speech.wav | mel.npy ([n_mels, frames]); several allowed")
    v.add_argument("--out", required=True, help="out.wav, or a folder/ for several inputs")
    v.add_argument(OVERWRITE, action="store_true",
                   help="replace existing WAVs, or write into a folder that holds files")
    v.add_argument("--steps", type=COUNT, help="6 = the fast schedule (default), or e.g. 50 (the training T)")
    v.add_argument("--sampler", choices=SAMPLERS, help="default ddpm (DiffWave's ancestral sampler)")
    v.add_argument("--chunk-frames", type=whole(0),
                   help="vocode long inputs in overlapping chunks of this many frames (0 = in one piece)")
    v.add_argument("--consistency", type=whole(0),
                   help="mel-consistency iterations on every clean estimate (0 = off)")
    v.add_argument("--eta", type=number(minimum=0),
                   help="ddim noise scale (a progressive student: fresh noise between its jumps); default: "
                        "[vocode] eta")
    v.add_argument("--seed", type=SEED, default=0)
    v.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    v.set_defaults(func=cmd_vocode)

    d = sub.add_parser("distill", help="distill a trained run into a few-step student run (progressive or consistency)",
                       description="Train a student that samples in a few steps from a finished run (its teacher); "
                                   "the student is a run like any other: multidiff sample / inpaint / vocode STUDENT. "
                                   "Works the same under torchrun --nproc_per_node=N.")
    d.add_argument("run_dir", help="the teacher: the --out folder of a finished `multidiff train` run")
    d.add_argument("--method", choices=DISTILL_METHODS,
                   help="progressive (Salimans & Ho: rounds halve distill.start_steps) or consistency (Song et al.); "
                        "default: the run's [distill] method")
    d.add_argument("--steps", type=step_list, metavar="N[,N...]",
                   help="the student's sampling steps, e.g. 2; several (4,2,1): one student each, the fewest in --out, "
                        "the others in --out/rounds/ (progressive), or one student evaluated at each (consistency); "
                        "default: the run's [distill] steps")
    d.add_argument("--out", required=True, help="the student's run directory (new, or one to continue with --resume)")
    d.add_argument("--resume", action="store_true", help="continue a distillation that was stopped")
    d.add_argument("--stage", action="append", metavar="NAME", help="run only this stage of the student (repeatable)")
    d.add_argument("--force", action="append", metavar="NAME", help="run this stage again (repeatable); --force "
                   "distill trains the students anew (the old weights are kept in previous_training_<time>/)")
    d.add_argument("--skip", action="append", metavar="NAME", help="leave this stage out, e.g. evaluate (repeatable)")
    d.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="distill.* (round_steps, lr, start_steps, guidance, grid, ...), train.* (batch_size, ...), "
                        "and the student's sample.* / eval.* settings")
    d.set_defaults(func=cmd_distill)

    y = sub.add_parser("say", help="speak text with a tts run and a DiffWave vocoder run into WAV",
                       description="Text -> phonemes (espeak-ng) -> mel (the tts run: predicted durations, a few ODE "
                                   "steps of its decoder) -> waveform (the vocoder run, whose mel configuration must "
                                   "be the tts run's).")
    y.add_argument("run_dir", help="the --out folder of a `multidiff train` tts run (e.g. runs/tts_espeak)")
    y.add_argument("--vocoder", help="a DiffWave vocoder run (default: the run's fine-tuned vocoder RUN/vocoder, "
                                     "else its [vocoder] run)")
    yt = y.add_mutually_exclusive_group(required=True)
    yt.add_argument("--text", help="what to say: one or more sentences")
    yt.add_argument("--text-file", help="a UTF-8 text file, one utterance a line")
    y.add_argument("--out", required=True, help="out.wav (everything, sentences joined by short pauses), or a folder/ "
                                                "for one WAV per line (--text: per sentence); checked first")
    y.add_argument(OVERWRITE, action="store_true", help="replace an existing WAV, or write into a folder that holds "
                                                        "files")
    y.add_argument("--steps", type=COUNT, help="decoder sampling steps (default: the run's [sample] steps)")
    y.add_argument("--speed", type=number(positive=True), help="speaking rate: 2 = twice as fast (default 1)")
    y.add_argument("--speaker", help="a training voice of a multi-speaker run (default: the first)")
    y.add_argument("--vocoder-steps", type=COUNT, help="vocoder steps (default: the vocoder's [vocode] steps)")
    y.add_argument("--consistency", type=whole(0), help="vocoder mel-consistency iterations (default: the "
                                                        "vocoder's [vocode] consistency)")
    y.add_argument("--seed", type=SEED, help="noise seed (default: the run's [sample] seed)")
    y.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    y.set_defaults(func=cmd_say)

    a = sub.add_parser("app", help="a local web page to complete a run's signals: paint a picture's hole, choose "
                                   "an audio gap or the known frames of a clip (Gradio: pip install -e '.[app]')",
                       description="Serve a page for RUN on this machine until Ctrl-C: upload, mark what to fill, pick "
                                   "the method and steps, watch the progress, download the result. It reads only "
                                   "what is uploaded to it and writes only to its own temporary folder.")
    a.add_argument("run_dir", help="a trained run (the --out folder of `multidiff train`) that `multidiff inpaint` takes")
    a.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    a.add_argument("--port", type=whole(1, 65535), help="port (default: the first free one from 7860)")
    a.add_argument("--max-upload-mb", type=number(positive=True), default=20.0, help="largest upload taken (default 20)")
    a.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    a.set_defaults(func=cmd_app)

    b = sub.add_parser("bench", help="run a benchmark and print its table",
                       description="Benchmarks: " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    b.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see NAME --help)")
    b.set_defaults(func=cmd_bench)
    return ap


def _window_options(p) -> None:
    """How video clips longer than the trained ones are made (pipelines/extend.py)."""
    p.add_argument("--context", type=COUNT, metavar="K",
                   help="video, --frames beyond the trained clip length: each next window of a frame-conditioned "
                        "model continues from the last K frames, kept exactly (default: half a window)")
    p.add_argument("--overlap-fusion", action="store_true",
                   help="video: denoise windows overlapping by K frames together, averaging the overlaps at every "
                        "step (MultiDiffusion / FreeNoise-style), instead of continuing window by window")


def parse(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("train", "distill"):  # overrides may follow options: train RECIPE --out D a.b=1
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None) -> int:
    try:
        args = parse(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, OSError, TrainingDiverged) as e:
        # what a user can fix: UserError and the other ValueErrors of a bad option, file or config (the
        # data readers', the core's), the file system's refusals, a diverged training. Anything else
        # (TypeError, KeyError, ...) is a bug: its traceback goes up, to be reported.
        if os.environ.get("MULTIDIFF_DEBUG"):
            raise
        print(f"multidiff {args.command}: error: {describe(e)}", file=sys.stderr)
        return 2


def describe(e: BaseException) -> str:
    """One line: a file-system error names the file and the fix; other messages lose their line breaks."""
    if isinstance(e, OSError) and e.strerror:
        fix = OS_FIXES.get(e.errno, "check the path")
        if not e.filename:
            return f"{e.strerror}; {fix}"
        path = Path(str(e.filename))
        if path.name.startswith(".") and ".tmp" in path.name:  # an atomic writer's temporary file
            return f"cannot write into '{path.parent}': {e.strerror}; {fix}"
        return f"'{path}': {e.strerror}; {fix}"
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
