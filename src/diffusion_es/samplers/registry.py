"""The sampler registry: names, options (type, default, check, CLI flag), grids and network-evaluation counts.

Every sampler function has one signature, ``sample_x(denoiser, x, grid, *, noise=None, callback=None, **opts)``;
the grid is a respaced VP chain (:class:`~diffusion_es.core.schedules.RespacedChain`) for ``ddpm`` / ``ddim``,
a descending σ array ending at 0 for ``euler`` / ``heun`` and a descending flow-time array ending at 0 for
``flow_euler`` / ``flow_heun`` (rectified-flow models, :class:`~diffusion_es.core.schedules.FlowSchedule`). Everything that needs to know about samplers (the
front end :func:`~diffusion_es.samplers.sample`, measurement, calibration, the experiments and the CLI) reads it
from here: :data:`SAMPLERS`, :func:`get_sampler`, :class:`SamplingPlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..core.param import flow_t_to_sigma, real_number, sigma_to_flow_space, sigma_to_vp_space
from ..core.pfgm import EDMSchedule, check_D
from ..core.schedules import FlowSchedule, VPSchedule, karras_sigmas, respace
from .edm import check_churn, check_pfgm_churn, sample_euler, sample_heun
from .flow import FLOW_DTYPES, sample_flow_euler, sample_flow_heun
from .timeshift import TimeShift
from .vp import VARIANCES, check_eta, clip_bound, sample_ddim, sample_ddpm

__all__ = ["Option", "SamplerSpec", "SAMPLERS", "get_sampler", "SamplingPlan", "OPTION_FLAGS"]


@dataclass(frozen=True)
class Option:
    """One keyword option of a sampler: its default, what it means, and the CLI flag that sets it."""

    name: str
    default: object
    help: str
    flag: str = ""


_VP_CLIP = Option("clip", None, "clipping of the x_0 estimate: None = the model's own ([-1, 1], ADM's default, "
                  "unless it says otherwise: a diffusers scheduler's clip_sample / clip_sample_range), True = "
                  "[-1, 1], False = none, a number r > 0 = [-r, r]", "--no-clip")
_VP_SHIFT = Option("time_shift", None, "a next-timestep policy (TimeShift: TS-DDPM / TS-DDIM)", "")
_CHURN = (
    Option("S_churn", 0.0, "EDM S_churn: stochasticity (0: deterministic ODE)", "--churn"),
    Option("S_tmin", 0.0, "EDM S_tmin: churn only for sigma >= S_tmin", "--s-tmin"),
    Option("S_tmax", float("inf"), "EDM S_tmax: churn only for sigma <= S_tmax", "--s-tmax"),
    Option("S_noise", 1.0, "EDM S_noise: scale of the churn noise", "--s-noise"),
)


def _check_vp(name: str, opts: dict) -> None:
    if name == "ddpm" and opts["variance"] is not None and opts["variance"] not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(VARIANCES)} (or None: the model's own), "
                         f"got {opts['variance']!r}")
    if name == "ddim":
        check_eta(opts["eta"])
    clip_bound(opts["clip"], None)  # None, a boolean, 0 or a bound r > 0
    if opts["time_shift"] is not None and not isinstance(opts["time_shift"], TimeShift):
        raise ValueError("time_shift must be a TimeShift policy (or None)")


def _check_edm(name: str, opts: dict) -> None:
    check_churn(*(real_number(opts[k], k) for k in ("S_churn", "S_tmin", "S_tmax", "S_noise")))


def _check_flow(name: str, opts: dict) -> None:
    if opts["dtype"] not in FLOW_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOW_DTYPES)}, got {opts['dtype']!r}")


_FLOW_DTYPE = Option("dtype", "float64", "arithmetic of the flow state and step: float64, or float32 exactly as "
                     "diffusers' FlowMatch schedulers (bit for bit with them)", "")


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler. ``grid``: ``vp`` (respaced chain), ``sigma`` (EDM σ grid) or ``flow`` (flow times);
    ``evals_per_step``: network evaluations per step (Heun: 2, but none for its final step to σ = 0)."""

    name: str
    title: str
    fn: Callable
    grid: str
    options: tuple
    check: Callable
    evals_per_step: int = 1
    stochastic: Callable = field(default=lambda opts: False)

    def nfe(self, steps: int) -> int:
        """Network evaluations of a run with ``steps`` steps."""
        return self.evals_per_step * int(steps) - (self.evals_per_step - 1)

    def steps_for_nfe(self, nfe: int) -> int:
        """Steps of a run that costs ``nfe`` evaluations (Heun: rounded up to the next odd count)."""
        return (int(nfe) + 2) // 2 if self.evals_per_step == 2 else int(nfe)

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def resolve(self, opts: dict) -> dict:
        """``opts`` with defaults filled in, every value checked; unknown names are refused with the list."""
        known = self.defaults()
        unknown = sorted(set(opts) - set(known))
        if unknown:
            raise ValueError(f"sampler {self.name!r} has no option {unknown[0]!r}; its options: "
                             f"{', '.join(known) or 'none'}")
        full = {**known, **opts}
        self.check(self.name, full)
        return full


