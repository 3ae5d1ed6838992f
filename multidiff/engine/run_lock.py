"""One `multidiff train` per run directory at a time: RUN/.lock, held with flock and naming its holder.

The kernel drops an flock when its process dies, however it dies, so a lock file left by a killed run
(with that run's PID still written in it) blocks nothing: there is no stale state to clean up by hand.
Two runs in one directory would interleave their checkpoints, and a second one prunes the first's
half-written checkpoint as a leftover of a crash.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import UserError

LOCK_FILE = ".lock"


class RunLocked(UserError):
    pass


@contextlib.contextmanager
def run_lock(run_dir, main: bool = True):
    """Hold RUN/.lock while the body runs; refuse at once (no waiting) when another process holds it.
    A run directory this call created is removed again if the body leaves nothing in it but the lock.
    Only the main process of a distributed run takes it (`main`): the others are the same run."""
    if not main:
        yield None
        return
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out '{run_dir}' is a file, not a folder: give a folder for the run")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(f"'{run_dir}' is in use by another `multidiff train` (PID {holder}, holding "
                            f"{path}): wait for it to finish, or give another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: the PID no longer describes a holder
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                path.unlink()     # a refused first train leaves no folder behind
                run_dir.rmdir()
    finally:
        os.close(fd)  # closing the descriptor releases the flock
