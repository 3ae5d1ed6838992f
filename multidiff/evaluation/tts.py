"""Evaluation of a text-to-speech run on held-out sentences (the corpus' dev split: the training
voices saying sentences never seen in training; eval: held-out voices too, for the espeak corpus):

  * the vocoder on the real mel -- the ceiling of the chain (what a perfect acoustic model would get);
  * the whole chain, text -> phonemes -> mel (predicted durations, the decoder's few ODE steps) ->
    vocoder, with each vocoder there is (the [vocoder] run, and the one fine-tuned on this run's mels);
  * what the chain's gap to its ceiling is made of: the decoder run on the real durations (MAS of the
    real mel) and vocoded -- the acoustic model's spectral error without its timing error -- and that
    mel against the real one frame for frame (no vocoder, no DTW: metrics/speech.mcd_aligned);
  * with `breakdown`, the ceiling and the chain once more without the vocoder's mel consistency (which
    pulls a resynthesis toward the mel it is given and so lowers the ceiling);

scored against the real rendering of the same sentence: mel-cepstral distortion after DTW
(metrics/speech.py), the total-duration error, the per-symbol duration error against the model's own
alignment (MAS) of the real mel, and the real-time factor of the chain (text in, waveform out, the
front end's espeak-ng call included, after one warm-up sentence). A model with speakers says a
held-out voice's sentence with the training voice whose average mel is nearest that utterance's
(the only thing it could know of an unseen voice). WAVs and samples/spectrograms.png as well.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..data.audio import read_audio, write_wav
from ..data.mel import griffin_lim, mel_magnitude
from ..data.mel_check import clamp_to_range
from ..data.tts import SPLITS, TTSDataset, tts_mel_config
from ..engine.plots import plot_spectrograms
from ..metrics.speech import mcd_aligned, mcd_dtw
from ..modalities.audio import mel_config
from ..modalities.base import Trained
from ..pipelines.say import front_end, synthesize, synthesize_aligned, vocode_spoken
from ..pipelines.vocode import vocode
from ..utils import added_key
from .tables import markdown_table, write_result


@dataclass
class TTSEvalConfig:
    """The [eval] section."""
    n: int = 20                        # held-out utterances per split
    splits: list[str] = field(default_factory=lambda: ["dev", "eval"])
    save_wavs: int = 3                 # per split
    mcd_order: int = 24                # mel-cepstral coefficients c_1..c_order
    breakdown: bool = added_key(True)  # also the chain and its ceiling without the vocoder's mel consistency

    def __post_init__(self):
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"eval.splits: {bad} are not among {SPLITS}")


def speaker_means(run_dir) -> torch.Tensor | None:
    """[speakers, n_mels] each training speaker's average mel frame."""
    ds = TTSDataset(run_dir, "train")
    if not ds.speakers:
        return None
    sums = torch.zeros(len(ds.speakers), ds.mels.shape[0], dtype=torch.float64)
    counts = torch.zeros(len(ds.speakers), dtype=torch.float64)
    for it, mel in zip(ds.items, ds.mel_frames()):
        sums[it["speaker"]] += mel.double().sum(1)
        counts[it["speaker"]] += mel.shape[1]
    return (sums / counts[:, None].clamp(min=1)).float()


def _voice(item: dict, mel: torch.Tensor, means) -> int | None:
    if means is None:
        return None
    if item["speaker"] >= 0:
        return int(item["speaker"])
    return int((means - mel.mean(1)[None]).square().sum(1).argmin())


def _vocode_real(voc: Trained | None, mel, cfg, device, bf16, seed: int, steps=None, consistency=None):
    if voc is None:
        return griffin_lim(mel, cfg)
    v = voc.sections["vocode"]
    return vocode(voc, clamp_to_range(mel, cfg), steps or v.steps, device, bf16, torch.Generator().manual_seed(seed),
                  sampler=v.sampler, chunk_frames=v.chunk_frames, overlap=v.overlap_frames,
                  consistency=v.consistency if consistency is None else consistency)


def _consistency(voc: Trained | None, vkw: dict) -> int:
    """The mel-consistency iterations a vocoder runs with here (0 for Griffin-Lim)."""
    if voc is None:
        return 0
    return voc.sections["vocode"].consistency if vkw["consistency"] is None else vkw["consistency"]


