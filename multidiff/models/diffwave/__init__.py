"""DiffWave (Kong et al. 2021) as one package: `model.py` is the network, readable in one sitting;
`train_path.py` (one GEMM per layer with a hand-written backward) and `fast.py` (no-grad GEMMs on
repacked weights) are its two fast paths, checked equal to the module path; `lmnt.py` loads
lmnt-com/diffwave checkpoints; `noise_prior.py` holds PriorGrad / SpecGrad-style noise priors."""
from .lmnt import load_lmnt_checkpoint
from .model import (BASE, LARGE, UNCONDITIONAL, DiffWave, DiffWaveConfig, SpectrogramUpsampler,
                    derive_upsample_strides, upsample_strides)
from .noise_prior import PRIORS, MelEnergyPrior, MelEnvelopePrior, NoisePriorModel

__all__ = ["DiffWave", "DiffWaveConfig", "BASE", "LARGE", "UNCONDITIONAL", "SpectrogramUpsampler",
           "derive_upsample_strides", "upsample_strides", "load_lmnt_checkpoint", "PRIORS", "MelEnergyPrior",
           "MelEnvelopePrior", "NoisePriorModel"]
