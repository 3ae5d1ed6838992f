"""Speech from text: the front end (normalise, espeak-ng phonemes, the run's symbol table), the
acoustic model (durations from its predictor, then the mel decoder sampled by the core's samplers
from noise, conditioned on the aligned text encoding), and a DiffWave vocoder run -- after checking
that the vocoder expects the mels the acoustic model makes. What `multidiff say`, the tts sample
and evaluate stages, and the vocoder fine-tuning run."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.audio import write_wav
from ..data.mel import MelConfig, griffin_lim
from ..data.mel_check import check_same_mel, check_vocoder_mel, clamp_to_range
from ..data.tts import SYMBOLS_FILE, read_speaker_names, tts_mel_config
from ..engine.checkpoint import latest_checkpoint
from ..errors import UserError
from ..modalities.audio import mel_config
from ..modalities.base import Trained
from ..models.tts import sequence_mask
from ..outputs import OutputSpec
from ..text import Encoded, FrontEnd, SymbolTable, normalize, split_sentences
from .vocode import vocode

FINETUNED_VOCODER = "vocoder"   # RUN/vocoder: the vocoder fine-tuned on this run's mels (kinds/tts.py)


@dataclass
class Spoken:
    """One synthesised sentence: its normalised text, phonemes, durations [T_x] (frames per symbol),
    mel [n_mels, frames] (the vocoder's units) and, once vocoded, the waveform [1, frames * hop]."""
    text: str
    phonemes: str
    durations: torch.Tensor
    mel: torch.Tensor
    wav: torch.Tensor | None = None


def front_end(run_dir, sections: dict) -> FrontEnd:
    """The run's own front end: its [text] settings and the symbol table it was trained with."""
    return FrontEnd(sections["text"], SymbolTable.load(Path(run_dir) / SYMBOLS_FILE))


def speaker_id(run_dir, sections: dict, name: str | None) -> int | None:
    """The speaker id of `name` (default: the first) for a model with speakers; None without."""
    if not sections["model"].n_speakers:
        if name:
            raise UserError(f"--speaker {name}: '{run_dir}' was trained without speakers; leave --speaker out")
        return None
    names = read_speaker_names(run_dir)
    if not name:
        return 0
    if name not in names:
        raise UserError(f"--speaker {name!r}: '{run_dir}' knows the speakers {', '.join(names)}")
    return names.index(name)


def default_vocoder(run_dir, sections: dict) -> str:
    """The vocoder a tts run speaks with when none is named: its fine-tuned one, else its [vocoder] run."""
    tuned = Path(run_dir) / FINETUNED_VOCODER
    if latest_checkpoint(tuned / "checkpoints") is not None and (tuned / "config.toml").is_file():
        return str(tuned)
    if sections.get("vocoder") is not None and sections["vocoder"].run:
        return sections["vocoder"].run
    raise UserError(f"'{run_dir}' names no vocoder ([vocoder] run): give one with --vocoder VOCODER_RUN "
                    "(a trained DiffWave run, e.g. runs/diffwave_espeak)")


def check_pair(tts_sections: dict, tts_dir, voc_sections: dict, voc_dir) -> None:
    """The vocoder expects exactly the mels the acoustic model makes (style, bands, rate, hop, window)."""
    check_same_mel(tts_mel_config(tts_sections["data"]), mel_config(voc_sections), f"the tts run '{tts_dir}'",
                   f"'{voc_dir}'")


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _pad_ids(encoded: list[list[int]], device):
    lengths = torch.tensor([len(e) for e in encoded], device=device)
    ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long, device=device)
    for b, e in enumerate(encoded):
        ids[b, :len(e)] = torch.tensor(e, dtype=torch.long)
    return ids, lengths


