"""Data preparation stages, each runnable as `python -m data_prep.<name> --help` and called by the
recipes: espeak_corpus, ljspeech, sc09 (audio), moving_digits, ucf101 (video)."""
from __future__ import annotations

import sys


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
