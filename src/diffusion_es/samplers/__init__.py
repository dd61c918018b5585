"""Samplers: plain functions, one algorithm each, all driving a sigma-space denoiser.

* :func:`sample_ddpm`, :func:`sample_ddim` on a respaced VP chain (:mod:`.vp`);
* :func:`sample_euler`, :func:`sample_heun` (EDM, deterministic or stochastic) on a sigma grid (:mod:`.edm`);
* :func:`sample`: the convenience front end (grid, Epsilon Scaling, per-seed noise, batching).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..core.param import as_denoiser
from ..core.scaling import LambdaSchedule, epsilon_scaled
from ..core.schedules import VPSchedule, karras_sigmas, respace
from .common import NOISE_BLOCK, SeedNoise, StepInfo, over_seed_batches
from .edm import sample_edm, sample_euler, sample_heun
from .vp import VARIANCES, sample_ddim, sample_ddpm

__all__ = [
    "SAMPLERS",
    "SamplingPlan",
    "sample",
    "sample_ddpm",
    "sample_ddim",
    "sample_euler",
    "sample_heun",
    "sample_edm",
    "SeedNoise",
    "StepInfo",
    "NOISE_BLOCK",
    "VARIANCES",
]

SAMPLERS = ("ddpm", "ddim", "euler", "heun")


class SamplingPlan:
    """The grid a sampler will walk: a respaced VP chain (ddpm, ddim) or an EDM sigma grid (euler, heun).

    ``sigmas`` are the sigmas of the sampling steps in order (noisiest first); ``nfe`` the network evaluations.
    """

    def __init__(self, sampler: str, steps: int, schedule: VPSchedule, spacing: str = "adm",
                 rho: float = 7.0, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        if int(steps) < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        self.sampler, self.steps, self.schedule = sampler, int(steps), schedule
        if sampler in ("ddpm", "ddim"):
            self.chain = schedule.respaced(respace(schedule.T, self.steps, spacing))
            self.sigmas = self.chain.sigmas[::-1].copy()
            self.nfe = self.steps
        else:
            self.chain = None
            smin = schedule.sigma_min if sigma_min is None else sigma_min
            smax = schedule.sigma_max if sigma_max is None else sigma_max
            self.grid = karras_sigmas(self.steps, smin, smax, rho)  # ends with 0
            self.sigmas = self.grid[:-1]
            self.nfe = 2 * self.steps - 1 if sampler == "heun" else self.steps

    def initial(self, z: torch.Tensor) -> torch.Tensor:
        """Initial state from unit noise: VP prior x_T = z for ddpm/ddim, x = σ_0 z for EDM samplers."""
        return z if self.chain is not None else z * float(self.grid[0])

    def run(self, denoiser, z: torch.Tensor, noise: Optional[Callable] = None, callback=None, **kwargs):
        """Sample from unit noise ``z`` (see :meth:`initial`)."""
        return self._run(denoiser, self.initial(z), noise, callback, **kwargs)

    def run_from(self, denoiser, x_sigma: torch.Tensor, noise: Optional[Callable] = None, callback=None, **kwargs):
        """Sample from a given sigma-space state at the first step (``x = x_0 + σ_0 ε``), e.g. real data
        diffused to the first step with q (the paper's δ_t protocol)."""
        x = x_sigma / (1.0 + float(self.sigmas[0]) ** 2) ** 0.5 if self.chain is not None else x_sigma
        return self._run(denoiser, x, noise, callback, **kwargs)

    def _run(self, denoiser, x, noise, callback, **kwargs):
        if self.sampler == "ddpm":
            return sample_ddpm(denoiser, x, self.chain, noise, callback=callback, **kwargs)
        if self.sampler == "ddim":
            return sample_ddim(denoiser, x, self.chain, noise=noise, callback=callback, **kwargs)
        return sample_edm(denoiser, x, self.grid, heun=self.sampler == "heun", noise=noise,
                          callback=callback, **kwargs)


def sample(denoiser, sampler: str, steps: int, shape: Sequence[int], seeds: Sequence[int],
           schedule: Optional[VPSchedule] = None, es: Optional[LambdaSchedule] = None, batch_size: int = 256,
           device="cpu", spacing: str = "adm", rho: float = 7.0, callback: Optional[Callable] = None,
           progress: Optional[Callable[[int], None]] = None, **sampler_kwargs) -> torch.Tensor:
    """Draw one sample per seed. Returns float64 (len(seeds), *shape) on the CPU.

    A sample depends only on its seed (per-seed generators), never on ``batch_size``; with the same seeds the
    baseline (``es=None``) and ES runs use identical noise. ``schedule`` defaults to the denoiser's own
    (``denoiser.schedule``) or DDPM's linear schedule with T = 1000. ``sampler_kwargs`` go to the sampler
    (ddpm: variance, clip; ddim: eta, clip; euler/heun: S_churn, S_tmin, S_tmax, S_noise).
    ``callback(info, seeds_of_batch)`` is called at every network evaluation; ``progress(n_done)`` per batch.
    """
    if schedule is None:
        schedule = getattr(denoiser, "schedule", None) or VPSchedule.linear()
    plan = SamplingPlan(sampler, steps, schedule, spacing=spacing, rho=rho)
    den = epsilon_scaled(as_denoiser(denoiser), es, plan.sigmas)
    return over_seed_batches(seeds, shape, batch_size, device,
                             lambda noise, cb: plan.run(den, noise.initial(), noise, callback=cb, **sampler_kwargs),
                             callback, progress)
