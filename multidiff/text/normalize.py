"""Text normalisation for English speech synthesis: what a reader says for numbers, abbreviations,
symbols and punctuation, as plain words the phonemizer can read.

    normalize("Dr. Smith paid $3.50 on May 1st, 1999 -- 12% more!")
    -> "doctor Smith paid three dollars, fifty cents on May first, nineteen ninety-nine, twelve percent more!"

What is kept: letters, apostrophes and hyphens inside words, and the punctuation that makes a pause
(, . ! ? ; :), which the front end keeps as symbols of their own. Dashes and brackets become commas,
quotes are dropped, accented letters lose their accents (cafe). Numbers follow the rules of
LJSpeech's own normalised column (keithito/tacotron's cleaners): 1000 < n < 3000 is read as a year
(nineteen ninety-nine, two thousand five), ordinals, decimals, currency ($ £ €), percent, times
(3:30), signs.

Any other character (a CJK character, an emoji, a symbol with no common reading) is an
`UnknownCharacter` error naming it, where it is, and the fix -- or, with unknown="drop", it is
removed (the documented fallback for corpora, reported by the caller).
"""
from __future__ import annotations

import re
import unicodedata

from ..errors import UserError

UNKNOWN_POLICIES = ("error", "drop")
PAUSES = ",.!?;:"
ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'- ") | set(PAUSES)


class UnknownCharacter(UserError):
    """A character the front end cannot read; the message names it and the fix."""

    def __init__(self, char: str, text: str, where: str = ""):
        self.char = char
        at = text.find(char)
        context = text[max(0, at - 15):at + 16].replace("\n", " ")
        name = unicodedata.name(char, "unnamed")
        hint = ' (or set text.unknown = "drop")' if where else ""
        super().__init__(f"{where}cannot read the character {char!r} (U+{ord(char):04X} {name}) in "
                         f"'...{context}...': the English front end reads letters, digits, common symbols "
                         f"(& % $ £ € + = @ #) and punctuation. Remove it or spell it out in words"
                         f"{hint}")


# ---- numbers ----------------------------------------------------------------------------------------
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}


