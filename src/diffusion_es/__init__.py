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

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .version import __version__

# the public names and the modules that define them, imported on first use (PEP 562): `import diffusion_es` does not
# wait for torch (the command line's parser does import it: its options come from the sampler registry)
_EXPORTS = {
    ".core.schedules": ("VPSchedule", "FlowSchedule", "respace", "karras_sigmas"),
    ".core.param": ("Denoiser", "VPDenoiser", "FlowDenoiser", "DenoiserEpsNet"),
    ".core.scaling": ("Uniform", "Linear", "PerStep", "SigmaKeyed", "epsilon_scaled", "load_schedule",
                      "save_schedule"),
    ".samplers": ("sample", "sample_ddpm", "sample_ddim", "sample_euler", "sample_heun", "sample_flow_euler",
                  "sample_flow_heun", "SeedNoise", "StepInfo"),
    ".diagnostics.measure": ("measure_exposure",),
    ".diagnostics.calibrate": ("calibrate",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_WHERE]


# the subpackages and modules an eager import used to load, still reachable as attributes (diffusion_es.samplers)
_SUBMODULES = ("adapters", "cli", "core", "data", "diagnostics", "experiments", "metrics", "models", "samplers", "training",
               "devices", "distributed", "errors", "hashing", "heap", "io", "progress", "store")


def __getattr__(name):
    if name in _WHERE:
        value = getattr(_importlib.import_module(_WHERE[name], __name__), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__():
    return sorted({*globals(), *_WHERE, *_SUBMODULES})


if _TYPE_CHECKING:  # what type checkers and IDEs see: the names as an eager import would give them
    from .core.param import Denoiser, DenoiserEpsNet, FlowDenoiser, VPDenoiser
    from .core.scaling import Linear, PerStep, SigmaKeyed, Uniform, epsilon_scaled, load_schedule, save_schedule
    from .core.schedules import FlowSchedule, VPSchedule, karras_sigmas, respace
    from .diagnostics.calibrate import calibrate
    from .diagnostics.measure import measure_exposure
    from .samplers import (SeedNoise, StepInfo, sample, sample_ddim, sample_ddpm, sample_euler, sample_flow_euler,
                           sample_flow_heun, sample_heun)
