"""diffusion-es: find and fix exposure bias in diffusion models.

Public API (see the README for a tour):

* schedules: :class:`VPSchedule`, :func:`respace`, :func:`karras_sigmas`
* parameterisations: :class:`VPDenoiser`, :class:`DenoiserEpsNet`, :class:`Denoiser` (module :mod:`.param`)
* Epsilon Scaling: :class:`Uniform`, :class:`Linear`, :class:`PerStep`, :class:`SigmaKeyed`,
  :func:`epsilon_scaled`, :func:`load_schedule`, :func:`save_schedule`
* samplers: :func:`sample`, :func:`sample_ddpm`, :func:`sample_ddim`, :func:`sample_euler`, :func:`sample_heun`
* diagnostics and calibration: :func:`measure_exposure`, :func:`calibrate`
"""

from .version import __version__

from .diagnostics.calibrate import calibrate
from .diagnostics.measure import measure_exposure
from .core.param import Denoiser, DenoiserEpsNet, VPDenoiser
from .samplers import SeedNoise, StepInfo, sample, sample_ddim, sample_ddpm, sample_euler, sample_heun
from .core.scaling import Linear, PerStep, SigmaKeyed, Uniform, epsilon_scaled, load_schedule, save_schedule
from .core.schedules import VPSchedule, karras_sigmas, respace

__all__ = [
    "__version__",
    "VPSchedule", "respace", "karras_sigmas",
    "Denoiser", "VPDenoiser", "DenoiserEpsNet",
    "Uniform", "Linear", "PerStep", "SigmaKeyed", "epsilon_scaled", "load_schedule", "save_schedule",
    "sample", "sample_ddpm", "sample_ddim", "sample_euler", "sample_heun", "SeedNoise", "StepInfo",
    "measure_exposure", "calibrate",
]