def cardinal(n: int) -> str:
    """0 <= n < 10**15 in words: 1234 -> 'one thousand two hundred thirty-four'."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" " + cardinal(n % 100) if n % 100 else "")
    for size, name in _SCALES:
        if n >= size:
            if n // size >= 1000 and size == 10**12:
                break  # too large to read sensibly: digit by digit below
            head, rest = divmod(n, size)
            return cardinal(head) + " " + name + (" " + cardinal(rest) if rest else "")
    return " ".join(_ONES[int(d)] for d in str(n))


def ordinal(n: int) -> str:
    words = cardinal(n)
    head, sep, last = words.rpartition(" ") if "-" not in words.rsplit(" ", 1)[-1] else words.rpartition("-")
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_or_number(n: int) -> str:
    """keithito/tacotron's rule, which LJSpeech's normalised text follows: 1000 < n < 3000 reads as a year."""
    if 1000 < n < 3000:
        if n == 2000:
            return "two thousand"
        if 2000 < n < 2010:
            return "two thousand " + cardinal(n % 100)
        if n % 100 == 0:
            return cardinal(n // 100) + " hundred"
        tail = cardinal(n % 100) if n % 100 >= 10 else "oh " + cardinal(n % 100)
        return cardinal(n // 100) + " " + tail
    return cardinal(n)


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), m.group(3)
    if scale:  # $5 million, $2.5 billion
        return f"{_number_text(amount)}{scale} {many}"
    whole, _, frac = amount.partition(".")
    units = int(whole or 0)
    cents = int((frac + "00")[:2]) if frac else 0
    parts = []
    if units or not cents:
        parts.append(f"{cardinal(units)} {one if units == 1 else many}")
    if cents:
        parts.append(f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return ", ".join(parts)


def _number_text(s: str) -> str:
    """'12' -> 'twelve', '3.14' -> 'three point one four', '1999' -> 'nineteen ninety-nine'."""
    whole, dot, frac = s.partition(".")
    words = year_or_number(int(whole)) if whole else "zero"
    return words + (" point " + _digits(frac) if dot and frac else "")


def _time(m: re.Match) -> str:
    h, mnt = int(m.group(1)), int(m.group(2))
    tail = "" if mnt == 0 else (" oh " + cardinal(mnt) if mnt < 10 else " " + cardinal(mnt))
    suffix = {"am": " a m", "pm": " p m"}.get((m.group(3) or "").strip().lower().replace(".", ""), "")
    return cardinal(h) + (tail or (" o'clock" if not suffix else "")) + suffix


_ABBREVIATIONS = [(re.compile(rf"\b{a}\.", re.IGNORECASE), w) for a, w in (
    ("mrs", "misess"), ("mr", "mister"), ("ms", "miz"), ("dr", "doctor"), ("drs", "doctors"), ("st", "saint"),
    ("co", "company"), ("jr", "junior"), ("sr", "senior"), ("maj", "major"), ("gen", "general"),
    ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
    ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"), ("prof", "professor"),
    ("mt", "mount"), ("vs", "versus"), ("etc", "et cetera"), ("approx", "approximately"), ("dept", "department"),
    ("inc", "incorporated"), ("e\\.g", "for example"), ("i\\.e", "that is"))]
_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "#": " number ", "/": " slash ",
            "°": " degrees ", "×": " times "}
_PUNCT_MAP = {"—": ", ", "–": ", ", "…": ".", "(": ", ", ")": ", ", "[": ", ", "]": ", ", "{": ", ",
              "}": ", ", "’": "'", "‘": "'", "`": "'", "´": "'", "“": "", "”": "", "„": "", "\"": "", "«": "",
              "»": "", "‹": "", "›": "", "¡": "", "¿": "", "*": " ", "_": " ", "~": " ", "|": ", ", "\\": " "}
_LETTERS = {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L",
            "đ": "d", "Đ": "D", "ð": "d", "þ": "th", "ı": "i"}


def normalize(text: str, unknown: str = "error", where: str = "") -> str:
    """`text` as words and pause punctuation (see the module docstring). `where` prefixes an
    UnknownCharacter's message (e.g. "metadata.csv line 12: ")."""
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown = {unknown!r} is not one of {UNKNOWN_POLICIES}")
    t = unicodedata.normalize("NFKC", text)
    for k, v in _LETTERS.items():
        t = t.replace(k, v)
    t = "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))  # cafe, naive
    t = re.sub(r"\s+", " ", t)
    for k, v in _PUNCT_MAP.items():
        t = t.replace(k, v)
    t = re.sub(r"\s-{1,3}\s|-{2,3}", ", ", t)                      # dashes are pauses
    for pattern, word in _ABBREVIATIONS:
        t = pattern.sub(word, t)
    t = re.sub(r"\bNo\.\s?(?=\d)", "number ", t)
    # numbers, most specific first
    t = re.sub(r"([$£€])\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(\s(?:thousand|million|billion|trillion))?\b",
               _money, t)
    t = re.sub(r"\b\d{1,3}(?:,\d{3})+\b", lambda m: cardinal(int(m.group(0).replace(",", ""))), t)  # 1,234: no year
    t = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: _number_text(m.group(1)) + " percent", t)
    t = re.sub(r"\b(\d{1,2}):(\d{2})(\s?(?:[ap]\.?m\.?)(?![a-z]))?", _time, t, flags=re.IGNORECASE)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal(int(m.group(1))), t, flags=re.IGNORECASE)
    t = re.sub(r"(?<![\w.])-(\d)", r"minus \1", t)
    t = re.sub(r"\d+(?:\.\d+)?", lambda m: " " + _number_text(m.group(0)) + " ", t)
    for k, v in _SYMBOLS.items():
        t = t.replace(k, v)
    bad = [c for c in t if c not in ALLOWED]
    if bad:
        if unknown == "error":
            raise UnknownCharacter(bad[0], text, where)
        t = "".join(c if c in ALLOWED else " " for c in t)
    # tidy: one space, no space before a pause, runs of pauses collapsed, no leading pause
    t = re.sub(r"\s+", " ", t)
    t = re.sub(r"\s+([,.!?;:])", r"\1", t)
    t = re.sub(r"([,;:])(?:[\s,;:]*[,;:])+", r"\1", t)            # ", ," -> ","
    t = re.sub(r",\s*([.!?])", r"\1", t)                           # ", ." -> "."
    t = re.sub(r"(?<=[,.!?;:])(?=[A-Za-z'])", " ", t)
    t = re.sub(r"(^|\s)['-]+(?=\s|$)", " ", t)                     # stray apostrophes and hyphens
    t = re.sub(r"[\s,;:]+$", "", re.sub(r"^[\s,.!?;:]+", "", t))
    return t.strip()


def split_sentences(text: str) -> list[str]:
    """Normalised text -> sentences (ending in . ! ?), each synthesised on its own."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if re.search(r"[A-Za-z]", p)]
