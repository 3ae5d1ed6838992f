"""The modality-agnostic diffusion core: tensors are [B, C, *dims]; nothing here knows
what an image, a waveform or a video is."""
from .denoiser import Denoiser
from .guidance import (GuidedModel, ProjectedEstimate, ReconstructionGuided, known_region_projection, repaint,
                       repaint_schedule)
from .objectives import (EDM, OBJECTIVES, PREDICTIONS, Estimate, FlowMatching, GeneratorDraws, Objective,
                         PreconditionedObjective, Preconditioning, VPObjective, build_objective, diffusion_loss,
                         min_snr_weight)
from .assemble import sample
from .samplers import (SAMPLER_SPECS, SAMPLERS, ddim, ddim_step, ddpm, ddpm_step, default_spacing, dpmpp_2m, euler,
                       euler_ancestral, heun, nfe)
from .schedule import SCHEDULES, SPACINGS, ContinuousSchedule, EDMSchedule, FlowSchedule, Levels, Schedule

__all__ = [
    "Schedule", "FlowSchedule", "EDMSchedule", "ContinuousSchedule", "Levels", "Denoiser", "Estimate", "sample",
    "diffusion_loss", "min_snr_weight",
    "Objective", "VPObjective", "PreconditionedObjective", "Preconditioning", "FlowMatching", "EDM", "OBJECTIVES",
    "build_objective", "GeneratorDraws",
    "GuidedModel", "ProjectedEstimate", "ReconstructionGuided", "known_region_projection", "repaint",
    "repaint_schedule",
    "ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "ddpm_step", "ddim_step",
    "SAMPLERS", "SAMPLER_SPECS", "nfe", "default_spacing", "SPACINGS", "SCHEDULES", "PREDICTIONS",
]
