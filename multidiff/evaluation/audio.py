"""Audio evaluation of a vocoder (unconditional models: audio_uncond.py).

Vocoder: resynthesise held-out utterances (the eval split: for the espeak corpus, voices and
sentences never seen in training) from their mels with 6 and 50 steps and with Griffin-Lim, and
compare each to the original: log-mel distance (dB), multi-resolution STFT distance, PESQ/STOI
(with the `eval` extra), real-time factor.
"""
from __future__ import annotations

import math
import time

import torch

from dataclasses import dataclass, field

from ..data.audio import write_wav
from ..data.mel import griffin_lim
from ..engine.plots import plot_spectrograms
from ..metrics.audio import (envelope_correlation, log_mel_distance, mr_stft_distance, pause_level_db, pesq_stoi,
                             real_time_factor)
from ..modalities.audio import AUDIO, mel_config
from ..modalities.base import Trained
from ..pipelines.vocode import vocode
from ..utils import added_key
from .tables import markdown_table, write_result


@dataclass
class AudioEvalConfig:
    """The [eval] section."""
    n: int = 20                       # held-out utterances (vocoder) or generated clips (unconditional)
    steps: list[int] = field(default_factory=lambda: [6, 50])
    griffin_lim_iters: int = 64
    save_wavs: int = 4
    consistency: list[int] = added_key([])  # also evaluate 6 steps with these mel-consistency iterations
    # unconditional models (audio_uncond.py): clip length, clips per sampling batch, and the epochs
    # of the classifier trained on the real train clips that scores them
    seconds: float = added_key(1.0)
    batch: int = added_key(16)
    classifier_epochs: int = added_key(12)
    guidance: float = added_key(1.0)  # class-conditional models: classifier-free guidance scale (1 = off)


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


def evaluate(run, trained: Trained, device, bf16: bool) -> dict:
    """A vocoder's resynthesis of held-out utterances against Griffin-Lim."""
    s, ev = run.sections, run["eval"]
    sr, hop = s["data"].sample_rate, s["model"].hop_length
    out_dir = run.dir / "samples"
    split = "eval"
    try:
        ds = AUDIO.dataset(run, split)
    except ValueError:
        split, ds = "train", AUDIO.dataset(run, "train")
    n = min(ev.n, len(ds))
    fast = s["vocode"].steps  # 6, DiffWave's fast schedule (a distilled student: its own steps)
    methods = {f"diffwave_{k}": (trained, k, 0) for k in ev.steps}
    methods.update({f"diffwave_{fast}_consistency{c}": (trained, fast, c) for c in ev.consistency})
    if ev.consistency:  # the control: what the projection does on its own, with an untrained network
        methods[f"untrained_{fast}_consistency{max(ev.consistency)}"] = (_untrained_like(trained), fast,
                                                                          max(ev.consistency))
    per = {m: [] for m in [*methods, "griffin_lim"]}
    first = {}  # the first utterance's resyntheses, for samples/spectrograms.png
    for i in range(n):
        ref, mel, _ = ds[i]
        for name, (net, steps, consistency) in methods.items():
            t0 = time.perf_counter()
            est = vocode(net, mel, steps, device, bf16, torch.Generator().manual_seed(i), sampler=s["vocode"].sampler,
                         chunk_frames=s["vocode"].chunk_frames, overlap=s["vocode"].overlap_frames,
                         consistency=consistency, eta=s["vocode"].eta_or_none())
            secs = time.perf_counter() - t0
            per[name].append({**_scores(ref, est, sr, hop), "rtf": real_time_factor(secs, ref.shape[-1], sr)})
            if i == 0:
                first[name] = est
            if i < ev.save_wavs:
                write_wav(out_dir / f"{i:02d}_{name}.wav", est, sr)
        t0 = time.perf_counter()
        gl = griffin_lim(mel, mel_config(s), ev.griffin_lim_iters)
        per["griffin_lim"].append({**_scores(ref, gl, sr, hop), "rtf": real_time_factor(time.perf_counter() - t0,
                                                                                   ref.shape[-1], sr)})
        if i < ev.save_wavs:
            write_wav(out_dir / f"{i:02d}_griffin_lim.wav", gl, sr)
            write_wav(out_dir / f"{i:02d}_original.wav", ref, sr)
        if i == 0:
            shown = {"original": ref, **first, "griffin_lim": gl}
            plot_spectrograms(shown, sr, out_dir / "spectrograms.png", hop=hop)
    rows = [{"method": m, **_mean(r)} for m, r in per.items()]
    result = {"split": split, "utterances": n, "checkpoint": str(trained.checkpoint),
              "precision": "bf16" if bf16 else "fp32", "rows": rows, "wavs": str(out_dir)}
    for r in rows:
        run.log(f"[evaluate] {r['method']}: log-mel {r['log_mel_db']:.2f} dB, MR-STFT {r['mr_stft']:.3f}, "
                f"RTF {r['rtf']:.3f}")
    return write_result(run.dir, result, markdown_table(rows, COLUMNS))


def _untrained_like(trained: Trained) -> Trained:
    """A freshly initialised model of the same config (its zero output conv predicts eps = 0), with
    the trained model's noise-prior statistics if it has a prior."""
    fresh = AUDIO.build_model(trained.sections)
    if getattr(trained.model, "prior", None) is not None:
        fresh.prior.load_state_dict(trained.model.prior.state_dict())
    return Trained(trained.modality, trained.sections, fresh, trained.checkpoint)  # (a student samples as one)


COLUMNS = {"method": "method", "log_mel_db": "log-mel distance (dB)", "mr_stft": "MR-STFT distance",
           "pesq_wb": "PESQ (wb)",
           "stoi": "STOI", "envelope": "envelope correlation", "pause_db": "level in pauses (dB)",
           "rtf": "real-time factor"}

