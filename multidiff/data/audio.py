"""Audio datasets for vocoders and waveform diffusion: LJSpeech, any folder of wav/flac, SC09
(which files each layout holds: audio_layouts.py).

ds[i] -> (audio float32 [1, L] in [-1, 1], mel float32 [n_mels, L // hop], label int), the whole
clip, always the same tensors for the same index. Random crops are drawn per batch from the
trainer's seeded generator by `random_crop` / `collate` (or `ds.collate(items, generator)`), so a
run is reproducible and resumable without worker-side randomness.

Lengths: ljspeech and folder clips are trimmed to a whole number of hops (L == frames * hop, at
most hop - 1 samples lost), the pairing a vocoder learns (mel frame j <-> samples j*hop .. (j+1)*hop,
see mel.py). sc09 clips are exactly 1 s (sample_rate samples, zero-padded or cut), what
unconditional 1-second generation needs; their mel covers the first (L // hop) * hop samples.

Building a dataset checks every file: its header (rate, length) each time, its samples (decodable,
finite, not silent) once -- a file whose mel is in the cache has passed. Mels are cached as .npy
files named by a hash of (resolved path, mtime, size, mel config, clip rule), written atomically, so
an edited file or a new mel setting is recomputed and nothing is ever half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm.auto import tqdm

from ..utils import atomic_path
from .checks import check_count, warn_skipped
from .audio_layouts import (AUDIO_EXTENSIONS, LAYOUTS, LJSPEECH_URL, SC09_WORDS, SPEECH_COMMANDS_URL,  # noqa: F401
                            AudioDataError, find_clips, restrict_to_list, stable_hash)
from .mel import STYLES, MelConfig, mel_spectrogram, silence_mel

ON_ERROR = ("raise", "skip")
SPLITS = ("train", "dev", "eval")
_SPLIT_ALIASES = {"test": "eval", "valid": "dev", "validation": "dev"}
SILENT_PEAK = 1e-4  # about -80 dBFS, 3 steps of 16-bit audio: nothing a listener or a vocoder can use


class _BadAudio(Exception):
    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


@dataclass
class AudioData:
    """The [data] section of an audio recipe's config.toml."""
    layout: str = "ljspeech"     # "ljspeech" (metadata.csv + wavs/) | "folder" (wav/flac; subfolders = labels) | "sc09"
    root: str = ""
    sample_rate: int = 22050
    resample: bool = True        # False: a file at another rate is an error naming the file and its rate
    crop_frames: int = 62        # random crop length in mel frames for training (0 = whole clips)
    mel: str = "lmnt"            # "lmnt" (DiffWave) | "hifigan" (HiFi-GAN / Tacotron 2 log-mel)
    cache_dir: str = ""          # where mels are cached; "" = the directory the recipe passes (beside the run)
    on_error: str = "raise"      # "raise": first bad file stops the build; "skip": leave it out, warn with a summary
    min_seconds: float = 0.1     # shorter clips are bad files
    split: str = ""              # optional file of relative paths or ids (one a line) restricting the items
    max_items: int = 0           # 0 = all


# ---------------------------------------------------------------------------------------- reading

def read_audio(path, sample_rate: int, resample: bool = True, min_seconds: float = 0.0) -> torch.Tensor:
    """One audio file -> float32 [1, L] in [-1, 1] at `sample_rate`: channels averaged to mono,
    resampled with torchaudio when the file's rate differs (or refused when resample=False).
    Raises AudioDataError naming the file and the fix for a missing, undecodable, empty, non-finite,
    silent, too short or (resample=False) wrongly sampled file."""
    try:
        return _read(Path(path), sample_rate, resample, min_seconds)
    except _BadAudio as e:
        raise AudioDataError(f"cannot use audio file '{path}': {e.reason}. {e.fix}") from None


