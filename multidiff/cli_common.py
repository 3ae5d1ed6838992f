"""What `multidiff sample` does the same way for every kind of run."""
from __future__ import annotations

import dataclasses

import torch

from .engine.config import ConfigError


def sample_settings(args, sections: dict):
    """The run's [sample] section with the command line's sampler settings, and the labels to draw
    (None: cycle through the classes), checked against the model: --class and --guidance need a
    class-conditional model."""
    over = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("spacing", args.spacing),
                              ("eta", args.eta)) if v is not None}
    cfg = dataclasses.replace(sections["sample"], **over, seed=args.seed)
    K = sections["model"].num_classes
    labels = None
    if args.label is not None:
        if K == 0:
            raise ConfigError(f"--class needs a class-conditional model; '{args.run_dir}' has model.num_classes = 0")
        if not 0 <= args.label < K:
            raise ConfigError(f"--class must be in 0..{K - 1}")
        labels = torch.full((args.n,), args.label)
    if args.guidance not in (None, 1.0) and K == 0:
        raise ConfigError("--guidance needs a class-conditional model (classifier-free guidance)")
    return cfg, labels
