"""The training engine shared by image, audio and video."""
from .checkpoint import latest_checkpoint, load_ema_weights
from .config import ConfigError, build_sections, read_recipe, to_toml
from .distributed import DistInfo, init_distributed
from .ema import EMA
from .trainer import BatchRandom, Task, TrainConfig, Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainConfig", "Task", "BatchRandom", "TrainingDiverged", "EMA", "DistInfo",
           "init_distributed", "latest_checkpoint", "load_ema_weights", "ConfigError", "build_sections",
           "read_recipe", "to_toml"]
