"""The acoustic model of speech synthesis (text -> mel): encoder, duration predictor, monotonic
alignment search, and a diffusion / flow-matching mel decoder on the shared core."""
from .alignment import generate_path, monotonic_alignment, sequence_mask
from .model import TTSModel, TTSModelConfig

__all__ = ["TTSModel", "TTSModelConfig", "generate_path", "monotonic_alignment", "sequence_mask"]
