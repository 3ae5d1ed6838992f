"""What each `multidiff` command does (cli.py parses the command line and calls one of these): one dispatch
through the recipe kinds and the modality protocol -- nothing here knows what an image, a waveform or a video is."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import torch

from . import kinds
from .app.server import serve as serve_app
from .core.samplers import ETA_SAMPLERS
from .data.audio import write_wav
from .engine.distributed import init_distributed, shutdown
from .engine.precision import resolve_precision
from .engine.run_lock import run_lock
from .engine.runs import Run, load_recipe, load_run
from .errors import UserError
from .kinds import ModelRef
from .modalities.audio import AudioModality, is_vocoder
from .modalities.tts import TTSModality
from .outputs import OutputSpec, check_output, check_target, same_file
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


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cmd_app(args) -> int:
    serve_app(args.run_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
              precision=args.precision)
    return 0


def cmd_bench(args) -> int:
    module, _ = BENCHMARKS[args.name]
    try:
        importlib.import_module(module).main(args.rest)
    except ModuleNotFoundError as e:
        raise UserError(f"multidiff bench {args.name} needs the package {e.name!r}; install the peers with: "
                        "pip install -e '.[bench]'") from None
    return 0


def cmd_train(args) -> int:
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


def cmd_distill(args) -> int:
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


def cmd_sample(args) -> int:
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


def cmd_animate(args) -> int:
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


def cmd_inpaint(args) -> int:
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


def cmd_vocode(args) -> int:
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
    v, sr = sections["vocode"], sections["data"].sample_rate
    sampler, eta = args.sampler or v.sampler, args.eta if args.eta is not None else v.eta_or_none()
    if eta is not None and sampler not in ETA_SAMPLERS:
        raise UserError(f"eta is the noise scale of {' / '.join(ETA_SAMPLERS)}; '{args.run_dir}' vocodes with "
                        f"{sampler}: add --sampler ddim, or drop --eta (and [vocode] eta)")
    trained = ref.load()
    for i, (mel, target) in enumerate(zip(mels, targets)):
        wav = vocode(trained, mel, args.steps or v.steps, dev, bf16, torch.Generator().manual_seed(args.seed + i),
                     sampler=sampler, eta=eta, overlap=v.overlap_frames,
                     chunk_frames=args.chunk_frames if args.chunk_frames is not None else v.chunk_frames,
                     consistency=args.consistency if args.consistency is not None else v.consistency)
        write_wav(target, wav, sr)
        print(f"wrote {target} ({wav.shape[-1] / sr:.2f} s, from {trained.checkpoint.name})")
    return 0


def cmd_say(args) -> int:
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
