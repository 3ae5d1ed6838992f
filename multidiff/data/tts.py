"""A speech corpus for text-to-speech: LJSpeech's layout (metadata.csv id|text|normalized text,
wavs/<id>.wav, splits/{train,dev,eval}.txt), as LJSpeech-1.1 and data_prep.espeak_corpus have it.

`prepare_corpus` reads it once into RUN/tts_data/: per split, the text's phoneme ids (the front end:
multidiff/text/) and the mel in the run's mel configuration, concatenated into one .npy (read back
memory-mapped), and a JSON list of the items; the symbol table goes to RUN/symbols.json and the
speakers (data.speaker_file) to RUN/speakers.json. `TTSDataset(run_dir, split)` serves
(ids, mel, speaker) from there.

An item is left out, and reported, when its clip is too long (data.max_seconds) or has fewer mel
frames than symbols (the alignment needs at least one frame per symbol).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..text import FrontEnd, TextConfig
from ..utils import atomic_path, read_json, write_json
from .audio import read_audio
from .audio_layouts import AudioDataError, find_clips, read_ljspeech_ids
from .mel import STYLES, MelConfig, mel_spectrogram

SPLITS = ("train", "dev", "eval")
DATA_DIR = "tts_data"
SYMBOLS_FILE, SPEAKERS_FILE = "symbols.json", "speakers.json"


@dataclass
class TTSData:
    """The [data] section of a tts recipe. The mel is the vocoder's: `multidiff say` refuses a vocoder
    whose mel configuration (style, rate, hop) differs."""
    layout: str = "ljspeech"        # metadata.csv + wavs/ (+ splits/): LJSpeech-1.1, data_prep.espeak_corpus
    root: str = ""
    sample_rate: int = 22050
    hop_length: int = 256
    mel: str = "lmnt"               # "lmnt" (DiffWave) | "hifigan"
    text_column: str = "normalized"  # metadata.csv's "normalized" (3rd) column where present, or "raw" (2nd)
    speaker_file: str = ""          # id|speaker|... per line, relative to root (the espeak corpus: utterances.csv)
    max_seconds: float = 15.0       # longer clips are left out
    max_items: int = 0              # per split, 0 = all

    def __post_init__(self):
        if self.layout != "ljspeech":
            raise ValueError(f"data.layout = {self.layout!r}: a tts corpus is in the 'ljspeech' layout "
                             "(metadata.csv + wavs/)")
        if self.mel not in STYLES:
            raise ValueError(f"data.mel = {self.mel!r} is not one of {STYLES}")
        if self.text_column not in ("normalized", "raw"):
            raise ValueError(f"data.text_column = {self.text_column!r} is not 'normalized' or 'raw'")
        for name in ("sample_rate", "hop_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1")


def tts_mel_config(d: TTSData) -> MelConfig:
    return MelConfig.preset(d.mel, sample_rate=d.sample_rate, hop_length=d.hop_length)


def read_transcripts(root: Path, column: str) -> dict[str, str]:
    """id -> text of metadata.csv (the normalized column where the row has one, with column = normalized)."""
    root, _ = read_ljspeech_ids(root)
    out = {}
    for line in (root / "metadata.csv").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        text = f[2] if column == "normalized" and len(f) > 2 and f[2].strip() else (f[1] if len(f) > 1 else "")
        out[f[0].strip()] = text.strip()
    return out


def read_speakers(root: Path, speaker_file: str) -> dict[str, str]:
    path = Path(root) / speaker_file
    if not path.is_file():
        raise AudioDataError(f"data.speaker_file: '{path}' not found: give a file of id|speaker lines relative to "
                             f"data.root (the espeak corpus writes utterances.csv), or set data.speaker_file = \"\"")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            f = line.split("|")
            if len(f) < 2:
                raise AudioDataError(f"'{path}' line {n} is not 'id|speaker|...': {line[:60]!r}")
            out[f[0].strip()] = f[1].strip()
    return out


def available_splits(root: Path) -> list[str]:
    root, _ = read_ljspeech_ids(root)
    return [s for s in SPLITS if (root / "splits" / f"{s}.txt").is_file()] or ["train"]


def prepare_corpus(run_dir: Path, d: TTSData, text: TextConfig, log=print) -> dict:
    """Phonemize and compute the mels of every split once (see the module docstring); returns a summary."""
    root = Path(d.root).expanduser()
    out_dir = Path(run_dir) / DATA_DIR
    cfg = tts_mel_config(d)
    front = FrontEnd(text)
    texts = read_transcripts(root, d.text_column)
    meta, _ = read_ljspeech_ids(root)
    speakers = read_speakers(meta, d.speaker_file) if d.speaker_file else {}
    splits = available_splits(root)
    if splits == ["train"]:
        log(f"[prepare] note: '{meta}' has no splits/ folder, so every clip trains and the evaluation reads training "
            f"clips; hold some out with python -m data_prep.ljspeech --root {meta} (then --force prepare)")
    summary, speaker_names = {}, []
    for split in splits:
        files, ids, _, _ = find_clips("ljspeech", root, split, d.sample_rate)
        if d.max_items:
            files, ids = files[:d.max_items], ids[:d.max_items]
        where = lambda i, ids=ids: f"'{meta / 'metadata.csv'}' ({ids[i]}): "  # noqa: E731
        encoded = front.encode([texts[i] for i in ids], where=where)
        if speakers:
            missing = [i for i in ids if i not in speakers]
            if missing:
                raise AudioDataError(f"'{meta / d.speaker_file}' names no speaker for {len(missing)} clip(s), "
                                     f"e.g. {missing[0]}: list every clip of metadata.csv")
            if split == "train":
                speaker_names = sorted({speakers[i] for i in ids})
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            mels = list(pool.map(lambda f: _mel(f[0], cfg, d), files))
        items, kept, skipped = [], [], []
        offset = 0
        for (path, _), i, enc, mel in zip(files, ids, encoded, mels):
            frames = mel.shape[1]
            if frames > d.max_seconds * d.sample_rate / d.hop_length:
                skipped.append(f"{i}: {frames * d.hop_length / d.sample_rate:.1f} s, longer than data.max_seconds")
                continue
            if frames < len(enc.ids):
                skipped.append(f"{i}: {frames} mel frames for {len(enc.ids)} symbols (too fast to align)")
                continue
            name = speakers.get(i, "")
            items.append({"id": i, "wav": str(path), "text": enc.text, "phonemes": enc.phonemes, "ids": enc.ids,
                          "speaker_name": name, "speaker": speaker_names.index(name) if name in speaker_names else -1,
                          "offset": offset, "frames": frames})
            kept.append(mel)
            offset += frames
        if not items:
            raise AudioDataError(f"no usable clip in the {split} split of '{root}' ({len(skipped)} left out, e.g. "
                                 f"{skipped[0] if skipped else 'none listed'})")
        with atomic_path(out_dir / f"{split}.npy") as tmp:
            np.save(tmp, np.concatenate(kept, 1).astype(np.float32), allow_pickle=False)
        write_json(out_dir / f"{split}.json", {"items": items, "mel": cfg.to_dict()})
        summary[split] = {"items": len(items), "skipped": skipped, "frames": offset}
        log(f"[prepare] {split}: {len(items)} utterances, {offset * d.hop_length / d.sample_rate / 60:.1f} min"
            + (f", {len(skipped)} left out (e.g. {skipped[0]})" if skipped else ""))
    front.table.save(Path(run_dir) / SYMBOLS_FILE)
    write_json(Path(run_dir) / SPEAKERS_FILE, {"speakers": speaker_names})
    summary["speakers"] = speaker_names
    return summary


def _mel(path, cfg: MelConfig, d: TTSData) -> np.ndarray:
    wav = read_audio(path, d.sample_rate)
    wav = wav[:, :wav.shape[1] // cfg.hop_length * cfg.hop_length]
    return mel_spectrogram(wav, cfg).numpy()


def read_speaker_names(run_dir) -> list[str]:
    p = Path(run_dir) / SPEAKERS_FILE
    return read_json(p)["speakers"] if p.is_file() else []


class TTSDataset(torch.utils.data.Dataset):
    """ds[i] -> (ids long [T_x], mel float32 [n_mels, T_y], speaker int); `items` the JSON records."""

    num_classes = 0

    def __init__(self, run_dir, split: str):
        base = Path(run_dir) / DATA_DIR
        if not (base / f"{split}.json").is_file():
            raise AudioDataError(f"the {split} split of this run's corpus was not prepared ('{base / split}.json' is "
                                 "missing): the corpus has no such split, or run the prepare stage")
        self.split = split
        self.items = read_json(base / f"{split}.json")["items"]
        self.mels = np.load(base / f"{split}.npy", mmap_mode="r", allow_pickle=False)
        self.speakers = read_speaker_names(run_dir)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        it = self.items[i]
        mel = torch.from_numpy(np.array(self.mels[:, it["offset"]:it["offset"] + it["frames"]]))
        return torch.tensor(it["ids"], dtype=torch.long), mel, int(it["speaker"])

    def mel_frames(self):
        """Every item's mel (for the normalisation statistics)."""
        for it in self.items:
            yield torch.from_numpy(np.array(self.mels[:, it["offset"]:it["offset"] + it["frames"]]))


def collate(items):
    """[(ids, mel, speaker)] -> ids [B, T_x] (0-padded), x_lengths, mel [B, n_mels, T_y] (0-padded), y_lengths,
    speakers."""
    x_len = torch.tensor([len(x) for x, _, _ in items])
    y_len = torch.tensor([m.shape[1] for _, m, _ in items])
    ids = torch.zeros(len(items), int(x_len.max()), dtype=torch.long)
    mel = torch.zeros(len(items), items[0][1].shape[0], int(y_len.max()))
    for b, (x, m, _) in enumerate(items):
        ids[b, :len(x)] = x
        mel[b, :, :m.shape[1]] = m
    return ids, x_len, mel, y_len, torch.tensor([s for _, _, s in items])
