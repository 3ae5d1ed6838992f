"""Data preparation stages, each runnable as `python -m data_prep.<name> --help` and called by the
recipes: espeak_corpus, ljspeech, sc09 (audio), moving_digits, ucf101 (video)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


class PrepError(RuntimeError):
    """A problem the user can fix; a stage's main prints it and exits with status 1."""


def run_stage(stage, *args):
    """(stage(*args), 0), or (None, 1) after printing a PrepError as one line on stderr: what each
    stage's main returns to the shell instead of a traceback."""
    try:
        return stage(*args), 0
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return None, 1


def check_output_folder(out: Path, options: dict) -> None:
    """A clip-writing stage's --out: new or empty, or made by this stage with the same `options` (its
    manifest.json says so: the stage then continues, skipping the clips already written); else one PrepError."""
    stamp = out / "manifest.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text()).get("options", {})
        if old != options:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in options.items() if old.get(k) != v)
            raise PrepError(f"'{out}' holds clips made with other options ({diff}): choose another --out, or "
                            f"delete '{out}' to rebuild it")
    elif out.is_dir() and any(out.iterdir()):
        raise PrepError(f"'{out}' is not empty and has no manifest.json: choose another --out, or empty it")
