"""Check a downloaded LJSpeech-1.1 folder, write its splits, precompute its mels.

    python -m data_prep.ljspeech --root data/LJSpeech-1.1

Stage 1, check + splits: every metadata.csv row (id|text|normalized text) has its wavs/<id>.wav,
22050 Hz mono 16-bit; then root/splits/{train,dev,eval}.txt, one id a line, in metadata order:
the last --holdout ids (500) are held out, the first half of them "dev", the second half "eval",
the rest "train". Skipped when the split files are already there and cover metadata.csv (a corpus
from data_prep.espeak_corpus keeps its own speaker-aware splits this way).
Stage 2, mels: every clip's mel computed into --cache-dir (root/mel_cache) by the same code and
cache naming the training data loader uses, so training starts without a feature pass. Clips
already cached are skipped.

Also works on any corpus in LJSpeech's layout (e.g. one from data_prep.espeak_corpus).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf

from multidiff.data.audio import AudioData, AudioDataError, build_audio_dataset
from multidiff.data.audio_layouts import LJSPEECH_URL, read_ljspeech_ids
from multidiff.data.mel import STYLES
from multidiff.utils import write_text
from data_prep import PrepError, run_stage

SAMPLE_RATE = 22050
SPLITS = ("train", "dev", "eval")


def read_metadata(root: Path) -> tuple[Path, list[str]]:
    """(the LJSpeech folder, root itself or its LJSpeech-1.1 subfolder; its clip ids)."""
    try:
        return read_ljspeech_ids(root, point_at="--root")
    except AudioDataError as e:
        raise PrepError(str(e)) from None


def check_wavs(root: Path, ids: list[str]) -> None:
    problems = []
    for i in ids:
        wav = root / "wavs" / f"{i}.wav"
        if not wav.is_file():
            problems.append(f"{wav.name}: missing")
            continue
        try:
            info = sf.info(str(wav))
        except Exception as e:
            problems.append(f"{wav.name}: unreadable ({str(e).strip().splitlines()[-1]})")
            continue
        if (info.samplerate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16") or info.frames <= 0:
            problems.append(f"{wav.name}: {info.samplerate} Hz, {info.channels} channel(s), {info.subtype}, "
                            f"{info.frames} samples (want {SAMPLE_RATE} Hz mono PCM_16)")
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise PrepError(f"{len(problems)} of the {len(ids)} clips in '{root / 'wavs'}' are not usable: "
                        f"{'; '.join(problems[:5])}{more}. Re-extract {LJSPEECH_URL} (or fix or remove these "
                        f"rows from metadata.csv)")
    extra = {p.stem for p in (root / "wavs").glob("*.wav")} - set(ids)
    if extra:
        print(f"note: {len(extra)} wav file(s) in '{root / 'wavs'}' are not in metadata.csv and are ignored, "
              f"e.g. {sorted(extra)[0]}.wav")


def splits_ok(root: Path, ids: list[str]) -> dict | None:
    """The existing split lists if they are present, disjoint and cover metadata.csv exactly."""
    files = [root / "splits" / f"{s}.txt" for s in SPLITS]
    if not all(f.is_file() for f in files):
        return None
    lists = {s: [x.strip() for x in f.read_text().splitlines() if x.strip()] for s, f in zip(SPLITS, files)}
    listed = [i for s in SPLITS for i in lists[s]]
    return lists if sorted(listed) == sorted(ids) else None


def write_splits(root: Path, ids: list[str], holdout: int) -> dict:
    if not 2 <= holdout < len(ids):
        raise PrepError(f"--holdout {holdout} must be at least 2 and less than the {len(ids)} clips")
    held = ids[-holdout:]
    lists = {"train": ids[:-holdout], "dev": held[:holdout // 2], "eval": held[holdout // 2:]}
    for s in SPLITS:
        write_text(root / "splits" / f"{s}.txt", "".join(i + "\n" for i in lists[s]))
    return lists


def precompute_mels(root: Path, cache: Path, style: str) -> None:
    before = len(list(cache.glob("*.npy"))) if cache.is_dir() else 0
    total = 0
    try:
        for split in SPLITS:
            total += len(build_audio_dataset(AudioData(layout="ljspeech", root=str(root), mel=style,
                                                       cache_dir=str(cache), min_seconds=0.0), split))
    except AudioDataError as e:
        raise PrepError(str(e)) from None
    made = len(list(cache.glob("*.npy"))) - before
    if made:
        print(f"mels ({style}): computed {made}, {total} clips cached in {cache}")
    else:
        print(f"mels ({style}): all {total} clips already cached in {cache}, skipping")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.ljspeech", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the extracted LJSpeech-1.1 folder (metadata.csv, wavs/)")
    p.add_argument("--holdout", type=int, default=500,
                   help="last ids held out, half dev and half eval (default 500)")
    p.add_argument("--mel", default="lmnt", choices=STYLES + ("none",), help="mel style to precompute, or none")
    p.add_argument("--cache-dir", default="", help="where the mels go (default ROOT/mel_cache); set the "
                                                   "recipe's data.cache_dir to it")
    a = p.parse_args(argv)
    return run_stage(prepare, Path(a.root).expanduser(), a.holdout, a.mel, a.cache_dir)[1]


def prepare(root: Path, holdout: int, mel: str, cache_dir: str) -> None:
    """The stages in order, each skipped when its output is already there and valid."""
    root, ids = read_metadata(root)
    lists = splits_ok(root, ids)
    if lists:
        print(f"splits: present in {root / 'splits'}, skipping the check "
              f"(train {len(lists['train'])}, dev {len(lists['dev'])}, eval {len(lists['eval'])})")
    else:
        check_wavs(root, ids)
        lists = write_splits(root, ids, holdout)
        print(f"splits: checked {len(ids)} clips, wrote {root / 'splits'} "
              f"(train {len(lists['train'])}, dev {len(lists['dev'])}, eval {len(lists['eval'])})")
    if mel != "none":
        precompute_mels(root, Path(cache_dir).expanduser() if cache_dir else root / "mel_cache", mel)


if __name__ == "__main__":
    sys.exit(main())