def decode(trained: Trained, mu_y, y_mask, frames, settings, device, bf16: bool, seeds: list[int], spk=None):
    """The decoder sampled by the core from noise (per item, seeded, scaled by the temperature) given the
    aligned encoding mu_y [B, n_mels, T]: the mels [B, n_mels, T] in the vocoder's units."""
    model, s = trained.model, trained.sections
    den = trained.denoiser(device, bf16)
    n_mels, T = mu_y.shape[1], mu_y.shape[2]
    noise = torch.zeros(len(seeds), n_mels, T)
    for b, seed in enumerate(seeds):
        f = int(frames[b])
        noise[b, :, :f] = torch.randn(n_mels, f, generator=torch.Generator().manual_seed(seed))
    cond = {"mu": mu_y, "mask": y_mask}
    if spk is not None:
        cond["spk"] = spk
    kw = trained.modality.sampling(s, settings.sampler, settings.steps, settings.spacing)
    y = trained.sample(den, noise.to(device) * settings.temperature, torch.Generator().manual_seed(seeds[0]),
                       cond, device, **kw)
    return (model.denormalize(y.float()) * y_mask).cpu()


@torch.no_grad()
def synthesize(trained: Trained, encoded: list[Encoded], settings, device, bf16: bool, speaker: int | None = None,
               batch: int = 16) -> list[Spoken]:
    """Encoded sentences -> Spoken (mels with the durations the model predicts), `batch` at a time;
    the noise of sentence i is seeded with settings.seed + i, so batching does not change a result."""
    model = trained.model.to(device).eval()
    out = []
    for idx in _batches(len(encoded), batch):
        ids, lengths = _pad_ids([encoded[i].ids for i in idx], device)
        spk = torch.full((len(idx),), speaker, device=device) if speaker is not None else None
        mu_y, y_mask, frames, d = model.prior(ids, lengths, spk, 1.0 / settings.speed)
        mel = decode(trained, mu_y, y_mask, frames, settings, device, bf16, [settings.seed + i for i in idx], spk)
        for b, i in enumerate(idx):
            f = int(frames[b])
            out.append(Spoken(encoded[i].text, encoded[i].phonemes, d[b, :int(lengths[b])].cpu(), mel[b, :, :f]))
    return out


@torch.no_grad()
def synthesize_aligned(trained: Trained, ids: list[list[int]], mels: list[torch.Tensor], settings, device, bf16: bool,
                       speakers: list[int] | None = None, seed: int = 0) -> list[torch.Tensor]:
    """Ground-truth-aligned mels (Tacotron 2's GTA): the decoder conditioned on the text aligned to the
    real mels by MAS, so each prediction has its real mel's frames (what a vocoder is fine-tuned on)."""
    model = trained.model.to(device).eval()
    x, x_len = _pad_ids(ids, device)
    y_len = torch.tensor([m.shape[1] for m in mels], device=device)
    y = torch.zeros(len(mels), mels[0].shape[0], int(y_len.max()), device=device)
    for b, m in enumerate(mels):
        y[b, :, :m.shape[1]] = m.to(device)
    spk = torch.tensor(speakers, device=device) if speakers is not None else None
    _, mu_y = model.align(x, x_len, y, y_len, spk)
    y_mask = sequence_mask(y_len, y.shape[-1])[:, None].float()
    out = decode(trained, mu_y, y_mask, y_len.cpu(), settings, device, bf16, [seed + b for b in range(len(mels))],
                 spk)
    return [out[b, :, :int(y_len[b])] for b in range(len(mels))]


def vocode_spoken(spoken: list[Spoken], vocoder: Trained | None, cfg: MelConfig, device, bf16: bool, seed: int = 0,
                  steps: int | None = None, consistency: int | None = None) -> None:
    """Each sentence's waveform (its `wav`), by the vocoder run (checked: the mel it expects), or by
    Griffin-Lim when there is none."""
    for i, sp in enumerate(spoken):
        check_vocoder_mel(sp.mel, cfg, f"the acoustic model's mel for {sp.text[:40]!r}", predicted=True)
        mel = clamp_to_range(sp.mel, cfg)
        if vocoder is None:
            sp.wav = griffin_lim(mel, cfg)
            continue
        v = vocoder.sections["vocode"]
        sp.wav = vocode(vocoder, mel, steps or v.steps, device, bf16, torch.Generator().manual_seed(seed + i),
                        sampler=v.sampler, chunk_frames=v.chunk_frames, overlap=v.overlap_frames,
                        consistency=v.consistency if consistency is None else consistency, eta=v.eta_or_none())