def _log_amplitude(mel: torch.Tensor, cfg) -> torch.Tensor:
    """Natural-log mel amplitude of a feature mel (what mel cepstra expand)."""
    return torch.log(mel_magnitude(mel.float(), cfg).clamp(min=1e-5))


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def evaluate(run, tts: Trained, vocoders: dict, device, bf16: bool) -> dict:
    """`vocoders`: name -> Trained vocoder (None: Griffin-Lim)."""
    s, ev = run.sections, run["eval"]
    sr, hop = s["data"].sample_rate, s["data"].hop_length
    cfg = tts_mel_config(s["data"])
    for voc in vocoders.values():
        if voc is not None and mel_config(voc.sections) != cfg:
            raise ValueError("the vocoder's mel configuration differs from the tts run's (see multidiff say)")
    out_dir = run.dir / "samples"
    front = front_end(run.dir, s)
    settings = s["sample"]
    vc = s["vocoder"]
    vkw = {"steps": vc.steps or None, "consistency": None if vc.consistency < 0 else vc.consistency}
    means = speaker_means(run.dir) if s["model"].n_speakers else None
    model = tts.model.to(device).eval()
    splits = [sp for sp in ev.splits if (run.dir / "tts_data" / f"{sp}.json").is_file()] or ["train"]
    first_voc = next(iter(vocoders.values()))
    # warm-up: the first call of each piece is slower (allocation, threads), not what a user waits for
    warm = front.encode(["Warm up."])
    vocode_spoken(synthesize(tts, warm, settings, device, bf16, 0 if means is not None else None), first_voc, cfg,
                  device, bf16, **vkw)
    rows, figure = [], None
    for split in splits:
        ds = TTSDataset(run.dir, split)
        n = min(ev.n, len(ds))
        scores: dict[str, list] = {}  # row label -> per-utterance MCD-DTW (dB)
        rtf = {name: [] for name in vocoders}
        dur_err, sym_mae, mel_mcd = [], [], []
        for i in range(n):
            it = ds.items[i]
            ids, mel, _ = ds[i]
            real = read_audio(it["wav"], sr)[:, :it["frames"] * hop]
            spk = _voice(it, mel, means)
            t0 = time.perf_counter()
            enc = front.encode([it["text"]], warn=False)
            spoken = synthesize(tts, enc, settings, device, bf16, spk)
            t_am = time.perf_counter() - t0
            sp = spoken[0]
            # durations: total, and per symbol against MAS of the real mel
            pred = float(sp.durations.sum())
            dur_err.append(100 * abs(pred - it["frames"]) / it["frames"])
            x = ids[None].to(device)
            path, _ = model.align(x, torch.tensor([len(ids)], device=device), mel[None].to(device),
                                  torch.tensor([mel.shape[1]], device=device),
                                  torch.tensor([spk], device=device) if spk is not None else None)
            true_d = path[0].sum(-1).cpu()
            if len(true_d) == len(sp.durations):
                sym_mae.append(float((sp.durations - true_d).abs().mean()) * hop / sr * 1000)
            # the breakdown: the decoder on the real durations (its spectral error alone, frame for frame)
            gta = synthesize_aligned(tts, [ids.tolist()], [mel], settings, device, bf16,
                                     [spk] if spk is not None else None, seed=settings.seed)[0]
            mel_mcd.append(mcd_aligned(_log_amplitude(mel, cfg), _log_amplitude(clamp_to_range(gta, cfg), cfg),
                                       ev.mcd_order))
            shown = {"real": real}
            for name, voc in vocoders.items():
                def score(label, wav):
                    scores.setdefault(label.format(name=name), []).append(mcd_dtw(real, wav, sr, ev.mcd_order, hop))
                wav_c = _vocode_real(voc, mel, cfg, device, bf16, i, **vkw)
                score(CEILING, wav_c)
                t1 = time.perf_counter()
                vocode_spoken(spoken, voc, cfg, device, bf16, i, **vkw)
                rtf[name].append((t_am + time.perf_counter() - t1) / (sp.wav.shape[-1] / sr))
                wav_t = sp.wav
                score(CHAIN, wav_t)
                score(CHAIN_REAL_DURATIONS, _vocode_real(voc, gta, cfg, device, bf16, i, **vkw))
                if ev.breakdown and _consistency(voc, vkw) > 0:  # the same without the vocoder's mel projection
                    score(CEILING_PLAIN, _vocode_real(voc, mel, cfg, device, bf16, i, vkw["steps"], 0))
                    score(CHAIN_PLAIN, _vocode_real(voc, sp.mel, cfg, device, bf16, i, vkw["steps"], 0))
                tag = name.replace(" ", "_").replace("-", "_")
                if i < ev.save_wavs:
                    write_wav(out_dir / f"{split}_{i:02d}_{tag}_real_mel.wav", wav_c, sr)
                    write_wav(out_dir / f"{split}_{i:02d}_{tag}_tts.wav", wav_t, sr)
                shown[f"{name} on the real mel"] = wav_c
                shown[f"text -> {name}"] = wav_t
            if i < ev.save_wavs:
                write_wav(out_dir / f"{split}_{i:02d}_real.wav", real, sr)
            if figure is None:
                figure = shown
                plot_spectrograms(shown, sr, out_dir / "spectrograms.png", hop=hop)
        mean = {label: _mean(v) for label, v in scores.items()}
        base = {"split": split, "utterances": n}
        rows.append({**base, "method": MEL_ONLY, "mcd_dtw": _mean(mel_mcd)})
        for name in vocoders:
            ceiling, chain, on_real = (mean[label.format(name=name)] for label in (CEILING, CHAIN, CHAIN_REAL_DURATIONS))
            rows.append({**base, "method": CEILING.format(name=name), "mcd_dtw": ceiling})
            rows.append({**base, "method": CHAIN.format(name=name), "mcd_dtw": chain, "gap_db": chain - ceiling,
                         "gap_timing_db": chain - on_real, "gap_spectrum_db": on_real - ceiling,
                         "duration_error_pct": _mean(dur_err), "symbol_duration_mae_ms": _mean(sym_mae),
                         "rtf": _mean(rtf[name])})
            rows.append({**base, "method": CHAIN_REAL_DURATIONS.format(name=name), "mcd_dtw": on_real,
                         "gap_db": on_real - ceiling})
            if CEILING_PLAIN.format(name=name) in mean:
                plain_ceiling, plain_chain = mean[CEILING_PLAIN.format(name=name)], mean[CHAIN_PLAIN.format(name=name)]
                rows.append({**base, "method": CEILING_PLAIN.format(name=name), "mcd_dtw": plain_ceiling})
                rows.append({**base, "method": CHAIN_PLAIN.format(name=name), "mcd_dtw": plain_chain,
                             "gap_db": plain_chain - plain_ceiling})
    for r in rows:
        run.log(f"[evaluate] {r['split']}: {r['method']}: MCD {r['mcd_dtw']:.2f} dB"
                + (f", duration error {r['duration_error_pct']:.1f}%, RTF {r['rtf']:.3f}" if "rtf" in r else ""))
    result = {"splits": splits, "checkpoint": str(tts.checkpoint), "precision": "bf16" if bf16 else "fp32",
              "vocoder_steps": vc.steps or "the vocoder's", "vocoder_consistency": vc.consistency
              if vc.consistency >= 0 else "the vocoder's",
              "threads": torch.get_num_threads(), "sampler": settings.sampler, "steps": settings.steps,
              "rows": rows, "wavs": str(out_dir)}
    return write_result(run.dir, result, markdown_table(rows, COLUMNS))


# the rows of a split, per vocoder ({name}); what the chain's gap to its ceiling is made of: the chain on the real
# durations has the acoustic model's spectral error only, so chain - that = timing, that - ceiling = spectrum
CEILING = "{name} on the real mel (ceiling)"
CHAIN = "text -> acoustic model -> {name}"
CHAIN_REAL_DURATIONS = "text + the real durations -> acoustic model -> {name}"
CEILING_PLAIN = "{name} on the real mel, no mel consistency (ceiling)"
CHAIN_PLAIN = "text -> acoustic model -> {name}, no mel consistency"
MEL_ONLY = "acoustic model on the real durations vs the real mel (no vocoder, no DTW)"

COLUMNS = {"split": "split", "utterances": "utterances", "method": "method", "mcd_dtw": ("MCD (dB)", ".2f"),
           "gap_db": ("gap to ceiling (dB)", ".2f"), "gap_timing_db": ("of which timing (dB)", ".2f"),
           "gap_spectrum_db": ("of which spectrum (dB)", ".2f"), "duration_error_pct": ("total duration error (%)", ".1f"),
           "symbol_duration_mae_ms": ("per-symbol duration error (ms)", ".1f"), "rtf": ("real-time factor", ".3f")}
