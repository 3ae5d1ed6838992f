"""Select SC09 (the ten spoken digits zero..nine) from a Speech Commands folder.

    python -m data_prep.sc09 --src data/speech_commands --out data/sc09

out/<word>/<speaker>_nohash_<n>.wav   symlinks to the source files (--mode copy copies them)
out/validation_list.txt               the source lists keeping only the digit words: the dev split
out/testing_list.txt                  ... and the eval split; train is every other clip
out/LICENSE                           the source's license (CC BY 4.0), when it has one

Idempotent: files already in place are kept, the lists are rewritten only when they change. The
audio layout "sc09" also reads the full Speech Commands folder directly; this script gives a
smaller folder to copy around and a place for the digit lists alone.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from multidiff.data.audio_layouts import SC09_WORDS, SPEECH_COMMANDS_URL
from multidiff.utils import atomic_path, write_text
from data_prep import PrepError, run_stage

LISTS = ("validation_list.txt", "testing_list.txt")



def check_source(src: Path) -> None:
    get = (f"Download {SPEECH_COMMANDS_URL} (2.3 GB) and extract it: mkdir -p {src} && curl -L "
           f"{SPEECH_COMMANDS_URL} | tar xz -C {src}")
    if not src.is_dir():
        raise PrepError(f"no Speech Commands folder at '{src}'. {get}")
    missing = [w for w in SC09_WORDS if not (src / w).is_dir()]
    if missing:
        raise PrepError(f"'{src}' is not a Speech Commands folder: it lacks the word folder(s) "
                        f"{', '.join(missing)}. {get}")
    for name in LISTS:
        if not (src / name).is_file():
            raise PrepError(f"'{src / name}' is missing (it defines SC09's dev/eval splits and comes with Speech "
                            f"Commands). {get}")


def place(source: Path, dest: Path, mode: str) -> bool:
    """Put one file in place; False when it already was."""
    if mode == "symlink":
        if dest.is_symlink() and os.readlink(dest) == str(source):
            return False
    elif dest.is_file() and not dest.is_symlink() and dest.stat().st_size == source.stat().st_size:
        return False
    with atomic_path(dest) as tmp:
        if mode == "symlink":
            tmp.unlink()
            tmp.symlink_to(source)
        else:
            shutil.copyfile(source, tmp)
    return True


def select(src: Path, out: Path, mode: str = "symlink") -> dict:
    check_source(src)
    src = src.resolve()
    counts, placed = {}, 0
    for w in SC09_WORDS:
        files = sorted(p for p in (src / w).iterdir() if p.suffix.lower() == ".wav" and not p.name.startswith("."))
        counts[w] = len(files)
        for f in files:
            placed += place(f, out / w / f.name, mode)
    lists = {}
    for name in LISTS:
        keep = [s.strip() for s in (src / name).read_text().splitlines() if s.strip().split("/", 1)[0] in SC09_WORDS]
        lists[name] = len(keep)
        text = "".join(k + "\n" for k in keep)
        if not (out / name).is_file() or (out / name).read_text() != text:
            write_text(out / name, text)
    if (src / "LICENSE").is_file():
        place(src / "LICENSE", out / "LICENSE", "copy")
    total = sum(counts.values())
    held = lists["validation_list.txt"] + lists["testing_list.txt"]
    print(f"sc09: {total} clips of {len(SC09_WORDS)} words (train {total - held}, dev {lists['validation_list.txt']}, "
          f"eval {lists['testing_list.txt']}); "
          + (f"{placed} {'linked' if mode == 'symlink' else 'copied'} into {out}" if placed
             else f"all already in {out}, skipping"))
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.sc09", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help=f"the extracted Speech Commands folder ({SPEECH_COMMANDS_URL})")
    p.add_argument("--out", required=True, help="the SC09 folder to write (data.root of an sc09 recipe)")
    p.add_argument("--mode", choices=("symlink", "copy"), default="symlink",
                   help="symlink the wavs (default) or copy them")
    a = p.parse_args(argv)
    return run_stage(select, Path(a.src).expanduser(), Path(a.out).expanduser(), a.mode)[1]


if __name__ == "__main__":
    sys.exit(main())
