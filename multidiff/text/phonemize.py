"""Phonemes from espeak-ng (the binary that .ci/setup.sh installs): IPA with stress marks (ˈ ˌ) and
length marks, words separated by spaces, the pause punctuation of the normalised text kept in place.

    Phonemizer("en-us")(["Hello world, this is multidiff."]) -> ["həlˈoʊ wˈɜːld, ðɪs ɪz mˈʌltidˌɪf."]

espeak-ng starts in ~20 ms and drops punctuation, so the text is cut at its pause marks and every
word run becomes one line of a single espeak-ng call for many texts at once (it reads stdin line by
line and writes one line per line; runs are kept under 300 characters, since espeak-ng splits longer
clauses). The line count is checked; on a mismatch the runs are phonemized one call each. Results
are cached in memory per (language, run), so a corpus' repeated phrases cost nothing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ..errors import UserError
from .normalize import PAUSES

MAX_RUN = 300      # characters per espeak-ng line: it splits clauses of ~700 characters into two lines
BATCH = 2000       # lines per espeak-ng call
_PIECES = re.compile(f"([{re.escape(PAUSES)}]+)")
_LANG_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")  # espeak-ng's "(fr)" around a foreign word


class EspeakError(UserError):
    pass


def find_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakError("espeak-ng is not installed (not found on PATH); the speech front end needs it for "
                          "phonemes. Install it: sudo apt-get install espeak-ng (Debian/Ubuntu; brew install "
                          "espeak-ng on macOS), or run bash .ci/setup.sh")
    return exe


def _chunks(words: str) -> list[str]:
    """A run of words cut at spaces into lines of at most MAX_RUN characters."""
    out, line = [], ""
    for w in words.split():
        if line and len(line) + 1 + len(w) > MAX_RUN:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return out + [line] if line else out


def _clean(ipa: str) -> str:
    return " ".join(_LANG_SWITCH.sub("", ipa).split())


class Phonemizer:
    """Normalised texts -> phoneme strings with espeak-ng's `language` voice (e.g. en-us, en-gb)."""

    def __init__(self, language: str = "en-us", workers: int | None = None):
        self.language, self.exe = language, find_espeak()
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.cache: dict[str, str] = {}
        self._call(["hello"])  # a wrong voice is named now, not halfway through a corpus

    def _call(self, lines: list[str]) -> list[str]:
        r = subprocess.run([self.exe, "-q", "--ipa", "-v", self.language], input="\n".join(lines) + "\n",
                           capture_output=True, text=True, encoding="utf-8")
        if r.returncode != 0:
            msg = r.stderr.strip().rstrip(".") or f"exit status {r.returncode}"
            raise EspeakError(f"espeak-ng failed with voice '{self.language}': {msg}. See espeak-ng --voices=en "
                              "for the voices it has, and set text.language to one of them")
        out = r.stdout.split("\n")[:-1] if r.stdout.endswith("\n") else r.stdout.split("\n")
        if len(out) != len(lines):  # espeak-ng split or merged a line: one call per line instead
            if len(lines) == 1:
                return [" ".join(out)]
            return [self._call([ln])[0] for ln in lines]
        return out

    def _lookup(self, runs: list[str]) -> None:
        todo = sorted({r for r in runs if r not in self.cache})
        if not todo:
            return
        batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
        with ThreadPoolExecutor(self.workers) as pool:
            for batch, out in zip(batches, pool.map(self._call, batches)):
                self.cache.update((r, _clean(o)) for r, o in zip(batch, out))

    def __call__(self, texts: list[str]) -> list[str]:
        pieces = [[p for p in _PIECES.split(t) if p.strip()] for t in texts]
        runs = [c for ps in pieces for p in ps if p[0] not in PAUSES for c in _chunks(p)]
        self._lookup(runs)
        out = []
        for ps in pieces:
            s = ""
            for p in ps:
                if p[0] in PAUSES:
                    s += p.strip()
                    continue
                ipa = " ".join(x for x in (self.cache[c] for c in _chunks(p)) if x)
                if ipa:
                    s += (" " if s else "") + ipa
            out.append(s)
        return out
