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

from .version import __version__

# the public names and the modules that define them, imported on first use (PEP 562): `import diffusion_es` and
# the command line's start (`diffusion-es --help`, a Ctrl-C in its first second) do not wait for torch
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


def __getattr__(name):
    if name in _WHERE:
        value = getattr(_importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_WHERE})
