"""Audio recipe evaluation.

Vocoder: resynthesise held-out utterances (the eval split: for the espeak corpus, voices and
sentences never seen in training) from their mels with 6 and 50 steps and with Griffin-Lim, and
compare each to the original: log-mel distance (dB), multi-resolution STFT distance, PESQ/STOI
(with the `eval` extra), real-time factor. Unconditional: audio_uncond_eval.py.
"""
from __future__ import annotations

import math
import time

import torch

from ..data.audio import build_audio_dataset
from ..data.mel import griffin_lim
from ..metrics.audio import (envelope_correlation, log_mel_distance, mr_stft_distance, pause_level_db, pesq_stoi,
                             real_time_factor)
from ..engine.plots import plot_spectrograms
from ..engine.precision import resolve_precision
from ..utils import write_json, write_text
from . import audio
from .audio import write_wav
from .audio_uncond_eval import evaluate_unconditional
from ..engine.runs import Run


def _scores(ref, est, sr, hop) -> dict:
    return {"log_mel_db": log_mel_distance(ref, est, sr), "mr_stft": mr_stft_distance(ref, est),
            "envelope": envelope_correlation(ref, est, hop), "pause_db": pause_level_db(ref, est, hop),
            **pesq_stoi(ref, est, sr)}


def _mean(rows: list[dict]) -> dict:
    """Means over utterances; an utterance without a value (pause_db of one that never pauses) is left out."""
    out = {}
    for k in (k for k in rows[0] if isinstance(rows[0][k], float)):
        vals = [r[k] for r in rows if math.isfinite(r[k])]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out


def evaluate(run: Run, dist) -> dict:
    s, ev = run.sections, run["eval"]
    model, ckpt = audio.load_trained(run.dir, s)
    bf16 = resolve_precision(s["train"].precision, dist.device)
    sr, hop = s["data"].sample_rate, s["model"].hop_length
    out_dir = run.dir / "samples"
    if not audio.is_vocoder(s):
        return evaluate_unconditional(run, model, ckpt, dist, bf16)
    split = "eval"
    try:
        ds = build_audio_dataset(s["data"], split, cache_dir=audio.cache_dir(run))
    except ValueError:
        split, ds = "train", build_audio_dataset(s["data"], "train", cache_dir=audio.cache_dir(run))
    n = min(ev.n, len(ds))
    methods = {f"diffwave_{k}": (model, k, 0) for k in ev.steps}
    methods.update({f"diffwave_6_consistency{c}": (model, 6, c) for c in ev.consistency})
    if ev.consistency:  # the control: what the projection does on its own, with an untrained network
        methods[f"untrained_6_consistency{max(ev.consistency)}"] = (_untrained_like(model, s), 6, max(ev.consistency))
    per = {m: [] for m in [*methods, "griffin_lim"]}
    first = {}  # the first utterance's resyntheses, for samples/spectrograms.png
    for i in range(n):
        ref, mel, _ = ds[i]
        for name, (net, steps, consistency) in methods.items():
            t0 = time.perf_counter()
            est = audio.vocode(s, net, mel, steps, dist.device, bf16, torch.Generator().manual_seed(i),
                               chunk_frames=s["vocode"].chunk_frames, overlap=s["vocode"].overlap_frames,
                               consistency=consistency)
            secs = time.perf_counter() - t0
            per[name].append({**_scores(ref, est, sr, hop), "rtf": real_time_factor(secs, ref.shape[-1], sr)})
            if i == 0:
                first[name] = est
            if i < ev.save_wavs:
                write_wav(out_dir / f"{i:02d}_{name}.wav", est, sr)
        t0 = time.perf_counter()
        gl = griffin_lim(mel, audio.mel_config(s), ev.griffin_lim_iters)
        per["griffin_lim"].append({**_scores(ref, gl, sr, hop), "rtf": real_time_factor(time.perf_counter() - t0,
                                                                                   ref.shape[-1], sr)})
        if i < ev.save_wavs:
            write_wav(out_dir / f"{i:02d}_griffin_lim.wav", gl, sr)
            write_wav(out_dir / f"{i:02d}_original.wav", ref, sr)
        if i == 0:
            shown = {"original": ref, **first, "griffin_lim": gl}
            plot_spectrograms(shown, sr, out_dir / "spectrograms.png", hop=hop)
    rows = [{"method": m, **_mean(r)} for m, r in per.items()]
    result = {"split": split, "utterances": n, "checkpoint": str(ckpt), "precision": "bf16" if bf16 else "fp32",
              "rows": rows, "wavs": str(out_dir)}
    write_json(run.dir / "eval.json", result)
    write_text(run.dir / "eval.md", audio.method_table(rows, COLUMNS))
    for r in rows:
        run.log(f"[evaluate] {r['method']}: log-mel {r['log_mel_db']:.2f} dB, MR-STFT {r['mr_stft']:.3f}, "
                f"RTF {r['rtf']:.3f}")
    return {"eval": str(run.dir / "eval.json")}


def _untrained_like(model, sections: dict):
    """A freshly initialised model of the same config (its zero output conv predicts eps = 0), with
    the trained model's noise-prior statistics if it has a prior."""
    fresh = audio.build_model(sections)
    if getattr(model, "prior", None) is not None:
        fresh.prior.load_state_dict(model.prior.state_dict())
    return fresh


COLUMNS = {"log_mel_db": "log-mel distance (dB)", "mr_stft": "MR-STFT distance", "pesq_wb": "PESQ (wb)",
           "stoi": "STOI", "envelope": "envelope correlation", "pause_db": "level in pauses (dB)",
           "rtf": "real-time factor"}

