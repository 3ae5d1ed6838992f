"""Evaluation of a text-to-speech run on held-out sentences (the corpus' dev split: the training
voices saying sentences never seen in training; eval: held-out voices too, for the espeak corpus):

  * the vocoder on the real mel -- the ceiling of the chain (what a perfect acoustic model would get);
  * the whole chain, text -> phonemes -> mel (predicted durations, the decoder's few ODE steps) ->
    vocoder, with each vocoder there is (the [vocoder] run, and the one fine-tuned on this run's mels);

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
from ..data.mel import griffin_lim
from ..data.mel_check import clamp_to_range
from ..data.tts import SPLITS, TTSDataset, tts_mel_config
from ..engine.plots import plot_spectrograms
from ..metrics.speech import mcd_dtw
from ..modalities.audio import mel_config
from ..modalities.base import Trained
from ..pipelines.say import front_end, synthesize, vocode_spoken
from ..pipelines.vocode import vocode
from .tables import markdown_table, write_result


@dataclass
class TTSEvalConfig:
    """The [eval] section."""
    n: int = 20                        # held-out utterances per split
    splits: list[str] = field(default_factory=lambda: ["dev", "eval"])
    save_wavs: int = 3                 # per split
    mcd_order: int = 24                # mel-cepstral coefficients c_1..c_order

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
        per = {"ceiling": {k: [] for k in vocoders}, "chain": {k: [] for k in vocoders}}
        dur_err, sym_mae = [], []
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
            shown = {"real": real}
            for name, voc in vocoders.items():
                wav_c = _vocode_real(voc, mel, cfg, device, bf16, i, **vkw)
                per["ceiling"][name].append(mcd_dtw(real, wav_c, sr, ev.mcd_order, hop))
                t1 = time.perf_counter()
                vocode_spoken(spoken, voc, cfg, device, bf16, i, **vkw)
                secs = t_am + time.perf_counter() - t1
                wav_t = spoken[0].wav
                per["chain"][name].append((mcd_dtw(real, wav_t, sr, ev.mcd_order, hop),
                                           secs / (wav_t.shape[-1] / sr)))
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
        for name in vocoders:
            ceiling = _mean(per["ceiling"][name])
            rows.append({"split": split, "utterances": n, "method": f"{name} on the real mel (ceiling)",
                         "mcd_dtw": ceiling})
            chain = _mean([m for m, _ in per["chain"][name]])
            rows.append({"split": split, "utterances": n, "method": f"text -> acoustic model -> {name}",
                         "mcd_dtw": chain, "gap_db": chain - ceiling, "duration_error_pct": _mean(dur_err),
                         "symbol_duration_mae_ms": _mean(sym_mae), "rtf": _mean([r for _, r in per["chain"][name]])})
    for r in rows:
        run.log(f"[evaluate] {r['split']}: {r['method']}: MCD-DTW {r['mcd_dtw']:.2f} dB"
                + (f", duration error {r['duration_error_pct']:.1f}%, RTF {r['rtf']:.3f}" if "rtf" in r else ""))
    result = {"splits": splits, "checkpoint": str(tts.checkpoint), "precision": "bf16" if bf16 else "fp32",
              "vocoder_steps": vc.steps or "the vocoder's", "vocoder_consistency": vc.consistency
              if vc.consistency >= 0 else "the vocoder's",
              "threads": torch.get_num_threads(), "sampler": settings.sampler, "steps": settings.steps,
              "rows": rows, "wavs": str(out_dir)}
    return write_result(run.dir, result, markdown_table(rows, COLUMNS))


COLUMNS = {"split": "split", "utterances": "utterances", "method": "method", "mcd_dtw": ("MCD-DTW (dB)", ".2f"),
           "gap_db": ("gap to ceiling (dB)", ".2f"), "duration_error_pct": ("total duration error (%)", ".1f"),
           "symbol_duration_mae_ms": ("per-symbol duration error (ms)", ".1f"), "rtf": ("real-time factor", ".3f")}
