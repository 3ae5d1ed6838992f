"""Small helpers shared by every modality: atomic file writes, JSON files, .npy files read safely."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

NPY_MAGIC = b"\x93NUMPY"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, so a
    kill never leaves a half-written file (and never destroys the previous version)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path):
    return json.loads(Path(path).read_text())


def read_npy(path, what: str = "array") -> np.ndarray:
    """A numeric array from a NumPy .npy file, never unpickled. Anything else -- a text file renamed
    .npy, an empty or cut-off file, an array of Python objects -- is one UserError naming the file
    (numpy's own message would suggest loading it "unsafely", which a user's file never is)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} '{p}' not found: check the path")
    with open(p, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    fix = "save a numeric array with numpy.save"
    if head != NPY_MAGIC:
        raise UserError(f"{what} '{p}' is not a NumPy .npy file ({'it is empty' if not head else 'no .npy header'}): "
                        f"{fix}")
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise UserError(f"{what} '{p}' cannot be read as a numeric array (cut off, damaged, or holding Python "
                        f"objects): {fix}") from None
    if a.dtype.kind not in "biuf":
        raise UserError(f"{what} '{p}' holds {a.dtype} values, not numbers: {fix}")
    return a.astype(a.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only


ADDED_KEY = "identity_omits_default"


def added_key(default):
    """A config dataclass field for a key added after runs already existed: at its default it is
    left out of a run's identity (train.config.to_toml(..., identity=True): the stage and checkpoint
    hashes), so runs made before the key existed still skip their finished stages and still resume.
    A list default is copied for each instance."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={ADDED_KEY: True})
    return dataclasses.field(default=default, metadata={ADDED_KEY: True})