def _info(path: Path, sample_rate: int, resample: bool, min_seconds: float) -> sf._SoundFileInfo:
    """The checks a file's header answers (cheap: no samples decoded)."""
    if not path.is_file():
        raise _BadAudio("the file does not exist", "Check the path, or re-extract the dataset")
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise _BadAudio(f"not a readable audio file ({_reason(e)})", "Re-encode it as WAV or FLAC, or remove it")
    if info.frames <= 0:
        raise _BadAudio("it holds no samples (zero length)", "Remove it")
    if info.samplerate != sample_rate and not resample:
        raise _BadAudio(f"it is sampled at {info.samplerate} Hz, not the {sample_rate} Hz the data needs",
                        f"Resample it (e.g. sox IN.wav -r {sample_rate} OUT.wav) or set data.resample = true")
    if info.frames < min_seconds * info.samplerate:
        raise _BadAudio(f"it is {info.frames / info.samplerate:.3f} s long, shorter than the {min_seconds:g} s minimum",
                        "Remove it or lower data.min_seconds")
    return info


def _read(path: Path, sample_rate: int, resample: bool, min_seconds: float) -> torch.Tensor:
    info = _info(path, sample_rate, resample, min_seconds)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise _BadAudio(f"its samples cannot be decoded ({_reason(e)})", "Re-encode it as WAV or FLAC, or remove it")
    if data.shape[0] == 0:
        raise _BadAudio(f"no samples could be decoded (the header promises {info.frames})", "Remove it")
    x = torch.from_numpy(data.mean(axis=1, dtype=np.float32))[None]
    if not torch.isfinite(x).all():
        raise _BadAudio("it holds NaN or infinite samples", "Re-export it, or remove it")
    peak = x.abs().max().item()
    if peak < SILENT_PEAK:
        raise _BadAudio(f"it is silent (peak |x| = {peak:.1e})", "Remove it: a silent clip teaches nothing")
    if rate != sample_rate:
        x = torchaudio.functional.resample(x, rate, sample_rate)
    return x.clamp(-1, 1).contiguous()


def _reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return (msg.split(": ", 1)[-1] if msg.startswith("Error opening") else msg).rstrip(".")


# ---------------------------------------------------------------------------------------- dataset

