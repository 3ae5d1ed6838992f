"""`multidiff vocode`, and `multidiff sample` / `multidiff inpaint` for audio runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data.audio import read_audio
from .data.mel import mel_spectrogram
from .recipes import audio, registry
from .recipes.audio import write_wav
from .recipes.image_inpainting import CompletionSampling
from .engine.runs import load_run


def _load(run_dir):
    sections = load_run(run_dir, registry.schemas())
    if sections["recipe"].kind != "audio":
        raise ValueError(f"'{run_dir}' is a {sections['recipe'].kind} run, not an audio run")
    model, ckpt = audio.load_trained(Path(run_dir), sections)
    return sections, model, ckpt


def _input_mel(path: Path, sections) -> torch.Tensor:
    cfg = audio.mel_config(sections)
    if path.suffix == ".npy":
        try:
            mel = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read mel '{path}': {e}") from None
        if mel.ndim != 2 or mel.shape[0] != cfg.n_mels:
            raise ValueError(f"mel '{path}' has shape {tuple(mel.shape)}; this vocoder expects [{cfg.n_mels}, frames] "
                             f"{cfg.style} mels (hop {cfg.hop_length}, {cfg.sample_rate} Hz)")
        return mel
    wav = read_audio(path, sections["data"].sample_rate)
    return mel_spectrogram(wav, cfg)


def vocode_command(args) -> int:
    sections, model, ckpt = _load(args.run_dir)
    if not audio.is_vocoder(sections):
        raise ValueError(f"'{args.run_dir}' holds an unconditional model; use `multidiff sample` with it")
    inputs = [Path(p) for p in args.input]
    out = Path(args.out)
    if len(inputs) > 1 and not (args.out.endswith("/") or out.is_dir()):
        raise ValueError("several --input files need --out to be a folder (ending in /)")
    dev, bf16 = audio.device_and_precision(args.precision)
    v = sections["vocode"]
    for i, p in enumerate(inputs):
        mel = _input_mel(p, sections)
        wav = audio.vocode(sections, model, mel, args.steps or v.steps, dev, bf16,
                           torch.Generator().manual_seed(args.seed + i), sampler=args.sampler or v.sampler,
                           chunk_frames=args.chunk_frames if args.chunk_frames is not None else v.chunk_frames,
                           overlap=v.overlap_frames,
                           consistency=args.consistency if args.consistency is not None else v.consistency)
        target = out / (p.stem + ".wav") if len(inputs) > 1 or args.out.endswith("/") or out.is_dir() else out
        write_wav(target, wav, sections["data"].sample_rate)
        print(f"wrote {target} ({wav.shape[-1] / sections['data'].sample_rate:.2f} s, from {ckpt.name})")
    return 0


def sample_command(args) -> int:
    sections, model, ckpt = _load(args.run_dir)
    if audio.is_vocoder(sections):
        raise ValueError(f"'{args.run_dir}' is a vocoder (it needs mels): use `multidiff vocode`")
    dev, bf16 = audio.device_and_precision(args.precision)
    sr, hop = sections["data"].sample_rate, sections["model"].hop_length
    n_samples = int(sr * args.seconds) // hop * hop
    steps = args.steps or sections["diffusion"].timesteps
    K = sections["model"].num_classes
    if args.label is not None and not 0 <= args.label < K:
        raise ValueError(f"--class {args.label}: " + (f"this run has classes 0..{K - 1}" if K else
                         "this run is unconditional ([model] num_classes = 0); drop --class"))
    # a class-conditional model gets its classes in turn unless --class picks one (as for images)
    labels = None if not K else torch.full((args.n,), args.label) if args.label is not None else torch.arange(args.n) % K
    x = audio.generate_audio(sections, model, n_samples, None, steps, dev, bf16,
                             torch.Generator().manual_seed(args.seed), sampler=args.sampler or "ddpm", batch=args.n,
                             labels=labels, guidance=1.0 if args.guidance is None else args.guidance)
    for i in range(args.n):
        write_wav(Path(args.out) / f"sample_{i:04d}.wav", x[i], sr)
    print(f"wrote {args.n} WAVs to {args.out} (from {ckpt.name})")
    return 0


def parse_gap(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--gap must look like START:END in seconds (e.g. 1.20:1.45), got {text!r}") from None
    if not 0 <= a < b:
        raise ValueError(f"--gap {text}: need 0 <= START < END")
    return a, b


# how the core's masked sampling fills a gap, per --method: the [inpaint] defaults (tuned on images, not audio)
_DEFAULTS = CompletionSampling()
AUDIO_INPAINT = {"replace": {}, "repaint": {"repaint": (_DEFAULTS.jump_length, _DEFAULTS.jump_n_sample)},
                 "reconstruction": {"reconstruction": _DEFAULTS.reconstruction_weight}}


def inpaint_command(args) -> int:
    method = args.method or "replace"
    if method not in AUDIO_INPAINT:
        raise ValueError(f"--method {method}: audio runs have no mask-conditioned model; use one of "
                         f"{', '.join(AUDIO_INPAINT)} (default replace)")
    sections, model, ckpt = _load(args.run_dir)
    if not args.input or not args.gap:
        raise ValueError("audio inpainting needs --input x.wav and --gap START:END (seconds)")
    sr, hop = sections["data"].sample_rate, sections["model"].hop_length
    wav = read_audio(args.input, sr)
    wav = wav[:, :wav.shape[1] // hop * hop]
    a, b = parse_gap(args.gap)
    s0, s1 = int(a * sr), min(int(b * sr), wav.shape[1])
    if s1 <= s0 or s1 > wav.shape[1]:
        raise ValueError(f"--gap {args.gap} lies outside '{args.input}' ({wav.shape[1] / sr:.2f} s)")
    mask = torch.ones_like(wav)
    mask[:, s0:s1] = 0
    mel = None
    if audio.is_vocoder(sections):
        # the gap's own mel is unknown: bridge it by interpolating the frames at its edges
        m = mel_spectrogram(wav * mask, audio.mel_config(sections))
        f0, f1 = s0 // hop, min(-(-s1 // hop), m.shape[1] - 1)
        left, right = m[:, max(f0 - 1, 0)], m[:, f1]
        w = torch.linspace(0, 1, f1 - f0 + 2)[1:-1]
        m[:, f0:f1] = left[:, None] * (1 - w) + right[:, None] * w
        mel = m[None]
    dev, bf16 = audio.device_and_precision(args.precision)
    steps = args.steps or (sections["vocode"].steps if mel is not None else sections["diffusion"].timesteps)
    x = audio.generate_audio(sections, model, wav.shape[1], mel, steps, dev, bf16,
                             torch.Generator().manual_seed(args.seed), mask=mask[None], known=wav[None],
                             **AUDIO_INPAINT[method])
    write_wav(args.out, x[0], sr)
    print(f"wrote {args.out} ({(s1 - s0) / sr:.3f} s filled by {method}, from {ckpt.name})")
    return 0
