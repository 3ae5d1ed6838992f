"""Building blocks shared by the denoisers (2D U-Net, 3D video U-Net, DiffWave).

Every block takes [B, C, *spatial] with any number of spatial dims where the logic is
the same; run them under bf16 autocast with channels_last weights for speed on CPU.
"""
from .attention import SelfAttention
from .conditioning import LabelEmbedding, check_class_dropout, null_condition
from .embedding import TimestepEmbedding, timestep_embedding
from .layers import Downsample, Upsample, conv_nd, dropout, group_norm, zero_
from .norm import GroupNorm
from .resblock import ResBlock
from .temporal import TemporalAttention, TemporalConv

__all__ = ["timestep_embedding", "TimestepEmbedding", "ResBlock", "SelfAttention", "Downsample", "Upsample",
           "GroupNorm", "conv_nd", "dropout", "group_norm", "zero_", "TemporalAttention", "TemporalConv",
           "LabelEmbedding", "null_condition", "check_class_dropout"]