SAMPLERS = {
    "ddpm": SamplerSpec(
        "ddpm", "ancestral DDPM", sample_ddpm, "vp",
        (Option("variance", None, "posterior variance: small | large | learned (default: the model's own)",
                "--variance"), _VP_CLIP, _VP_SHIFT),
        _check_vp, stochastic=lambda opts: True),
    "ddim": SamplerSpec(
        "ddim", "DDIM (η = 0)", sample_ddim, "vp",
        (Option("eta", 0.0, "DDIM eta (0: deterministic, 1: ancestral)", "--eta"), _VP_CLIP, _VP_SHIFT),
        _check_vp, stochastic=lambda opts: float(opts.get("eta", 0.0)) > 0),
    "euler": SamplerSpec("euler", "EDM Euler", sample_euler, "sigma", _CHURN, _check_edm,
                         stochastic=lambda opts: float(opts.get("S_churn", 0.0)) > 0),
    "heun": SamplerSpec("heun", "EDM Heun", sample_heun, "sigma", _CHURN, _check_edm, evals_per_step=2,
                        stochastic=lambda opts: float(opts.get("S_churn", 0.0)) > 0),
    "flow_euler": SamplerSpec("flow_euler", "rectified-flow Euler (FlowMatchEuler)", sample_flow_euler, "flow",
                              (_FLOW_DTYPE,), _check_flow),
    "flow_heun": SamplerSpec("flow_heun", "rectified-flow Heun (FlowMatchHeun)", sample_flow_heun, "flow",
                             (_FLOW_DTYPE,), _check_flow, evals_per_step=2),
}

# library option name -> CLI flag, for turning a library error into one that names the flag
OPTION_FLAGS = {o.name: o.flag for spec in SAMPLERS.values() for o in spec.options if o.flag}


def get_sampler(name: str) -> SamplerSpec:
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return spec


