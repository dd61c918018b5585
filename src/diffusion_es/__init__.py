"""diffusion-es: find and fix exposure bias in diffusion models.

Public API (see the README for a tour):

* schedules: :class:`VPSchedule` (zero terminal SNR too), :class:`FlowSchedule`, :func:`respace`, :func:`karras_sigmas`
* parameterisations: :class:`VPDenoiser`, :class:`FlowDenoiser`, :class:`DenoiserEpsNet`, :class:`Denoiser`
  (module :mod:`.core.param`)
* Epsilon Scaling: :class:`Uniform`, :class:`Linear`, :class:`PerStep`, :class:`SigmaKeyed`,
  :func:`epsilon_scaled`, :func:`load_schedule`, :func:`save_schedule`
* samplers: :func:`sample`, :func:`sample_ddpm`, :func:`sample_ddim`, :func:`sample_euler`, :func:`sample_heun`,
  :func:`sample_flow_euler`, :func:`sample_flow_heun`
* diagnostics and calibration: :func:`measure_exposure`, :func:`calibrate`
"""

from .version import __version__

from .diagnostics.calibrate import calibrate
from .diagnostics.measure import measure_exposure
from .core.param import Denoiser, DenoiserEpsNet, FlowDenoiser, VPDenoiser
from .samplers import (SeedNoise, StepInfo, sample, sample_ddim, sample_ddpm, sample_euler, sample_flow_euler,
                       sample_flow_heun, sample_heun)
from .core.scaling import Linear, PerStep, SigmaKeyed, Uniform, epsilon_scaled, load_schedule, save_schedule
from .core.schedules import FlowSchedule, VPSchedule, karras_sigmas, respace

__all__ = [
    "__version__",
    "VPSchedule", "FlowSchedule", "respace", "karras_sigmas",
    "Denoiser", "VPDenoiser", "FlowDenoiser", "DenoiserEpsNet",
    "Uniform", "Linear", "PerStep", "SigmaKeyed", "epsilon_scaled", "load_schedule", "save_schedule",
    "sample", "sample_ddpm", "sample_ddim", "sample_euler", "sample_heun", "sample_flow_euler", "sample_flow_heun",
    "SeedNoise", "StepInfo",
    "measure_exposure", "calibrate",
]
