"""Where a command may write, checked before any model is loaded or any sample drawn: the user's inputs
and earlier outputs are never replaced silently, and a location that cannot be written is named at once
rather than after minutes of sampling.

A modality says what its writers produce (`OutputSpec`: file suffixes, and whether a folder of files);
`check_output` applies the same rules for every command:

  * an input of the command is never an output (paths are resolved, so ./a.png and a.png are the same);
  * an existing file, or a folder that already holds files, is replaced only with --overwrite;
  * a file's suffix says what is in it (--out x.jpg never gets PNG bytes);
  * the nearest existing folder on the way is writable (probed with a real temporary file).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

OVERWRITE = "--overwrite"


class OutputError(UserError):
    pass


@dataclass(frozen=True)
class OutputSpec:
    """What a writer produces at --out: one file with one of `suffixes` (the first is the usual one),
    and/or (`folder`) a folder of files, one per item. `why` explains the suffixes when one is refused."""
    suffixes: tuple[str, ...] = ()
    folder: bool = False
    why: str = ""


def names_folder(out: str) -> bool:
    """--out names a folder when it ends in a slash or already is one."""
    return out.endswith(("/", "\\")) or Path(out).is_dir()


def same_file(a, b) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_output(out: str, spec: OutputSpec | None, inputs=(), overwrite: bool = False) -> str:
    """Refuse an --out that would replace an input or (without --overwrite) earlier outputs, that names
    the wrong kind of thing, or that cannot be written. Returns --out, ending in "/" when it is a folder
    (a name without a suffix is a folder where the writer makes folders: `--out samples`). `spec` None:
    a writer that did not say what it writes -- any name, with the other checks."""
    path = Path(out).expanduser()
    if names_folder(out) or (spec is not None and spec.folder and not path.suffix):
        if spec is not None and not spec.folder:
            raise OutputError(f"--out '{out}' is a folder, but this writes one file: give a file name ending in "
                              f"{' or '.join(spec.suffixes)}")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise OutputError(f"--out '{out}' already holds files: pass {OVERWRITE} to write into it (files of the "
                              "same names are replaced), or give a new or empty folder")
        writable_folder(path)
        return str(path) + "/"
    if spec is not None and path.suffix.lower() not in spec.suffixes:
        why = f" ({spec.why})" if spec.why else ""
        if not spec.suffixes:
            raise OutputError(f"--out '{out}' names a file, but this writes a folder of files{why}: give a folder, "
                              f"e.g. '{path.with_suffix('')}/'")
        folder = " or a folder/ (one file per item)" if spec.folder else ""
        raise OutputError(f"--out '{out}': this writes {' / '.join(spec.suffixes)} files{why}; name it "
                          f"'{path.with_suffix(spec.suffixes[0]).name}'{folder}")
    check_target(path, inputs, overwrite)
    writable_folder(path.parent)
    return str(path)


def check_target(path, inputs=(), overwrite: bool = False) -> None:
    """One file about to be written: never one of `inputs`, and an existing one only with --overwrite."""
    path = Path(path)
    for given in inputs:
        if given and same_file(path, given):
            raise OutputError(f"'{path}' is an input of this command and is never overwritten: give another --out")
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder, not a file: give a file name, or remove the folder")
    if path.exists() and not overwrite:
        raise OutputError(f"'{path}' already exists: pass {OVERWRITE} to replace it, or give another --out")


def writable_folder(folder: Path) -> None:
    """The folder (or, where it does not exist yet, the nearest existing one above it, in which the writers
    will create it) accepts a new file: tried for real, since permissions alone miss read-only mounts."""
    probe = Path(folder).expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write into '{folder}': '{probe}' is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".multidiff-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write into '{probe}': {e.strerror}; choose an --out you can write to") from None
