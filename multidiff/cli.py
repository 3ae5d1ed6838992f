"""`multidiff` command line: one dispatch through the recipe kinds and the modality protocol --
nothing here knows what an image, a waveform or a video is."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import math
import os
import sys
from pathlib import Path

import torch

from . import kinds
from .core.samplers import SAMPLERS
from .core.schedule import SPACINGS
from .data.audio import write_wav
from .engine.distributed import init_distributed, shutdown
from .engine.precision import resolve_precision
from .engine.run_lock import run_lock
from .engine.runs import Run, load_recipe, load_run
from .engine.trainer import TrainingDiverged
from .errors import UserError
from .kinds import ModelRef
from .kinds.run_dir import OVERWRITE_CONFIG
from .modalities.audio import AudioModality, is_vocoder
from .outputs import OVERWRITE, OutputSpec, check_output, check_target, same_file
from .pipelines.complete import METHODS, complete, with_steps
from .pipelines.generate import check_label_request, generate
from .pipelines.vocode import vocode

# name -> (module with main(argv), one-line help)
BENCHMARKS = {
    "accuracy": ("multidiff.benchmarks.sampler_accuracy", "sampler error vs model calls against the exact Gaussian oracle"),
    "overhead": ("multidiff.benchmarks.sampler_overhead", "per-step sampler overhead vs diffusers' schedulers"),
    "diffwave": ("multidiff.benchmarks.diffwave_speed", "DiffWave vocoding/training speed vs lmnt-com/diffwave"),
    "unet3d": ("multidiff.benchmarks.unet3d_throughput", "video U-Net throughput vs video-diffusion-pytorch"),
    "precision": ("multidiff.benchmarks.precision_curves", "bf16 autocast vs fp32 loss curves on the same recipe"),
    "unet2d": ("multidiff.benchmarks.unet2d_throughput", "U-Net training/sampling throughput vs diffusers and "
                                                         "denoising-diffusion-pytorch"),
    "checkpoints": ("multidiff.benchmarks.checkpoint_quality", "sample quality of every kept checkpoint of digit "
                                                               "runs vs training time"),
}


OS_FIXES = {errno.EACCES: "check its permissions, or choose another path",
            errno.EPERM: "check its permissions, or choose another path",
            errno.EROFS: "the file system is read-only: choose another path",
            errno.ENOSPC: "the disk is full: free some space, or write to another disk",
            errno.EDQUOT: "the disk quota is full: free some space, or write to another disk",
            errno.ENOENT: "check the path", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "it is a folder: give a file name"}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _bench(args) -> int:
    module, _ = BENCHMARKS[args.name]
    try:
        importlib.import_module(module).main(args.rest)
    except ModuleNotFoundError as e:
        raise UserError(f"multidiff bench {args.name} needs the package {e.name!r}; install the peers with: "
                        "pip install -e '.[bench]'") from None
    return 0


def _train(args) -> int:
    file, sections = load_recipe(args.recipe, args.overrides, kinds.schema_of)
    run_dir = Path(args.out) if args.out else Path("runs") / file.parent.name
    selection = kinds.StageSelection(only=args.stage or [], force=args.force or [], skip=args.skip or [])
    dist = init_distributed()
    try:
        with run_lock(run_dir, dist.is_main):
            if dist.is_main:
                print(f"multidiff train: {file} -> {run_dir}")
            kinds.run_recipe(Run(run_dir, sections, main=dist.is_main), dist, args.resume, selection,
                             overwrite_config=args.overwrite_config)
        if dist.is_main:
            print(f"done: {run_dir}")
    finally:
        shutdown(dist)
    return 0


def _locate(run_dir, role: str, device, bf16: bool, method: str | None = None) -> ModelRef:
    """Where the run's trained model with `role` (plain | conditioned) is -- its modality and config, the
    weights not loaded yet, so every check runs before that -- or one clear refusal."""
    sections = load_run(run_dir, kinds.schema_of)
    kind = kinds.kind_of(sections)
    roles = kind.roles(sections)
    if role not in roles:
        base = kind.base
        if not roles or method is None:
            raise UserError(base.generation_refusal(sections, run_dir))
        if role == "conditioned":
            raise UserError(f"--method {method} needs a {base.conditioned_name} run; '{run_dir}' has no "
                            f"{base.conditioned_name} model: use --method replace, repaint or reconstruction")
        raise UserError(f"method '{method}' needs an unconditional model; '{run_dir}' holds a "
                        f"{base.conditioned_name} model: use --method conditioned")
    return kind.model(run_dir, sections, role, device, bf16)


def _sample(args) -> int:
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    ref = _locate(args.run_dir, "plain", dev, bf16)
    m, s = ref.modality, ref.sections
    refusal = m.generation_refusal(s, args.run_dir)
    if refusal:
        raise UserError(refusal)
    length = m.generation_length(s, args)
    out = check_output(args.out, m.sample_output(s, args.n), overwrite=args.overwrite)
    trained = ref.load()
    check_label_request(trained, args.label, args.guidance)
    over = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("spacing", args.spacing),
                              ("eta", args.eta)) if v is not None}
    cfg = dataclasses.replace(m.sample_settings(s), **over, seed=args.seed)
    labels = torch.full((args.n,), args.label) if args.label is not None else None
    x = generate(trained, args.n, cfg, dev, bf16, labels=labels, guidance=args.guidance, length=length)
    print(f"wrote {m.write_samples(x, out, s, labels, args)} (from {trained.checkpoint})")
    return 0


def _inpaint(args) -> int:
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    sections = load_run(args.run_dir, kinds.schema_of)
    kind = kinds.kind_of(sections)
    method = args.method or kind.default_method(sections)
    role = "conditioned" if METHODS[method].conditioned else "plain"
    ref = _locate(args.run_dir, role, dev, bf16, method)
    m = ref.modality
    out = check_output(args.out, m.completed_output(ref.sections), inputs=(args.image, args.mask, args.input),
                       overwrite=args.overwrite)
    known = m.read_known(args, ref.sections)
    if not bool(torch.isfinite(known.signal).all()):  # named here: the sampler would blame the model for it
        raise UserError(f"'{args.image or args.input}' holds NaN or inf values: give a file of finite samples")
    trained = ref.load()
    cfg = kind.completion_config(sections)
    steps = args.steps if args.steps is not None else m.completion_steps(trained.sections, known)
    if steps:
        cfg = with_steps(cfg, steps)
    x = complete(trained, method, known.signal, known.mask, cfg, dev, bf16, torch.Generator().manual_seed(args.seed),
                 cond=known.extra_cond)
    print(f"wrote {m.write_completed(x, out, trained.sections, known, args)} ({method}: {known.summary})")
    return 0


def _vocode_targets(inputs: list[Path], out: str, overwrite: bool) -> list[Path]:
    """One WAV per input: --out itself for one input, else --out/<input name>.wav; never an input, never
    two inputs to one file, an existing file only with --overwrite."""
    several = OutputSpec((), folder=True, why="several inputs give one WAV each")
    out = check_output(out, OutputSpec((".wav",), folder=True) if len(inputs) == 1 else several, inputs, overwrite)
    targets = [Path(out) / f"{p.stem}.wav" if out.endswith("/") else Path(out) for p in inputs]
    for i, t in enumerate(targets):
        clash = next((p for p, u in zip(inputs[:i], targets) if same_file(t, u)), None)
        if clash is not None:
            raise UserError(f"'{clash}' and '{inputs[i]}' would both be written to '{t}': vocode them into "
                            "separate --out folders")
        check_target(t, inputs, overwrite)
    return targets


def _vocode(args) -> int:
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    sections = load_run(args.run_dir, kinds.schema_of)
    if not isinstance(kinds.kind_of(sections).base, AudioModality):
        raise UserError(f"'{args.run_dir}' is a {sections['recipe'].kind} run, not an audio run")
    if not is_vocoder(sections):
        raise UserError(f"'{args.run_dir}' holds an unconditional model; use `multidiff sample` with it")
    ref = _locate(args.run_dir, "plain", dev, bf16)
    inputs = list({Path(p).expanduser().resolve(): Path(p) for p in args.input}.values())  # a file named twice: once
    targets = _vocode_targets(inputs, args.out, args.overwrite)
    mels = [ref.modality.read_mel(p, sections) for p in inputs]  # every input read before any work
    trained = ref.load()
    v, sr = sections["vocode"], sections["data"].sample_rate
    for i, (mel, target) in enumerate(zip(mels, targets)):
        wav = vocode(trained, mel, args.steps or v.steps, dev, bf16, torch.Generator().manual_seed(args.seed + i),
                     sampler=args.sampler or v.sampler,
                     chunk_frames=args.chunk_frames if args.chunk_frames is not None else v.chunk_frames,
                     overlap=v.overlap_frames,
                     consistency=args.consistency if args.consistency is not None else v.consistency)
        write_wav(target, wav, sr)
        print(f"wrote {target} ({wav.shape[-1] / sr:.2f} s, from {trained.checkpoint.name})")
    return 0


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
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="draw samples from a trained run (EMA weights) into a PNG grid or a folder")
    s.add_argument("run_dir", help="the --out folder of a `multidiff train` run")
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
    s.add_argument("--out", required=True,
                   help="grid.png (video: .mp4/.gif/.png; audio: .wav with --n 1), or a folder/ for one file per "
                        "sample; checked before sampling")
    s.add_argument(OVERWRITE, action="store_true",
                   help="replace an existing --out file, or write into a folder that holds files")
    s.set_defaults(func=_sample)

    i = sub.add_parser("inpaint", help="fill the masked part of an image, audio gap or video frames with a trained run")
    i.add_argument("run_dir", help="an image_inpainting run, a plain image run (repaint/replace), or an audio run")
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
    i.add_argument("--steps", type=COUNT, help="sampling steps (default: the run's [inpaint] setting)")
    i.add_argument("--seed", type=SEED, default=0)
    i.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    i.add_argument("--out", required=True, help="output PNG, WAV or clip (.mp4/.gif/.png); never one of the inputs")
    i.add_argument(OVERWRITE, action="store_true", help="replace an existing --out file")
    i.set_defaults(func=_inpaint)

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
    v.add_argument("--seed", type=SEED, default=0)
    v.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    v.set_defaults(func=_vocode)

    b = sub.add_parser("bench", help="run a benchmark and print its table",
                       description="Benchmarks: " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    b.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see NAME --help)")
    b.set_defaults(func=_bench)
    return ap


def parse(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train":  # overrides may follow options: train RECIPE --out D a.b=1
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
