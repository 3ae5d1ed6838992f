"""Where the clips of each audio layout are and which split each belongs to: LJSpeech
(metadata.csv + wavs/ + splits/), any folder of wav/flac (class subfolders = labels), SC09 (Speech
Commands' digit words with its validation/testing lists). Reading, checking and caching the audio
itself is data/audio.py's job; this module only lists files, with the fix in every error."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

LAYOUTS = ("ljspeech", "folder", "sc09")
AUDIO_EXTENSIONS = (".wav", ".flac")
SC09_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LJSPEECH_URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"


class AudioDataError(ValueError):
    """A problem with the user's audio data or [data] config, with the file and the fix in the message."""


def stable_hash(s: str) -> int:
    """A hash that is the same in every process (Python's hash() is salted per run)."""
    return int.from_bytes(hashlib.sha1(s.encode()).digest()[:4], "big")


def _read_list(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def restrict_to_list(files, ids, split_file: str, root: Path):
    """Keep the clips named in data.split's file (relative paths or ids, with or without extension)."""
    p = Path(split_file).expanduser()
    p = p if p.is_absolute() or p.is_file() else root / p
    if not p.is_file():
        raise AudioDataError(f"[data] split file '{split_file}' not found (looked in the working directory and in "
                             f"'{root}'): give a file of relative paths or ids, one a line, or set data.split = \"\"")
    wanted = {w.removeprefix("./") for w in _read_list(p)}

    def names(k):
        rel = Path(os.path.relpath(files[k][0], root)).as_posix()
        return {ids[k], ids[k].rsplit(".", 1)[0], rel, rel.rsplit(".", 1)[0]}
    keep = [k for k in range(len(ids)) if names(k) & wanted]
    if not keep:
        raise AudioDataError(f"none of the {len(ids)} clips of this split is listed in '{p}' (e.g. '{ids[0]}'): "
                             f"list relative paths or ids, one a line")
    return [files[k] for k in keep], [ids[k] for k in keep]


def find_clips(layout: str, root: Path, split: str, sample_rate: int):
    """-> (files [(path, label)], ids, class_names, clip) of one split of one layout; clip = the exact
    length in samples every clip is cut or padded to (0 = whole files)."""
    return {"ljspeech": _ljspeech, "folder": _folder, "sc09": _sc09}[layout](root, split, sample_rate)


def read_ljspeech_ids(root: Path, point_at: str = "data.root") -> tuple[Path, list[str]]:
    """(the LJSpeech folder, the clip ids of its metadata.csv in order). root may be the folder or
    its parent; `point_at` names what the user sets to it (data.root, or data_prep's --root)."""
    if not (root / "metadata.csv").is_file() and (root / "LJSpeech-1.1" / "metadata.csv").is_file():
        root = root / "LJSpeech-1.1"
    meta = root / "metadata.csv"
    if not meta.is_file() or not (root / "wavs").is_dir():
        raise AudioDataError(
            f"LJSpeech not found: expected '{meta}' and the folder '{root / 'wavs'}'. Download {LJSPEECH_URL} "
            f"(2.6 GB) and extract it, e.g.: mkdir -p data && curl -L {LJSPEECH_URL} | tar xj -C data "
            f"(then {point_at} = data/LJSpeech-1.1)")
    ids = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if "|" not in line or not line.split("|", 1)[0].strip():
            raise AudioDataError(f"'{meta}' line {n} is not 'id|text|normalized text': {line[:80]!r}. "
                                 f"Re-download {LJSPEECH_URL} and extract it again")
        ids.append(line.split("|", 1)[0].strip())
    if not ids:
        raise AudioDataError(f"'{meta}' is empty. Re-download {LJSPEECH_URL} and extract it again")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise AudioDataError(f"'{meta}' lists id(s) more than once: {', '.join(dup[:5])}. Keep one row per clip")
    return root, ids


def _ljspeech(root: Path, split: str, sample_rate: int):
    """root/metadata.csv (id|text|normalized text) + root/wavs/<id>.wav; splits from root/splits/<split>.txt
    (data_prep.ljspeech writes them), or every clip is "train" when there are none."""
    root, ids = read_ljspeech_ids(root)
    meta = root / "metadata.csv"
    split_file = root / "splits" / f"{split}.txt"
    if split_file.is_file():
        known = set(ids)
        listed = _read_list(split_file)
        unknown = [i for i in listed if i not in known]
        if unknown:
            raise AudioDataError(f"'{split_file}' lists {len(unknown)} id(s) not in '{meta}', e.g. '{unknown[0]}': "
                                 f"rewrite the splits with python -m data_prep.ljspeech --root {root}")
        ids = listed
    elif split != "train":
        raise AudioDataError(f"no '{split_file}': the {split} split of an LJSpeech folder is written by "
                             f"python -m data_prep.ljspeech --root {root}")
    return [(root / "wavs" / f"{i}.wav", 0) for i in ids], ids, [root.resolve().name or "ljspeech"], 0


def _is_audio(p: Path) -> bool:
    return p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")


def _audio_below(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(dirpath, n) for n in sorted(names) if _is_audio(Path(n))]
    return out


def _folder(root: Path, split: str, sample_rate: int):
    """Audio files directly in root (one class) or in class subfolders (sorted names = labels 0..).
    Splits: root/splits/<split>.txt (relative paths) if present, else by hashing each relative path:
    ~5% "eval", ~5% "dev", the rest "train" (adding files never moves one across splits)."""
    if not root.is_dir():
        raise AudioDataError(f"audio folder '{root}' does not exist or is not a folder: set data.root to it")
    loose = sorted(p for p in root.iterdir() if p.is_file() and _is_audio(p))
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _audio_below(d))
    if loose and classes:
        raise AudioDataError(f"'{root}' mixes {len(loose)} loose audio files (e.g. '{loose[0].name}') with class "
                             f"subfolders ({', '.join(classes[:5])}): move the loose files into a subfolder")
    files = [(p, 0) for p in loose] if not classes else \
        [(p, y) for y, c in enumerate(classes) for p in _audio_below(root / c)]
    if not files:
        raise AudioDataError(f"no audio in '{root}': the folder layout reads {', '.join(AUDIO_EXTENSIONS)} files, "
                             f"directly in the folder (one class) or in class subfolders")
    ids = [p.relative_to(root).as_posix() for p, _ in files]
    split_file = root / "splits" / f"{split}.txt"
    if split_file.is_file():
        wanted = set(_read_list(split_file))
        keep = [k for k, i in enumerate(ids) if i in wanted]
    else:
        slot = {"eval": 0, "dev": 1}.get(split)
        keep = [k for k, i in enumerate(ids) if (stable_hash(i) % 20 == slot if slot is not None else stable_hash(i) % 20 >= 2)]
    if not keep:
        raise AudioDataError(f"none of the {len(ids)} audio files in '{root}' is in the {split} split "
                             f"({'listed in ' + str(split_file) if split_file.is_file() else 'chosen by hashing paths'}"
                             f"): add files, or write root/splits/{split}.txt")
    return [files[k] for k in keep], [ids[k] for k in keep], classes or [root.resolve().name or "audio"], 0


