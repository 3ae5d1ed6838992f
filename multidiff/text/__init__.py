"""The text front end of speech synthesis: normalisation, espeak-ng phonemes, the symbol table."""
from .frontend import Encoded, FrontEnd, TextConfig
from .normalize import UnknownCharacter, normalize, split_sentences
from .phonemize import Phonemizer
from .symbols import SymbolTable

__all__ = ["Encoded", "FrontEnd", "TextConfig", "UnknownCharacter", "normalize", "split_sentences", "Phonemizer",
           "SymbolTable"]