class SamplingPlan:
    """The grid a sampler will walk: a respaced VP chain (ddpm, ddim), an EDM sigma grid (euler, heun) or a flow
    time grid (flow_euler, flow_heun; ``shift`` overrides the :class:`FlowSchedule`'s SD3 shift).

    ``sigmas`` are the sigmas of the sampling steps in order (noisiest first), the grid a λ schedule is bound to
    (it starts at σ = ∞ for a flow grid from t = 1 and for a zero-terminal-SNR chain that includes its last
    timestep); ``nfe`` the network evaluations of one run; ``process`` the sampler's state (``vp`` or ``flow``).

    An EDM-preconditioned model (:class:`~diffusion_es.core.pfgm.EDMSchedule`) runs euler or heun only;
    ``pfgm_D`` is its PFGM++ D (∞ for every other model): the initial noise must then be the PFGM++ kernel's
    (:class:`~diffusion_es.samplers.common.SeedNoise` with ``pfgm_D``), and :meth:`resolve` refuses churn.
    """

    def __init__(self, sampler: str, steps: int, schedule, spacing: str = "adm", rho: float = 7.0,
                 sigma_min: Optional[float] = None, sigma_max: Optional[float] = None, shift: Optional[float] = None):
        self.spec = get_sampler(sampler)
        try:
            whole = not isinstance(steps, bool) and int(steps) == steps and int(steps) >= 1
        except (TypeError, ValueError, OverflowError):  # None, a string, inf, NaN
            whole = False
        if not whole:
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
        self.sampler, self.steps = sampler, int(steps)
        grid = self.spec.grid
        if not isinstance(schedule, (VPSchedule, FlowSchedule, EDMSchedule)) and not (
                hasattr(schedule, "respaced") and hasattr(schedule, "T")):  # (or a VP-like object of one's own)
            raise TypeError(f"schedule must be a noise schedule (VPSchedule, FlowSchedule or EDMSchedule; for a β "
                            f"array, VPSchedule(betas)), got {type(schedule).__name__}")
        flow_model = isinstance(schedule, FlowSchedule)
        edm_model = isinstance(schedule, EDMSchedule)
        self.pfgm_D = check_D(getattr(schedule, "pfgm_D", None))
        if edm_model and grid != "sigma":
            raise ValueError(f"sampler {sampler!r} needs a {'VP' if grid == 'vp' else 'rectified-flow'} model; this "
                             f"is an EDM-preconditioned model ({schedule.describe()}): use euler or heun")
        if grid == "flow" and not flow_model:
            raise ValueError(f"sampler {sampler!r} needs a rectified-flow model (a FlowSchedule); this model has a VP "
                             f"schedule: use ddpm, ddim, euler or heun")
        if grid == "vp" and flow_model:
            raise ValueError(f"sampler {sampler!r} needs a VP model (a VPSchedule); this is a rectified-flow model: "
                             f"use flow_euler or flow_heun")
        if shift is not None:
            if not flow_model:
                raise ValueError("shift is the time shift of rectified-flow models; this model has a VP schedule")
            schedule = schedule.with_shift(shift)
        self.schedule = schedule
        self.process = "flow" if grid == "flow" else "vp"
        self.spacing = spacing if grid == "vp" else None  # (what a λ schedule file records of the setting)
        if grid == "vp":
            self.chain = schedule.respaced(respace(schedule.T, self.steps, spacing))
            self.grid = self.chain
            self.sigmas = self.chain.sigmas[::-1].copy()
        elif grid == "flow":
            self.chain = None
            self.grid = schedule.grid(self.steps)  # flow times, ends with 0
            self.sigmas = flow_t_to_sigma(self.grid[:-1])
        else:
            self.chain = None
            smin = schedule.sigma_min if sigma_min is None else sigma_min
            smax = schedule.sigma_max if sigma_max is None else sigma_max
            if not math.isfinite(smax):
                raise ValueError(f"sampler {sampler!r} walks EDM's σ grid, which needs a finite σ_max; this model's "
                                 f"schedule starts at σ = ∞: "
                                 + ("use flow_euler or flow_heun" if flow_model else "use ddpm or ddim"))
            self.grid = karras_sigmas(self.steps, smin, smax, rho)  # ends with 0
            self.sigmas = self.grid[:-1]
        self.nfe = self.spec.nfe(self.steps)

    def resolve(self, opts: dict) -> dict:
        """The sampler's options with defaults, checked (:meth:`SamplerSpec.resolve`), and churn refused for a
        PFGM++ model with finite D."""
        full = self.spec.resolve(opts)
        if "S_churn" in full:
            check_pfgm_churn(float(full["S_churn"]), self.pfgm_D)
        return full

    def initial(self, z: torch.Tensor) -> torch.Tensor:
        """Initial state from unit noise: VP prior x_T = z for ddpm/ddim, the flow state x_1 = z for flow samplers
        (t_0 = 1), x = σ_0 z for EDM samplers (for a PFGM++ model ``z`` is the kernel's unit-σ draw, so this is its
        prior at σ_max, :func:`~diffusion_es.core.pfgm.prior`)."""
        if self.spec.grid == "flow":
            return z if self.grid[0] == 1 else z * float(self.grid[0])
        return z if self.chain is not None else z * float(self.grid[0])

    def run(self, denoiser, z: torch.Tensor, noise: Optional[Callable] = None, callback=None, **opts):
        """Sample from unit noise ``z`` (see :meth:`initial`)."""
        return self.run_from(denoiser, None, noise, callback, _z=z, **opts)

    def run_from(self, denoiser, x_sigma: Optional[torch.Tensor], noise: Optional[Callable] = None, callback=None,
                 _z=None, start: int = 0, **opts):
        """Sample from a given sigma-space state at step ``start`` (``x = x_0 + σ_start ε``, the σ = ∞ convention at
        σ = ∞), e.g. real data diffused to that step with q (the paper's δ_t protocol). Steps before ``start`` are
        skipped; a callback then sees the indices of the shortened run (step ``start`` is its 0)."""
        opts = self.resolve(opts)
        if _z is not None:
            return self.spec.fn(denoiser, self.initial(_z), self.grid, noise=noise, callback=callback, **opts)
        if not 0 <= int(start) < self.steps:
            raise ValueError(f"start must be a step index in [0, {self.steps - 1}], got {start}")
        s0 = float(self.sigmas[start])
        if self.chain is not None:
            grid = self.chain if start == 0 else self.chain.base.respaced(self.chain.timesteps[:len(self.chain) - start])
            x = sigma_to_vp_space(x_sigma, s0)
        elif self.spec.grid == "flow":
            grid, x = self.grid[start:], sigma_to_flow_space(x_sigma, s0)
        else:
            grid, x = self.grid[start:], x_sigma
        return self.spec.fn(denoiser, x, grid, noise=noise, callback=callback, **opts)