def join(waves: list[torch.Tensor], pause_samples: int) -> torch.Tensor:
    gap = torch.zeros(1, pause_samples)
    parts = []
    for k, w in enumerate(waves):
        parts += ([gap] if k else []) + [w.reshape(1, -1)]
    return torch.cat(parts, 1)


def say_output(texts: int) -> OutputSpec:
    return OutputSpec((".wav",), folder=True, why="one WAV for everything, or a folder/ for one WAV per line")


def check_texts(tts_dir, sections: dict, texts: list[str]) -> list[list[str]]:
    """Every text normalised into sentences before any weights load: an unreadable character or a text
    with nothing to say is one message now."""
    per_text = [split_sentences(normalize(t, sections["text"].unknown)) for t in texts]
    empty = [t for t, s in zip(texts, per_text) if not s]
    if empty:
        raise UserError(f"nothing to say in {empty[0][:60]!r}: give text with words in it")
    return per_text


def speak(tts: Trained, tts_dir, vocoder: Trained | None, texts: list[str], settings, device, bf16: bool,
          speaker: str | None = None, vocoder_steps: int | None = None, consistency: int | None = None):
    """Texts (each one or more sentences) -> per text, its Spoken sentences with waveforms."""
    front = front_end(tts_dir, tts.sections)
    spk = speaker_id(tts_dir, tts.sections, speaker)
    per_text = check_texts(tts_dir, tts.sections, texts)
    flat = [s for ss in per_text for s in ss]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoded = front.encode(flat)
    for w in caught:
        print(f"note: {w.message}")
    spoken = synthesize(tts, encoded, settings, device, bf16, spk)
    cfg = mel_config(vocoder.sections) if vocoder is not None else tts_mel_config(tts.sections["data"])
    vocode_spoken(spoken, vocoder, cfg, device, bf16, settings.seed, vocoder_steps, consistency)
    out, k = [], 0
    for ss in per_text:
        out.append(spoken[k:k + len(ss)])
        k += len(ss)
    return out


def write_speech(groups: list[list[Spoken]], out: str, sample_rate: int, pause: float, stem: str = "line") -> list[str]:
    """One WAV of everything at `out`, or (out ending in /) one WAV per group: out/<stem>_0001.wav ..."""
    pause_samples = int(pause * sample_rate)
    if not out.endswith("/"):
        write_wav(out, join([sp.wav for g in groups for sp in g], pause_samples), sample_rate)
        return [out]
    written = []
    for n, g in enumerate(groups, 1):
        path = Path(out) / f"{stem}_{n:04d}.wav"
        write_wav(path, join([sp.wav for sp in g], pause_samples), sample_rate)
        written.append(str(path))
    return written


def run_say(tts_ref, voc_ref, texts: list[str], out: str, options, device, bf16: bool) -> list[str]:
    """`multidiff say`: load both runs (their configs already checked against each other), speak, write."""
    tts, vocoder = tts_ref.load(), voc_ref.load()
    base = tts.sections["sample"]
    settings = dataclasses.replace(base, **{k: v for k, v in (("steps", options.steps), ("speed", options.speed),
                                                              ("seed", options.seed)) if v is not None})
    v = tts.sections.get("vocoder")  # the run's own vocoder settings, where the command line gives none
    steps = options.vocoder_steps or (v.steps if v is not None and v.steps else None)
    consistency = options.consistency if options.consistency is not None else (
        v.consistency if v is not None and v.consistency >= 0 else None)
    groups = speak(tts, tts_ref.run_dir, vocoder, texts, settings, device, bf16, options.speaker, steps, consistency)
    sr = vocoder.sections["data"].sample_rate
    if options.text is not None and out.endswith("/"):  # --text into a folder: one WAV per sentence
        groups = [[sp] for sp in groups[0]]
    written = write_speech(groups, out, sr, settings.pause, "sentence" if options.text is not None else "line")
    seconds = sum(sp.wav.shape[-1] for g in groups for sp in g) / sr
    print(f"said {sum(len(g) for g in groups)} sentence(s), {seconds:.2f} s of speech (from {tts.checkpoint.name}, "
          f"vocoder {voc_ref.run_dir})")
    return written
