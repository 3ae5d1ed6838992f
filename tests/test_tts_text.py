"""The text front end of speech synthesis: normalisation, espeak-ng phonemes, the symbol table,
unknown characters."""
import json
import warnings

import pytest

from multidiff.text import FrontEnd, Phonemizer, SymbolTable, TextConfig, UnknownCharacter, normalize
from multidiff.text.normalize import cardinal, ordinal, split_sentences, year_or_number
from multidiff.text.phonemize import EspeakError, MAX_RUN
from multidiff.text.symbols import INVENTORY


@pytest.mark.parametrize("text, said", [
    ("Hello world, this is multidiff.", "Hello world, this is multidiff."),
    ("Dr. Smith paid $3.50 on May 1st, 1999 -- 12% more!",
     "doctor Smith paid three dollars, fifty cents on May first, nineteen ninety-nine, twelve percent more!"),
    ("In 2005, 1,234 people came; 2000 left.",
     "In two thousand five, one thousand two hundred thirty-four people came; two thousand left."),
    ("It costs $5 million.", "It costs five million dollars."),
    ("£1 and €0.05", "one pound and five cents"),
    ("At 3:30 pm on the 21st and 102nd", "At three thirty p m on the twenty-first and one hundred second"),
    ("It was -5 degrees; pi is 3.14.", "It was minus five degrees; pi is three point one four."),
    ("Mr. and Mrs. Jones vs. St. Louis", "mister and misess Jones versus saint Louis"),
    ("Café naïve “quoted” — text…", "Cafe naive quoted, text..."),
    ("rock & roll #1 (live)", "rock and roll number one, live"),
    ("He said: \"no\" (twice).", "He said: no, twice."),
    ("the year 1066, 1905 and 1900", "the year ten sixty-six, nineteen oh five and nineteen hundred"),
])
def test_normalizer(text, said):
    assert normalize(text) == said
    assert normalize(said) == said  # normalised text stays as it is


def test_numbers_in_words():
    assert cardinal(0) == "zero" and cardinal(15) == "fifteen" and cardinal(40) == "forty"
    assert cardinal(1234567) == "one million two hundred thirty-four thousand five hundred sixty-seven"
    assert [ordinal(n) for n in (1, 2, 3, 12, 21, 40, 100)] == ["first", "second", "third", "twelfth",
                                                                 "twenty-first", "fortieth", "one hundredth"]
    assert year_or_number(2009) == "two thousand nine" and year_or_number(3000) == "three thousand"


def test_sentences():
    assert split_sentences(normalize("One. Two? Three! 4")) == ["One.", "Two?", "Three!", "four"]
    assert split_sentences(normalize("... !")) == []


def test_unknown_characters_are_one_message_naming_them():
    with pytest.raises(UnknownCharacter) as e:
        normalize("Hello 你好 world")
    msg = str(e.value)
    assert "'你'" in msg and "U+4F60" in msg and "Remove it or spell it out" in msg
    with pytest.raises(UnknownCharacter, match="metadata.csv line 3: .*text.unknown"):
        normalize("a ☃ b", where="metadata.csv line 3: ")
    assert normalize("Hello 你好 world", unknown="drop") == "Hello world"  # the documented fallback


def test_phonemes_keep_punctuation_stress_and_word_boundaries():
    ph = Phonemizer("en-us")
    out = ph(["Hello world, this is multidiff.", "What?! Really... yes"])
    assert out[0].startswith("h") and out[0].count(" ") == 4 and "," in out[0] and out[0].endswith(".")
    assert "ˈ" in out[0]  # primary stress
    assert "?!" in out[1] and "..." in out[1]
    # batching many texts in one call gives what one call per text gives
    assert out == [ph([t])[0] for t in ["Hello world, this is multidiff.", "What?! Really... yes"]]
    assert set("".join(out)) <= set(INVENTORY)


def test_long_text_is_phonemized_in_pieces_espeak_keeps_whole():
    ph = Phonemizer("en-us")
    long = " ".join(["word"] * 200)  # espeak-ng alone splits a clause this long over two lines
    assert len(long) > 2 * MAX_RUN
    out = ph([long, "ok"])
    assert out[0].split() == [ph(["word"])[0]] * 200 and out[1] == ph(["ok"])[0]


def test_phonemizer_errors(monkeypatch):
    with pytest.raises(EspeakError, match="voice 'xx-nope'.*text.language"):
        Phonemizer("xx-nope")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EspeakError, match="apt-get install espeak-ng"):
        Phonemizer("en-us")


def test_symbol_table_round_trip_and_blanks(tmp_path):
    table = SymbolTable(add_blank=True)
    ids, dropped = table.encode("həlˈoʊ, wˈɜːld.")
    assert dropped == [] and ids[0::2] == [0] * (len(ids) // 2 + 1) and len(ids) == 2 * 15 + 1
    assert table.decode(ids) == "həlˈoʊ, wˈɜːld."
    table.save(tmp_path / "symbols.json")
    back = SymbolTable.load(tmp_path / "symbols.json")
    assert back.symbols == table.symbols and back.add_blank
    assert json.loads((tmp_path / "symbols.json").read_text())["symbols"][0] == "_"
    plain = SymbolTable(add_blank=False)
    assert plain.encode("ab")[0] == [plain.ids["a"], plain.ids["b"]]
    ids, dropped = plain.encode("a\u0298x\u4e00")  # a character the table lacks is left out and reported
    assert dropped == ["\u4e00"] and len(ids) == 3
    with pytest.raises(ValueError, match="symbols.json.*prepare stage"):
        SymbolTable.load(tmp_path / "nope" / "symbols.json")


def test_front_end_on_corpus_transcripts_and_the_unknown_phoneme_fallback():
    front = FrontEnd(TextConfig())
    # an espeak corpus line, and LJSpeech's raw column (numbers, abbreviations) and its normalised one
    texts = ["The birch canoe slid on the smooth planks.",
             "in 1858 Mr. Smith was fined £5,",
             "in eighteen fifty-eight mister Smith was fined five pounds,"]
    enc = front.encode(texts)
    assert enc[1].text == "in eighteen fifty-eight mister Smith was fined five pounds"
    assert enc[1].phonemes == enc[2].phonemes and enc[1].ids == enc[2].ids
    assert all(e.dropped == [] and len(e.ids) == 2 * len(e.phonemes) + 1 for e in enc)
    small = FrontEnd(TextConfig(), SymbolTable([s for s in INVENTORY if s != "ð"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = small.encode(["the smooth planks"])
    assert out[0].dropped and "'ð'" in str(caught[0].message)
