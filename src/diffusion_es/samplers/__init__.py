"""Samplers: plain functions, one algorithm each, all driving a sigma-space denoiser, all with one signature
``sample_x(denoiser, x, grid, *, noise=None, callback=None, **opts)``.

* :func:`sample_ddpm`, :func:`sample_ddim` on a respaced VP chain (:mod:`.vp`), with an optional next-timestep
  policy (:class:`TimeShift`, :mod:`.timeshift`);
* :func:`sample_euler`, :func:`sample_heun` (EDM, deterministic or stochastic) on a sigma grid (:mod:`.edm`);
* :func:`sample_flow_euler`, :func:`sample_flow_heun` (rectified flow, diffusers' FlowMatch step rules) on a flow
  time grid (:mod:`.flow`);
* :mod:`.registry`: names, options, defaults, grids and NFE counts (:data:`SAMPLERS`, :class:`SamplingPlan`);
* :func:`sample`: the front end (grid, Epsilon Scaling, per-seed noise, batching).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..core.param import as_denoiser
from ..devices import check_device
from ..core.scaling import LambdaSchedule, as_schedule, check_made_for, epsilon_scaled
from ..core.schedules import FlowSchedule, VPSchedule
from .common import (DEFAULT_BATCH, NOISE_BLOCK, SeedNoise, StepInfo, auto_batch_size, check_seeds, over_seed_batches,
                     resolve_batch_size)
from .edm import sample_euler, sample_heun
from .flow import sample_flow_euler, sample_flow_heun
from .registry import OPTION_FLAGS, SAMPLERS, Option, SamplerSpec, SamplingPlan, get_sampler
from .timeshift import TimeShift, choose_timesteps, data_variance
from .vp import VARIANCES, clip_bound, sample_ddim, sample_ddpm

__all__ = [
    "check_shape",
    "SAMPLERS",
    "clip_bound",
    "SamplerSpec",
    "Option",
    "OPTION_FLAGS",
    "get_sampler",
    "SamplingPlan",
    "sample",
    "default_schedule",
    "sample_ddpm",
    "sample_ddim",
    "sample_euler",
    "sample_heun",
    "sample_flow_euler",
    "sample_flow_heun",
    "TimeShift",
    "choose_timesteps",
    "data_variance",
    "SeedNoise",
    "StepInfo",
    "check_seeds",
    "NOISE_BLOCK",
    "VARIANCES",
    "auto_batch_size",
    "resolve_batch_size",
    "DEFAULT_BATCH",
]


def default_schedule(denoiser):
    """The denoiser's own schedule, else ``FlowSchedule()`` for a flow denoiser and DDPM's linear VP schedule
    (T = 1000) for anything else."""
    own = getattr(denoiser, "schedule", None)
    if own is not None:
        return own
    return FlowSchedule() if getattr(denoiser, "prediction", None) == "flow" else VPSchedule.linear()


def check_shape(shape, denoiser=None) -> tuple:
    """The shape of one sample as a tuple of positive ints (an int n is (n,)), refused in one line otherwise; and,
    for a denoiser that knows its network's input channels (``in_channels``: a diffusers UNet loaded by
    :func:`~diffusion_es.models.diffusers_unet.load_diffusers_unet`), images with that many channels. Without this a
    wrong shape failed deep inside the network, and (4, 4) for a 3-channel UNet read two seeds as two channels."""
    dims = [shape] if np.ndim(shape) == 0 else list(shape)
    if not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ValueError(f"shape must be the shape of one sample as positive whole numbers, e.g. (3, 32, 32), got "
                         f"{shape!r}")
    shp = tuple(int(d) for d in dims)
    ch = getattr(denoiser, "in_channels", None)
    if ch is not None and (len(shp) != 3 or shp[0] != int(ch)):
        raise ValueError(f"shape {shp}: the network takes {ch}-channel images, i.e. a shape ({ch}, H, W)")
    return shp


def sample(denoiser, sampler: str, steps: int, shape: Sequence[int], seeds: Sequence[int],
           schedule: Optional[VPSchedule] = None, es: Union[LambdaSchedule, float, None] = None,
           batch_size: Union[int, str, None] = 256, device="cpu", spacing: str = "adm", rho: float = 7.0,
           callback: Optional[Callable] = None, progress: Optional[Callable[[int], None]] = None,
           shift: Optional[float] = None, **opts) -> torch.Tensor:
    """Draw one sample per seed. Returns float64 (len(seeds), *shape) on the CPU (float32 from the flow samplers
    with ``dtype="float32"``, which step in float32 as diffusers' FlowMatch schedulers do).

    Every sample has its own noise generator seeded by its seed, so with the same seeds the baseline (``es=None``)
    and ES runs use identical noise. The bytes of a sample depend on its seed and on the batch it is evaluated in
    (a network's float output depends on the batch and its size through its kernels): the same seeds with the same
    ``batch_size`` give the same bytes, on any number of processes, and so do calls that split the seed list at
    multiples of ``batch_size`` (other splits put seeds in other batches: equal up to float rounding); ``"auto"`` or None: :func:`auto_batch_size` (what the
    commands use unless told; on the CPU it keeps the network's tensors off the page-fault path). ``schedule``
    defaults to the denoiser's own (:func:`default_schedule`). ``es``: a λ schedule or a number (uniform λ).
    ``opts`` go to the sampler (see :data:`SAMPLERS`: ddpm: variance, clip, time_shift; ddim: eta, clip,
    time_shift; euler/heun: S_churn, S_tmin, S_tmax, S_noise; flow_euler/flow_heun: dtype). ``shift``: the SD3
    time shift of a rectified-flow model's grid (default: its :class:`~diffusion_es.core.schedules.FlowSchedule`'s).
    ``callback(info, seeds_of_batch)`` is called at every network evaluation; ``progress(n_done)`` per batch.
    A PFGM++ model's schedule (:class:`~diffusion_es.core.pfgm.EDMSchedule` with finite ``pfgm_D``) starts from
    the PFGM++ prior, each seed's mixing variable from its own stream.
    """
    check_device(device)
    shape = check_shape(shape, denoiser)
    if schedule is None:
        schedule = default_schedule(denoiser)
    plan = SamplingPlan(sampler, steps, schedule, spacing=spacing, rho=rho, shift=shift)
    plan.resolve(opts)  # refuse bad options before any work
    es = as_schedule(es)
    check_made_for(es, plan.sampler, plan.steps, plan.spacing)  # a λ file made for another setting
    batch_size = resolve_batch_size(batch_size, denoiser, shape, device)
    den = epsilon_scaled(as_denoiser(denoiser), es, plan.sigmas)
    x = over_seed_batches(check_seeds(seeds), shape, batch_size, device,
                          lambda noise, cb: plan.run(den, noise.initial(), noise, callback=cb, **opts),
                          callback, progress, pfgm_D=plan.pfgm_D)
    if not torch.isfinite(x).all():  # never a silent wrong answer: NaN/inf would be written as plausible pixels
        raise ValueError(f"sampling produced NaN or inf values ({sampler}, {plan.steps} steps); check the model, the "
                         "λ schedule and the sampler options")
    return x
