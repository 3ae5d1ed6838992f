"""Small helpers shared by every modality: atomic file writes, JSON files."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path


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


ADDED_KEY = "identity_omits_default"


def added_key(default):
    """A config dataclass field for a key added after runs already existed: at its default it is
    left out of a run's identity (train.config.to_toml(..., identity=True): the stage and checkpoint
    hashes), so runs made before the key existed still skip their finished stages and still resume.
    A list default is copied for each instance."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={ADDED_KEY: True})
    return dataclasses.field(default=default, metadata={ADDED_KEY: True})