class AudioDataset(torch.utils.data.Dataset):
    """ds[i] -> (audio [1, L], mel [n_mels, L // hop], label). `items` are (path, label), `ids` their
    ids (LJSpeech id, else the path relative to root), `skipped` the (path, reason) left out under
    on_error = "skip"; `clip_samples` is the fixed clip length (sc09) or 0."""

    def __init__(self, items, ids, class_names, skipped, mel_config: MelConfig, crop_frames: int,
                 resample: bool, clip_samples: int = 0, cache_dir: Path | None = None):
        self.items = [(str(p), int(y)) for p, y in items]
        self.ids, self.class_names, self.skipped = list(ids), list(class_names), list(skipped)
        self.mel_config, self.crop_frames, self.resample = mel_config, crop_frames, resample
        self.clip_samples, self.cache_dir = clip_samples, cache_dir

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} clips")
        path, label = self.items[i]
        try:
            audio = self._fit(_read(Path(path), self.sample_rate, self.resample, 0.0))
        except _BadAudio as e:
            raise AudioDataError(f"cannot use audio file '{path}' (it was fine when the dataset was built): "
                                 f"{e.reason}. {e.fix}, then rebuild the dataset") from None
        return audio, self._mel(Path(path), audio), label

    def collate(self, items, generator: torch.Generator):
        """A DataLoader batch (list of ds[i]) -> cropped, stacked tensors; see `collate`."""
        return collate(items, self.crop_frames, generator, self.mel_config)

    def _fit(self, audio: torch.Tensor) -> torch.Tensor:
        if self.clip_samples:
            n = self.clip_samples
            return audio[:, :n] if audio.shape[1] >= n else torch.nn.functional.pad(audio, (0, n - audio.shape[1]))
        return audio[:, :audio.shape[1] // self.mel_config.hop_length * self.mel_config.hop_length]

    def _cache_file(self, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        st = path.stat()
        key = json.dumps([str(path.resolve()), st.st_mtime_ns, st.st_size, self.mel_config.to_dict(),
                          self.clip_samples, 1])
        return self.cache_dir / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".npy")

    def _mel(self, path: Path, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.shape[1] // self.mel_config.hop_length
        cache = self._cache_file(path)
        if cache is not None and cache.is_file():
            try:
                mel = np.load(cache, allow_pickle=False)
                if mel.shape == (self.mel_config.n_mels, frames) and mel.dtype == np.float32:
                    return torch.from_numpy(mel)
            except (ValueError, OSError, EOFError):
                pass  # unreadable cache entry: recompute and overwrite it
        mel = mel_spectrogram(audio, self.mel_config)
        if cache is not None:
            _save_npy(cache, mel.numpy())
        return mel

    def _check(self, path: Path, min_seconds: float) -> None:
        """Raise _BadAudio if the file is unusable; cache its mel on the way (with no cache, the mel is
        computed per item in __getitem__)."""
        _info(path, self.sample_rate, self.resample, min_seconds)
        cache = self._cache_file(path)
        if cache is not None and cache.is_file():
            return  # its samples were checked when the cache entry was written
        audio = self._fit(_read(path, self.sample_rate, self.resample, min_seconds))
        if audio.shape[1] < self.mel_config.n_fft:
            raise _BadAudio(f"it is {audio.shape[1]} samples long after trimming to whole hops, shorter than "
                            f"one mel window ({self.mel_config.n_fft})", "Remove it or raise data.min_seconds")
        if cache is not None:
            self._mel(path, audio)


def write_wav(path, wav: torch.Tensor, sample_rate: int) -> None:
    """A waveform [.., L] in [-1, 1] as a 16-bit PCM WAV, written atomically."""
    with atomic_path(path) as tmp:
        sf.write(tmp, wav.reshape(-1).float().numpy(), sample_rate, subtype="PCM_16", format="WAV")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)


def random_crop(audio: torch.Tensor, mel: torch.Tensor, frames: int, generator: torch.Generator,
                mel_config: MelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """An aligned random crop: mel frames [j, j + frames) and samples [j * hop, (j + frames) * hop),
    j uniform over the whole frames that fit (one draw from `generator`, also for short clips).
    A clip shorter than the crop starts at 0 and is padded with zeros (audio) and the mel of
    silence, which is what the mel of the zero padding is, away from the clip's edge."""
    hop, have = mel_config.hop_length, mel.shape[-1]
    start = int(torch.randint(0, max(have - frames, 0) + 1, (1,), generator=generator))
    if have >= frames:
        return audio[:, start * hop:(start + frames) * hop], mel[:, start:start + frames]
    audio = torch.nn.functional.pad(audio[:, :have * hop], (0, (frames - have) * hop))
    pad = silence_mel(mel_config).to(mel.dtype)[:, None].expand(-1, frames - have)
    return audio, torch.cat([mel, pad], dim=1)


def collate(items, frames: int, generator: torch.Generator, mel_config: MelConfig):
    """[(audio, mel, label)] -> (audio [B, 1, frames * hop], mel [B, n_mels, frames], labels long [B]),
    cropping item by item in order with `random_crop`. frames = 0 stacks whole clips (they must be
    of one length, e.g. SC09's 1 s clips)."""
    if frames:
        crops = [random_crop(a, m, frames, generator, mel_config) for a, m, _ in items]
    else:
        crops = [(a, m) for a, m, _ in items]
        if len({a.shape[-1] for a, _ in crops}) > 1:
            raise AudioDataError("clips of different lengths cannot be batched whole: set data.crop_frames > 0 "
                                 "(e.g. 62) or use a batch size of 1")
    labels = torch.tensor([int(y) for _, _, y in items], dtype=torch.long)
    return torch.stack([a for a, _ in crops]), torch.stack([m for _, m in crops]), labels


# ---------------------------------------------------------------------------------------- building

def build_audio_dataset(cfg: AudioData, split: str = "train", cache_dir=None) -> AudioDataset:
    """The clips of one split ("train" | "dev" | "eval"; "test" means "eval"), checked, mels cached in
    cfg.cache_dir, else in `cache_dir` (what a recipe passes), else not cached (computed per item)."""
    split = _check_config(cfg, split)
    root = Path(cfg.root).expanduser()
    files, ids, class_names, clip = find_clips(cfg.layout, root, split, cfg.sample_rate)
    if cfg.split:
        files, ids = restrict_to_list(files, ids, cfg.split, root)
    cache = cfg.cache_dir or cache_dir
    cache = Path(cache).expanduser() if cache else None
    mel_config = MelConfig.preset(cfg.mel, cfg.sample_rate)
    ds = AudioDataset([], [], class_names, [], mel_config, cfg.crop_frames, cfg.resample, clip, cache)
    order = list(range(len(files)))
    if cfg.max_items:
        order.sort(key=lambda i: (stable_hash(ids[i]), ids[i]))  # a subset spread over the classes
    good, skipped = _validate(ds, [files[i][0] for i in order], cfg)
    keep = sorted(order[k] for k in good)
    ds.items, ds.ids, ds.skipped = [files[i] for i in keep], [ids[i] for i in keep], skipped
    return ds


def _check_config(cfg: AudioData, split: str) -> str:
    def bad(msg):
        raise AudioDataError(f"[data] {msg}")

    if cfg.layout not in LAYOUTS:
        bad(f"unknown layout {cfg.layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if not cfg.root:
        bad(f"root is empty: set data.root to the {cfg.layout} folder")
    check_count(cfg, "sample_rate", 1, AudioDataError)
    check_count(cfg, "crop_frames", 0, AudioDataError)
    check_count(cfg, "max_items", 0, AudioDataError)
    if cfg.mel not in STYLES:
        bad(f"mel must be one of: {', '.join(STYLES)}; got {cfg.mel!r}")
    if cfg.on_error not in ON_ERROR:
        bad(f"on_error must be one of: {', '.join(ON_ERROR)}; got {cfg.on_error!r}")
    if not isinstance(cfg.resample, bool):
        bad(f"resample must be true or false, got {cfg.resample!r}")
    if isinstance(cfg.min_seconds, bool) or not isinstance(cfg.min_seconds, (int, float)) or cfg.min_seconds < 0:
        bad(f"min_seconds must be a number >= 0, got {cfg.min_seconds!r}")
    name = _SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise AudioDataError(f"split must be one of: {', '.join(SPLITS)} (or test = eval), got {split!r}")
    return name


def _validate(ds: AudioDataset, paths: list[Path], cfg: AudioData):
    """Check files in order until max_items good ones (or all); returns (indices of good, skipped)."""
    if ds.cache_dir is not None:
        ds.cache_dir.mkdir(parents=True, exist_ok=True)
    good, skipped = [], []
    want = cfg.max_items or len(paths)

    def problem(path):
        try:
            ds._check(path, cfg.min_seconds)
        except _BadAudio as e:
            return e
        return None
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool, \
            tqdm(total=want, desc="checking audio", unit="clip", disable=len(paths) < 200) as bar:
        for start in range(0, len(paths), 64):
            chunk = paths[start:start + 64]
            for k, err in enumerate(pool.map(problem, chunk), start):
                if err is None:
                    good.append(k)
                    bar.update()
                elif cfg.on_error == "raise":
                    raise AudioDataError(f"cannot use audio file '{paths[k]}': {err.reason}. {err.fix}, "
                                         f'or set data.on_error = "skip" to leave such files out')
                else:
                    skipped.append((str(paths[k]), err.reason))
                if len(good) == want:
                    break
            if len(good) == want:
                break
    warn_skipped(skipped, "unusable audio file(s)", stacklevel=3)
    if not good:
        raise AudioDataError(f"all {len(skipped)} audio files are unusable, e.g. '{skipped[0][0]}' ({skipped[0][1]})"
                             if skipped else "no audio files to use")
    return good, skipped
