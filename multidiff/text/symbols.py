"""The symbol table: phoneme characters -> the ids the text encoder embeds.

One fixed inventory (the one VITS / Matcha-TTS use with espeak-ng: pad, pause punctuation, space,
Latin letters, the IPA letters and marks), so every run of this front end numbers symbols the same
way; the table a model was trained with is stored in its run (RUN/symbols.json) and read back from
there, so a later change to the inventory never reorders an old model's inputs.

`add_blank` puts the pad id between every two symbols (and at both ends), as Glow-TTS, VITS and
Matcha-TTS do: the alignment gets a place for transitions and the model a blank between phonemes.

A phoneme character the table lacks (a symbol espeak-ng emits for a language the inventory does not
cover) is the documented fallback: it is left out, and `encode` reports which ones were.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..utils import write_json

PAD = "_"
PUNCTUATION = ';:,.!?¡¿—…"«»“” '
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
IPA = ("ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'̩'ᵻ")
INVENTORY = [PAD] + list(PUNCTUATION) + list(LETTERS) + list(dict.fromkeys(IPA))
VERSION = 1


class SymbolTable:
    def __init__(self, symbols: list[str] = INVENTORY, add_blank: bool = True):
        if len(set(symbols)) != len(symbols):
            raise ValueError("a symbol table lists each symbol once")
        self.symbols, self.add_blank = list(symbols), add_blank
        self.ids = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, phonemes: str) -> tuple[list[int], list[str]]:
        """(ids, the characters left out because the table lacks them)."""
        ids, unknown = [], []
        for c in phonemes:
            if c in self.ids:
                ids.append(self.ids[c])
            else:
                unknown.append(c)
        if self.add_blank:
            blanks = [0] * (2 * len(ids) + 1)
            blanks[1::2] = ids
            ids = blanks
        return ids, unknown

    def decode(self, ids) -> str:
        return "".join(self.symbols[i] for i in ids if not (self.add_blank and i == 0))

    def save(self, path) -> None:
        write_json(path, {"version": VERSION, "add_blank": self.add_blank, "symbols": self.symbols})

    @classmethod
    def load(cls, path) -> "SymbolTable":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"'{p}' is missing: the symbol table of a speech run is written by its prepare stage; "
                            f"run `multidiff train` on the run's recipe again (it skips what is done)")
        d = json.loads(p.read_text(encoding="utf-8"))
        return cls(d["symbols"], d["add_blank"])


def unknown_note(unknown: list[str]) -> str:
    """The warning for phoneme characters left out (the fallback), naming them."""
    chars = sorted(set(unknown))
    return (f"left out {len(unknown)} phoneme character(s) the symbol table lacks: "
            f"{', '.join(f'{c!r} (U+{ord(c):04X})' for c in chars)}")