def _sc09(root: Path, split: str, sample_rate: int):
    """Speech Commands' ten digit words: root/<word>/<speaker>_nohash_<n>.wav; validation_list.txt
    ("dev") and testing_list.txt ("eval") in root, "train" is the rest. Other words in the lists or
    in root are ignored, so the full Speech Commands folder works as root too."""
    have = [w for w in SC09_WORDS if (root / w).is_dir()]
    if len(have) < len(SC09_WORDS):
        missing = [w for w in SC09_WORDS if w not in have]
        raise AudioDataError(
            f"SC09 not found in '{root}': missing the word folder(s) {', '.join(missing)}. Download "
            f"{SPEECH_COMMANDS_URL} (2.3 GB), extract it (mkdir -p data/speech_commands && curl -L "
            f"{SPEECH_COMMANDS_URL} | tar xz -C data/speech_commands) and point data.root at it, or select the "
            f"digits with python -m data_prep.sc09 --src data/speech_commands --out data/sc09")
    lists = {}
    for name, file in (("dev", "validation_list.txt"), ("eval", "testing_list.txt")):
        if not (root / file).is_file():
            raise AudioDataError(f"'{root / file}' is missing: SC09's dev and eval splits are defined by "
                                 f"validation_list.txt and testing_list.txt, which come with Speech Commands "
                                 f"(data_prep.sc09 copies them)")
        lists[name] = {s for s in _read_list(root / file) if s.split("/", 1)[0] in SC09_WORDS}
    files, ids = [], []
    for y, w in enumerate(SC09_WORDS):
        for p in _audio_below(root / w):
            rel = p.relative_to(root).as_posix()
            where = "dev" if rel in lists["dev"] else "eval" if rel in lists["eval"] else "train"
            if where == split:
                files.append((p, y))
                ids.append(rel)
    if not files:
        raise AudioDataError(f"the {split} split of '{root}' is empty: check validation_list.txt and testing_list.txt")
    return files, ids, list(SC09_WORDS), sample_rate  # clips of exactly one second
