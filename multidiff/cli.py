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
from .app.server import serve as serve_app
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
from .modalities.tts import TTSModality
from .modalities.sections import DISTILL_METHODS
from .outputs import OVERWRITE, OutputSpec, check_output, check_target, same_file
from .pipelines import extend
from .pipelines.complete import METHODS, complete, with_steps
from .pipelines.generate import check_label_request, generate
from .pipelines.say import check_pair, check_texts, default_vocoder, run_say, say_output
from .pipelines.vocode import vocode

# name -> (module with main(argv), one-line help)
BENCHMARKS = {
    "accuracy": ("multidiff.benchmarks.sampler_accuracy", "sampler error vs model calls against the exact Gaussian oracle"),
    "overhead": ("multidiff.benchmarks.sampler_overhead", "per-step sampler overhead vs diffusers' schedulers"),
    "diffwave": ("multidiff.benchmarks.diffwave_speed", "DiffWave vocoding/training speed vs lmnt-com/diffwave"),
    "fewstep": ("multidiff.benchmarks.fewstep", "time to one sample at the teacher's quality: distilled students vs "
                "diffusers' DDIM pipeline and lmnt's 6-step DiffWave"),
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


def _app(args) -> int:
    serve_app(args.run_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
              precision=args.precision)
    return 0


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


def _distill(args) -> int:
    selection = kinds.StageSelection(only=args.stage or [], force=args.force or [], skip=args.skip or [])
    dist = init_distributed()
    try:
        made = kinds.distill(args.run_dir, args.out, args.method, args.steps, args.overrides, dist, args.resume,
                             selection)
        if dist.is_main:
            print("done: " + ", ".join(f"{steps}-step student {path}" for steps, path in made.items()))
    finally:
        shutdown(dist)
    return 0


def _locate(run_dir, role: str, device, bf16: bool, method: str | None = None) -> ModelRef:
    """Where the run's trained model with `role` (plain | conditioned) is -- its modality and config, the
    weights not loaded yet, so every check runs before that -- or one clear refusal."""
    sections = kinds.open_run(run_dir)
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
    ext = extend.plan(m, s, length, args.context, args.overlap_fusion, run_dir=args.run_dir)
    out = check_output(args.out, m.sample_output(s, args.n), overwrite=args.overwrite)
    trained = ref.load()
    check_label_request(trained, args.label, args.guidance)
    cfg = _sample_settings(m, s, args)
    labels = torch.full((args.n,), args.label) if args.label is not None else None
    if ext is None:
        x = generate(trained, args.n, cfg, dev, bf16, labels=labels, guidance=args.guidance, length=length)
    else:  # longer than the trained clips: window by window
        x = extend.extend(trained, args.n, length, ext, cfg, dev, bf16, guidance=args.guidance,
                          labels=extend.class_labels(trained.num_classes, args.n, args.label))
    print(f"wrote {m.write_samples(x, out, s, labels, args)} (from {trained.checkpoint})")
    return 0


def _sample_settings(m, sections, args):
    """The run's [sample] settings with the command line's sampler options."""
    over = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("spacing", args.spacing),
                              ("eta", args.eta)) if v is not None}
    return dataclasses.replace(m.sample_settings(sections), **over, seed=args.seed)


def _animate(args) -> int:
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    sections = load_run(args.run_dir, kinds.schema_of)
    kind = kinds.kind_of(sections)
    roles = kind.roles(sections)
    if not roles:
        raise UserError(f"'{args.run_dir}' holds no diffusion model to animate a still with: give a video run")
    ref = kind.model(args.run_dir, sections, roles[0], dev, bf16)
    m, s = ref.modality, ref.sections
    ext = extend.plan(m, s, args.frames, args.context, args.overlap_fusion, still=True, run_dir=args.run_dir)
    if args.guidance not in (None, 1.0) and args.label is None and m.num_classes(s) > 0:
        raise UserError("--guidance needs --class here: the still's class is not known (without --class the "
                        "model runs with its null label)")
    out = check_output(args.out, m.sample_output(s, args.n), inputs=(args.image,), overwrite=args.overwrite)
    known = m.read_still(args, s, args.frames or m.sample_shape(s, None)[1])  # every check before the weights load
    trained = ref.load()
    check_label_request(trained, args.label, args.guidance)
    labels = torch.full((args.n,), args.label) if args.label is not None else None
    x = extend.extend(trained, args.n, known.signal.shape[2], ext, _sample_settings(m, s, args), dev, bf16,
                      labels=labels, guidance=args.guidance, known=known.signal, mask=known.mask)
    one_file = args.n == 1 and not out.endswith("/")
    written = m.write_completed(x, out, s, known, args) if one_file else m.write_samples(x, out, s, labels, args)
    print(f"wrote {written} ({known.summary}; from {trained.checkpoint})")
    return 0


def _inpaint(args) -> int:
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    if args.feather and not args.crop_to_mask:
        raise UserError("--feather blends the border of a hole pasted back with --crop-to-mask: add --crop-to-mask")
    if args.crop_to_mask and not args.image:
        raise UserError("--crop-to-mask works on a picture: give it with --image")
    sections = kinds.open_run(args.run_dir)
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


def _say(args) -> int:
    """Text -> speech with a tts run and a vocoder run (pipelines/say.py); every check before any weights load."""
    dev = _device()
    bf16 = resolve_precision(args.precision, dev)
    tts = _locate(args.run_dir, "plain", dev, bf16)
    if not isinstance(tts.modality, TTSModality):
        raise UserError(f"'{args.run_dir}' is a {tts.sections['recipe'].kind} run, not a text-to-speech (tts) run")
    voc_dir = args.vocoder or default_vocoder(args.run_dir, tts.sections)
    voc = _locate(voc_dir, "plain", dev, bf16)
    if not isinstance(voc.modality, AudioModality) or not is_vocoder(voc.sections):
        raise UserError(f"--vocoder '{voc_dir}' is not a vocoder run (an audio run whose model takes mels)")
    check_pair(tts.sections, args.run_dir, voc.sections, voc_dir)
    if args.text_file:
        texts = [ln.strip() for ln in Path(args.text_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not texts:
            raise UserError(f"--text-file '{args.text_file}' holds no text: give one sentence or more per line")
    else:
        texts = [args.text]
    check_texts(args.run_dir, tts.sections, texts)
    out = check_output(args.out, say_output(len(texts)), inputs=(args.text_file,), overwrite=args.overwrite)
    written = run_say(tts, voc, texts, out, args, dev, bf16)
    print(f"wrote {written[0] if len(written) == 1 else f'{len(written)} WAVs to {out}'}")
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
    t.set_defaults(func=_train)

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
    s.set_defaults(func=_sample)

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
    a.set_defaults(func=_animate)

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
    d.set_defaults(func=_distill)

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
    y.set_defaults(func=_say)

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
    a.set_defaults(func=_app)

    b = sub.add_parser("bench", help="run a benchmark and print its table",
                       description="Benchmarks: " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    b.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see NAME --help)")
    b.set_defaults(func=_bench)
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
