"""The text front end of speech synthesis, text -> symbol ids: normalise (normalize.py), phonemize
with espeak-ng (phonemize.py), number the symbols (symbols.py). The [text] section of a tts recipe
configures it; a run keeps its symbol table in RUN/symbols.json."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from .normalize import UNKNOWN_POLICIES, normalize, split_sentences
from .phonemize import Phonemizer
from .symbols import SymbolTable, unknown_note


@dataclass
class TextConfig:
    """The [text] section."""
    language: str = "en-us"     # the espeak-ng voice whose phonemes are used (espeak-ng --voices=en)
    add_blank: bool = True      # a blank id between every two symbols (Glow-TTS / VITS / Matcha-TTS)
    unknown: str = "error"      # a character the normaliser cannot read: "error" (one message naming it) | "drop"

    def __post_init__(self):
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"text.unknown = {self.unknown!r} is not one of {UNKNOWN_POLICIES}")


@dataclass
class Encoded:
    text: str                   # the normalised text
    phonemes: str
    ids: list[int]
    dropped: list[str]          # phoneme characters the table lacks (left out)


class FrontEnd:
    def __init__(self, cfg: TextConfig, table: SymbolTable | None = None):
        self.cfg = cfg
        self.table = table or SymbolTable(add_blank=cfg.add_blank)
        self.phonemizer = Phonemizer(cfg.language)

    def normalize(self, text: str, where: str = "") -> str:
        return normalize(text, self.cfg.unknown, where)

    def encode(self, texts: list[str], where=None, warn: bool = True) -> list[Encoded]:
        """Texts (raw) -> normalised text, phonemes, ids. `where(i)` prefixes item i's error messages."""
        norm = [self.normalize(t, where(i) if where else "") for i, t in enumerate(texts)]
        out = []
        for t, ph in zip(norm, self.phonemizer(norm)):
            ids, dropped = self.table.encode(ph)
            out.append(Encoded(t, ph, ids, dropped))
        lost = [c for e in out for c in e.dropped]
        if lost and warn:
            warnings.warn(unknown_note(lost), stacklevel=2)
        return out

    def sentences(self, text: str) -> list[str]:
        """Raw text -> its normalised sentences (the units `multidiff say` synthesises)."""
        return split_sentences(self.normalize(text))
