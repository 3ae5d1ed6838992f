"""Audio recipe evaluation.

Vocoder: resynthesise held-out utterances (the eval split: for the espeak corpus, voices and
sentences never seen in training) from their mels with 6 and 50 steps and with Griffin-Lim, and
compare each to the original: log-mel distance (dB), multi-resolution STFT distance, PESQ/STOI
(with the `eval` extra), real-time factor. Unconditional: write generated clips.
"""
from __future__ import annotations

import time

import soundfile as sf
import torch

from ..data.audio import build_audio_dataset
from ..data.mel import griffin_lim
from ..metrics.audio import log_mel_distance, mr_stft_distance, pesq_stoi, real_time_factor
from ..train.precision import resolve_precision
from ..utils import atomic_path, write_json, write_text
from . import audio
from .run import Run


def write_wav(path, wav: torch.Tensor, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, wav.reshape(-1).float().numpy(), sample_rate, subtype="PCM_16", format="WAV")


def _scores(ref, est, sr) -> dict:
    return {"log_mel_db": log_mel_distance(ref, est, sr), "mr_stft": mr_stft_distance(ref, est),
            **pesq_stoi(ref, est, sr)}


def _mean(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def evaluate(run: Run, dist) -> dict:
    s, ev = run.sections, run["eval"]
    model, ckpt = audio.load_trained(run.dir, s)
    bf16 = resolve_precision(s["train"].precision, dist.device)
    sr = s["data"].sample_rate
    out_dir = run.dir / "samples"
    if not audio.is_vocoder(s):
        return _evaluate_unconditional(run, model, ckpt, dist, bf16)
    split = "eval"
    try:
        ds = build_audio_dataset(s["data"], split, cache_dir=audio.cache_dir(run))
    except ValueError:
        split, ds = "train", build_audio_dataset(s["data"], "train", cache_dir=audio.cache_dir(run))
    n = min(ev.n, len(ds))
    methods = {f"diffwave_{k}": k for k in ev.steps}
    per = {m: [] for m in [*methods, "griffin_lim"]}
    for i in range(n):
        ref, mel, _ = ds[i]
        for name, steps in methods.items():
            t0 = time.perf_counter()
            est = audio.vocode(s, model, mel, steps, dist.device, bf16, torch.Generator().manual_seed(i),
                               chunk_frames=s["vocode"].chunk_frames, overlap=s["vocode"].overlap_frames)
            secs = time.perf_counter() - t0
            per[name].append({**_scores(ref, est, sr), "rtf": real_time_factor(secs, ref.shape[-1], sr)})
            if i < ev.save_wavs:
                write_wav(out_dir / f"{i:02d}_{name}.wav", est, sr)
        t0 = time.perf_counter()
        gl = griffin_lim(mel, audio.mel_config(s), ev.griffin_lim_iters)
        per["griffin_lim"].append({**_scores(ref, gl, sr), "rtf": real_time_factor(time.perf_counter() - t0,
                                                                                   ref.shape[-1], sr)})
        if i < ev.save_wavs:
            write_wav(out_dir / f"{i:02d}_griffin_lim.wav", gl, sr)
            write_wav(out_dir / f"{i:02d}_original.wav", ref, sr)
    rows = [{"method": m, **_mean(r)} for m, r in per.items()]
    result = {"split": split, "utterances": n, "checkpoint": str(ckpt), "precision": "bf16" if bf16 else "fp32",
              "rows": rows, "wavs": str(out_dir)}
    write_json(run.dir / "eval.json", result)
    write_text(run.dir / "eval.md", markdown(rows))
    for r in rows:
        run.log(f"[evaluate] {r['method']}: log-mel {r['log_mel_db']:.2f} dB, MR-STFT {r['mr_stft']:.3f}, "
                f"RTF {r['rtf']:.3f}")
    return {"eval": str(run.dir / "eval.json")}


def _evaluate_unconditional(run: Run, model, ckpt, dist, bf16) -> dict:
    s, ev = run.sections, run["eval"]
    sr, seconds = s["data"].sample_rate, 1.0
    n_samples = int(sr * seconds) // s["model"].hop_length * s["model"].hop_length
    rows = []
    for steps in ev.steps:
        t0 = time.perf_counter()
        x = audio.generate_audio(s, model, n_samples, None, steps, dist.device, bf16,
                                 torch.Generator().manual_seed(0), batch=ev.n)[:, 0]
        n = x.shape[0]
        secs = time.perf_counter() - t0
        for i in range(min(n, ev.save_wavs)):
            write_wav(run.dir / "samples" / f"steps{steps}_{i:02d}.wav", x[i], sr)
        rows.append({"steps": steps, "rtf": real_time_factor(secs, n * n_samples, sr)})
    result = {"checkpoint": str(ckpt), "rows": rows}
    write_json(run.dir / "eval.json", result)
    return {"eval": str(run.dir / "eval.json")}


def markdown(rows) -> str:
    extra = [k for k in ("pesq_wb", "stoi") if k in rows[0]]
    lines = ["| method | log-mel distance (dB) | MR-STFT distance | " + " | ".join(extra) + (" | " if extra else "")
             + "real-time factor |", "|---|---|---|" + "---|" * len(extra) + "---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['log_mel_db']:.2f} | {r['mr_stft']:.3f} | "
                     + "".join(f"{r[k]:.3f} | " for k in extra) + f"{r['rtf']:.3f} |")
    return "\n".join(lines) + "\n"
