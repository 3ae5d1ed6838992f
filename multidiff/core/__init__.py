"""The modality-agnostic diffusion core: tensors are [B, C, *dims]; nothing here knows
what an image, a waveform or a video is."""
from .denoiser import PREDICTIONS, Denoiser, Estimate
from .guidance import (GuidedModel, ProjectedEstimate, ReconstructionGuided, known_region_projection, repaint,
                       repaint_schedule)
from .losses import diffusion_loss, min_snr_weight
from .assemble import sample
from .samplers import SAMPLERS, ddim, ddim_step, ddpm, ddpm_step, dpmpp_2m, euler, euler_ancestral, heun
from .schedule import SPACINGS, Levels, Schedule

__all__ = [
    "Schedule", "Levels", "Denoiser", "Estimate", "sample", "diffusion_loss", "min_snr_weight",
    "GuidedModel", "ProjectedEstimate", "ReconstructionGuided", "known_region_projection", "repaint", "repaint_schedule",
    "ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "ddpm_step", "ddim_step",
    "SAMPLERS", "SPACINGS", "PREDICTIONS",
]
