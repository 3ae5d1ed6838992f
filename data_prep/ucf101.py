"""Check a UCF-101 download and write the split lists that the "ucf101" video layout reads.

    python -m data_prep.ucf101 --root data/ucf101

Expected (the two official archives extracted into --root):
    ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi               13,320 videos, 101 classes (UCF101.rar)
    ROOT/ucfTrainTestlist/classInd.txt                        "1 ApplyEyeMakeup" ... (1-based)
    ROOT/ucfTrainTestlist/trainlist0{1,2,3}.txt               "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ROOT/ucfTrainTestlist/testlist0{1,2,3}.txt                "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
Written:
    ROOT/splits/{train,test}{1,2,3}.txt    "UCF-101/<Class>/<file>.avi<TAB><label 0..100>", paths relative to ROOT
    ROOT/splits/classes.txt                class names in label order
    ROOT/splits/report.json                what was checked: missing, corrupt, unlisted files

Every listed file must exist (a partial extraction is an error naming the missing files, unless
--allow-missing leaves them out). A sample of --probe videos (default 100, "all" for every one) is
decoded completely with PyAV; the corrupt ones are reported and left out of the lists. Idempotent:
the lists are rewritten only when their content changes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from tqdm.auto import tqdm

from multidiff.data.video import UCF101_SPLITS_URL, UCF101_VIDEOS_URL, VideoDataError, read_video
from multidiff.utils import write_text
from data_prep import PrepError, run_stage

LAYOUT = """expected layout:
    {root}/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi ...   (from UCF101.rar)
    {root}/ucfTrainTestlist/classInd.txt, trainlist01..03.txt, testlist01..03.txt   (from the splits zip)"""



def _how_to_get(root: Path) -> str:
    return (f"Download {UCF101_VIDEOS_URL} (6.5 GB) and {UCF101_SPLITS_URL}, and extract both into '{root}', e.g.: "
            f"cd {root} && unrar x UCF101.rar && unzip UCF101TrainTestSplits-RecognitionTask.zip\n"
            + LAYOUT.format(root=root))


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise PrepError(f"'{path}' is missing. {_how_to_get(path.parent.parent)}")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(no, line.split()) for no, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_lists(root: Path):
    """class names, and {(split, k): [(relative path under UCF-101, label)]} from ucfTrainTestlist/."""
    lists = root / "ucfTrainTestlist"
    ind = lists / "classInd.txt"
    classes = []
    for no, parts in _read_lines(ind):
        if len(parts) != 2 or parts[0] != str(len(classes) + 1):
            raise PrepError(f"'{ind}' line {no} should be '{len(classes) + 1} <ClassName>', got {' '.join(parts)!r}. "
                            f"Re-extract {UCF101_SPLITS_URL}")
        classes.append(parts[1])
    label_of = {c.lower(): i for i, c in enumerate(classes)}
    out = {}
    for split, stem in (("train", "trainlist"), ("test", "testlist")):
        for k in (1, 2, 3):
            f = lists / f"{stem}0{k}.txt"
            rows = []
            for no, parts in _read_lines(f):
                folder = parts[0].replace("\\", "/").split("/")[0].lower() if parts else ""
                bad = (not parts or len(parts) > 2 or folder not in label_of
                       or (len(parts) == 2 and parts[1] != str(label_of.get(folder, -2) + 1)))
                if bad:
                    raise PrepError(f"'{f}' line {no} should be '<Class>/<file>.avi{' <class number>' if split == 'train' else ''}' "
                                    f"with a class of classInd.txt, got {' '.join(parts)!r}. Re-extract {UCF101_SPLITS_URL}")
                rows.append((parts[0].replace("\\", "/"), label_of[folder]))
            out[split, k] = rows
    return classes, out


def prepare(root, probe: int | None = 100, seed: int = 0, allow_missing: bool = False, progress: bool = True) -> dict:
    """Check ROOT and write ROOT/splits/; returns the report. probe: how many videos to decode (None = all)."""
    root = Path(root).expanduser()
    videos = root / "UCF-101"
    if not videos.is_dir() or not (root / "ucfTrainTestlist").is_dir():
        hint = ""
        if root.name == "UCF-101" or any(root.glob("*/v_*.avi")):
            hint = f" ('{root}' looks like the UCF-101 folder itself: give its parent as --root.)"
        missing = " and ".join(f"'{p}'" for p in (videos, root / "ucfTrainTestlist") if not p.is_dir())
        raise PrepError(f"UCF-101 not found: {missing} missing.{hint} {_how_to_get(root)}")
    classes, lists = read_lists(root)

    on_disk = {}  # lower-case relative path -> real one (the lists and the archive differ in case in places)
    for dirpath, _, names in os.walk(videos):
        for n in names:
            rel = Path(dirpath, n).relative_to(videos).as_posix()
            on_disk[rel.lower()] = rel
    listed = sorted({rel for rows in lists.values() for rel, _ in rows})
    missing = [rel for rel in listed if rel.lower() not in on_disk]
    if missing and not allow_missing:
        raise PrepError(f"{len(missing)} of the {len(listed)} listed videos are missing under '{videos}', e.g. "
                        f"{', '.join(missing[:3])}: the download or the extraction is incomplete. Extract "
                        f"{UCF101_VIDEOS_URL} again, or pass --allow-missing to leave them out of the lists")
    present = [on_disk[rel.lower()] for rel in listed if rel.lower() in on_disk]
    unlisted = sorted(set(on_disk.values()) - set(present))

    sample = present if probe is None or probe >= len(present) else \
        sorted(random.Random(seed).sample(present, probe))
    corrupt = {}
    for rel in tqdm(sample, desc="probing videos", unit="video", disable=not progress or len(sample) < 20):
        try:
            read_video(videos / rel, 32, 1)
        except VideoDataError as e:
            corrupt[rel] = str(e)

    changed = write_if_changed(root / "splits" / "classes.txt", "".join(c + "\n" for c in classes))
    counts = {}
    for (split, k), rows in lists.items():
        keep = [(on_disk[rel.lower()], y) for rel, y in rows if rel.lower() in on_disk]
        keep = [(rel, y) for rel, y in keep if rel not in corrupt]
        counts[f"{split}{k}"] = len(keep)
        changed |= write_if_changed(root / "splits" / f"{split}{k}.txt",
                                    "".join(f"UCF-101/{rel}\t{y}\n" for rel, y in keep))
    report = {"root": str(root), "classes": len(classes), "listed": len(listed), "present": len(present),
              "missing": missing, "unlisted": unlisted, "probed": len(sample), "corrupt": corrupt,
              "lists": counts, "changed": changed}
    write_if_changed(root / "splits" / "report.json",
                     json.dumps({k: v for k, v in report.items() if k != "changed"}, indent=1) + "\n")
    return report


def write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.ucf101", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Downloads: {UCF101_VIDEOS_URL} and {UCF101_SPLITS_URL}")
    p.add_argument("--root", required=True, help="folder holding UCF-101/ and ucfTrainTestlist/")
    p.add_argument("--probe", default="100", help="videos to decode as a check: a number, or 'all' (default 100)")
    p.add_argument("--seed", type=int, default=0, help="which videos the probe picks")
    p.add_argument("--allow-missing", action="store_true", help="leave missing videos out instead of failing")
    a = p.parse_args(argv)
    if a.probe != "all" and not (a.probe.isdigit()):
        p.error(f"--probe takes a number >= 0 or 'all', got {a.probe!r}")
    r, status = run_stage(prepare, a.root, None if a.probe == "all" else int(a.probe), a.seed, a.allow_missing)
    if status:
        return status
    print(f"UCF-101 in {r['root']}: {r['classes']} classes, {r['present']}/{r['listed']} listed videos present, "
          f"{len(r['unlisted'])} unlisted; probed {r['probed']}, {len(r['corrupt'])} corrupt (left out)")
    for rel, why in list(r["corrupt"].items())[:10]:
        print(f"  corrupt: {rel}: {why}")
    for rel in r["missing"][:10]:
        print(f"  missing: {rel}")
    print("splits: " + ", ".join(f"{k} {v}" for k, v in r["lists"].items())
          + f" -> {Path(r['root']) / 'splits'} ({'written' if r['changed'] else 'up to date'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
