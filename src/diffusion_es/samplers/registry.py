"""The sampler registry: names, options (type, default, check, CLI flag), grids and network-evaluation counts.

Every sampler function has one signature, ``sample_x(denoiser, x, grid, *, noise=None, callback=None, **opts)``;
the grid is a respaced VP chain (:class:`~diffusion_es.core.schedules.RespacedChain`) for ``ddpm`` / ``ddim`` and
a descending σ array ending at 0 for ``euler`` / ``heun``. Everything that needs to know about samplers (the
front end :func:`~diffusion_es.samplers.sample`, measurement, calibration, the experiments and the CLI) reads it
from here: :data:`SAMPLERS`, :func:`get_sampler`, :class:`SamplingPlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..core.param import sigma_to_vp_space
from ..core.schedules import karras_sigmas, respace
from .edm import check_churn, sample_euler, sample_heun
from .timeshift import TimeShift
from .vp import VARIANCES, sample_ddim, sample_ddpm

__all__ = ["Option", "SamplerSpec", "SAMPLERS", "get_sampler", "SamplingPlan", "OPTION_FLAGS"]


@dataclass(frozen=True)
class Option:
    """One keyword option of a sampler: its default, what it means, and the CLI flag that sets it."""

    name: str
    default: object
    help: str
    flag: str = ""


def _finite_nonneg(v):
    return math.isfinite(v) and v >= 0


_VP_CLIP = Option("clip", True, "clip the x_0 estimate to [-1, 1] (ADM's default)", "--no-clip")
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
    if name == "ddim" and not _finite_nonneg(float(opts["eta"])):
        raise ValueError(f"eta must be finite and >= 0, got {opts['eta']}")
    if opts["time_shift"] is not None and not isinstance(opts["time_shift"], TimeShift):
        raise ValueError("time_shift must be a TimeShift policy (or None)")


def _check_edm(name: str, opts: dict) -> None:
    check_churn(float(opts["S_churn"]), float(opts["S_tmin"]), float(opts["S_tmax"]), float(opts["S_noise"]))


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler. ``grid``: ``vp`` (respaced chain) or ``sigma`` (EDM σ grid);
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
}

# library option name -> CLI flag, for turning a library error into one that names the flag
OPTION_FLAGS = {o.name: o.flag for spec in SAMPLERS.values() for o in spec.options if o.flag}


def get_sampler(name: str) -> SamplerSpec:
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return spec


class SamplingPlan:
    """The grid a sampler will walk: a respaced VP chain (ddpm, ddim) or an EDM sigma grid (euler, heun).

    ``sigmas`` are the sigmas of the sampling steps in order (noisiest first), the grid a λ schedule is bound to;
    ``nfe`` the network evaluations of one run.
    """

    def __init__(self, sampler: str, steps: int, schedule, spacing: str = "adm", rho: float = 7.0,
                 sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        self.spec = get_sampler(sampler)
        if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps}")
        self.sampler, self.steps, self.schedule = sampler, int(steps), schedule
        if self.spec.grid == "vp":
            self.chain = schedule.respaced(respace(schedule.T, self.steps, spacing))
            self.grid = self.chain
            self.sigmas = self.chain.sigmas[::-1].copy()
        else:
            self.chain = None
            smin = schedule.sigma_min if sigma_min is None else sigma_min
            smax = schedule.sigma_max if sigma_max is None else sigma_max
            self.grid = karras_sigmas(self.steps, smin, smax, rho)  # ends with 0
            self.sigmas = self.grid[:-1]
        self.nfe = self.spec.nfe(self.steps)

    def initial(self, z: torch.Tensor) -> torch.Tensor:
        """Initial state from unit noise: VP prior x_T = z for ddpm/ddim, x = σ_0 z for EDM samplers."""
        return z if self.chain is not None else z * float(self.grid[0])

    def run(self, denoiser, z: torch.Tensor, noise: Optional[Callable] = None, callback=None, **opts):
        """Sample from unit noise ``z`` (see :meth:`initial`)."""
        return self.run_from(denoiser, None, noise, callback, _z=z, **opts)

    def run_from(self, denoiser, x_sigma: Optional[torch.Tensor], noise: Optional[Callable] = None, callback=None,
                 _z=None, **opts):
        """Sample from a given sigma-space state at the first step (``x = x_0 + σ_0 ε``), e.g. real data
        diffused to the first step with q (the paper's δ_t protocol)."""
        if _z is not None:
            x = self.initial(_z)
        else:
            x = sigma_to_vp_space(x_sigma, float(self.sigmas[0])) if self.chain is not None else x_sigma
        opts = self.spec.resolve(opts)
        return self.spec.fn(denoiser, x, self.grid, noise=noise, callback=callback, **opts)
