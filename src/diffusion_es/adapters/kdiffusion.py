"""Epsilon Scaling for EDM / k-diffusion style denoisers: ``D = model(x, sigma, **kwargs)`` in σ space.

:class:`EpsilonScaledDenoiser` is a drop-in ``torch.nn.Module`` with the same call protocol that returns

    D'(x, σ) = x - (x - D(x, σ)) / λ(σ)          (ε' = ε / λ with x = x_0 + σ ε)

and exposes every attribute of the wrapped network (``sigma_min``, ``sigma_max``, ``img_resolution``,
``img_channels``, ``label_dim``, ``round_sigma``, ``sigmas``, ...), so EDM's and k-diffusion's own samplers use it
unchanged (both of Heun's evaluations are scaled; churn noise is untouched). λ comes from
:class:`diffusion_es.core.scaling.BoundLambda`: bind it to the sampling grid the sampler will walk. σ is passed to the
network exactly as the sampler gave it (dtype and shape), and where λ = 1 the network's output is returned as is.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..core.scaling import BoundLambda, LambdaSchedule, SigmaKeyed, Uniform, as_numpy_1d, as_schedule, scale_denoised
from ._common import WrapsInner

__all__ = ["EpsilonScaledDenoiser"]


def _bind(schedule: LambdaSchedule, sigmas) -> BoundLambda:
    if sigmas is None:
        if isinstance(schedule, (Uniform, SigmaKeyed)):
            # a constant (or σ-keyed) λ does not depend on the grid: any one-point grid will do
            return schedule.bind([1.0])
        raise ValueError(f"a {type(schedule).__name__} λ schedule is indexed by sampling step: pass the sampling "
                         f"grid (sigmas=..., as given to the sampler) when wrapping the denoiser")
    return schedule.bind(as_numpy_1d(sigmas))


class EpsilonScaledDenoiser(WrapsInner):
    """Wrap ``model(x, sigma, *args, **kwargs) -> D`` with Epsilon Scaling.

    ``schedule``: a :class:`~diffusion_es.scaling.LambdaSchedule` or a number (uniform λ). ``sigmas``: the sampling
    grid (descending; a trailing 0 is ignored), needed by step-indexed schedules (Linear, PerStep); call
    :meth:`rebind` when the grid changes. ``record=True`` keeps ``(σ, λ)`` per call in ``self.records``.
    """

    def __init__(self, model: nn.Module, schedule: Union[LambdaSchedule, float],
                 sigmas: Optional[Sequence[float]] = None, record: bool = False):
        super().__init__()
        schedule = as_schedule(schedule, "schedule")
        if schedule is None:
            raise TypeError("schedule must be a LambdaSchedule or a number (uniform λ), got None")
        self.inner = model
        self.schedule = schedule
        self.bound = _bind(schedule, sigmas)
        self.records = [] if record else None

    def rebind(self, sigmas: Optional[Sequence[float]]) -> "EpsilonScaledDenoiser":
        """Bind the schedule to a new sampling grid (returns self)."""
        self.bound = _bind(self.schedule, sigmas)
        return self

    def lam(self, sigma) -> np.ndarray:
        """λ for each σ (float64 numpy); σ within float32 round-off of a grid σ counts as that grid σ."""
        return self.bound(as_numpy_1d(sigma))

    def forward(self, x: torch.Tensor, sigma, *args, **kwargs):
        D = self.inner(x, sigma, *args, **kwargs)
        if self.bound.identity:
            return D
        s = as_numpy_1d(sigma)
        lam_np = self.lam(s)
        if self.records is not None:
            self.records.append((s.copy(), lam_np.copy()))
        if lam_np.size not in (1, x.shape[0]):
            raise ValueError(f"sigma has {lam_np.size} entries for a batch of {x.shape[0]}")
        return scale_denoised(x, D, float(lam_np[0]) if lam_np.size == 1 else lam_np)

    def __repr__(self):
        return f"EpsilonScaledDenoiser({self.schedule!r}, inner={type(self.inner).__name__})"
