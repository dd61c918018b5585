"""Epsilon Scaling for ADM / guided-diffusion style ε networks: ``out = model(x_t, t, **kwargs)``.

``out`` is ε (C channels) or ``[ε, variance values]`` (2C channels, learned Σ): only the ε channels are divided by
λ; the variance channels pass through untouched, as in the paper's ADM-ES. x0- and v-predicting networks are
rewritten through ε with the ᾱ of t.

λ is keyed on the noise level of t: t (an original timestep, as guided-diffusion's ``SpacedDiffusion`` hands the
wrapped network; ``timestep_scale`` undoes ``rescale_timesteps``) maps to ᾱ_t and σ_t = sqrt((1-ᾱ_t)/ᾱ_t), and
:class:`diffusion_es.core.scaling.BoundLambda` bound to the σ of the respaced grid gives λ. So the paper's linear schedule
``λ_t = k·t + b`` counts steps of the respaced grid (t = 0 the last one).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..core.param import alpha_bar_to_sigma, get_prediction
from ..core.scaling import BoundLambda, LambdaSchedule, as_numpy_1d, as_schedule, scale_prediction
from ..core.schedules import VPSchedule
from ._common import WrapsInner

__all__ = ["EpsilonScaledEpsNet"]


class EpsilonScaledEpsNet(WrapsInner):
    """Wrap an ε network ``model(x_t, t, **kwargs)`` with Epsilon Scaling.

    * ``alphas_cumprod``: ᾱ of the training process, indexed by the timesteps the network receives (a
      :class:`~diffusion_es.schedules.VPSchedule`, an array or a tensor of length T).
    * ``timesteps``: the sampling grid (the respaced timesteps, any order; default: all T).
    * ``schedule``: a :class:`~diffusion_es.scaling.LambdaSchedule` or a number (uniform λ).
    * ``timestep_scale``: the network receives ``t · timestep_scale`` (guided-diffusion's ``rescale_timesteps``:
      1000 / T); ``prediction``: ``eps`` (default), ``x0`` or ``v``.
    * ``learned_variance``: None = decide by the output's channel count (2C = learned variance).

    Non-integer timesteps are mapped by linear interpolation of ᾱ. Attributes of the wrapped network are exposed.
    """

    def __init__(self, model: nn.Module, alphas_cumprod, schedule: Union[LambdaSchedule, float],
                 timesteps: Optional[Sequence[int]] = None, timestep_scale: float = 1.0, prediction: str = "eps",
                 learned_variance: Optional[bool] = None, record: bool = False):
        super().__init__()
        if isinstance(alphas_cumprod, VPSchedule):
            alphas_cumprod = alphas_cumprod.alphas_cumprod
        ab = as_numpy_1d(alphas_cumprod)
        if len(ab) == 0 or np.any(~np.isfinite(ab)) or np.any(ab[:-1] <= 0) or ab[-1] < 0 or np.any(ab >= 1):
            raise ValueError("alphas_cumprod must be a non-empty table of values in (0, 1); only the last may be 0 "
                             "(zero terminal SNR, where λ = 1)")
        if np.any(np.diff(ab) > 0):  # β (increasing, also in (0, 1)) or ᾱ in reverse would key λ on wrong levels
            raise ValueError(f"alphas_cumprod must fall with the timestep (ᾱ_0 near 1, ᾱ_T-1 near 0); this table "
                             f"rises ({ab[0]:.4g} at t = 0, {ab[-1]:.4g} at t = {len(ab) - 1}): if it is β, pass "
                             f"VPSchedule(betas) or numpy.cumprod(1 - betas)")
        schedule = as_schedule(schedule, "schedule")
        if schedule is None:
            raise TypeError("schedule must be a LambdaSchedule or a number (uniform λ), got None")
        if not (np.isfinite(timestep_scale) and timestep_scale > 0):
            raise ValueError(f"timestep_scale must be finite and > 0, got {timestep_scale}")
        self.inner = model
        self.schedule = schedule
        self.alphas_cumprod = ab
        self.timestep_scale = float(timestep_scale)
        self.prediction = get_prediction(prediction).name
        self.learned_variance = learned_variance
        self.records = [] if record else None
        ts = np.arange(len(ab)) if timesteps is None else np.unique(np.asarray(timesteps, dtype=np.int64))
        if len(ts) == 0:
            raise ValueError("timesteps is empty: give the sampling grid's timesteps (or None for all T)")
        if ts[0] < 0 or ts[-1] >= len(ab):
            raise ValueError(f"timesteps must lie in [0, {len(ab) - 1}]")
        self.timesteps = ts
        grid_ab = ab[ts][::-1]  # noisiest first
        self.bound: BoundLambda = schedule.bind(alpha_bar_to_sigma(grid_ab))

    @classmethod
    def from_spaced_diffusion(cls, model, diffusion, schedule, **kwargs) -> "EpsilonScaledEpsNet":
        """From a guided-diffusion ``SpacedDiffusion`` (duck-typed: ``timestep_map``, ``alphas_cumprod``,
        ``rescale_timesteps``, ``original_num_steps``). Pass the result to ``diffusion.p_sample_loop`` /
        ``ddim_sample_loop`` in place of the network: SpacedDiffusion hands it the original timesteps."""
        tmap = np.asarray(diffusion.timestep_map, dtype=np.int64)
        ab_resp = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
        T = int(getattr(diffusion, "original_num_steps", tmap[-1] + 1))
        # ᾱ at the kept timesteps equals the respaced chain's ᾱ; fill a T table by interpolation in between
        table = np.interp(np.arange(T), tmap, ab_resp)
        scale = 1000.0 / T if getattr(diffusion, "rescale_timesteps", False) else 1.0
        return cls(model, table, schedule, timesteps=tmap, timestep_scale=scale, **kwargs)

    def alpha_bar(self, t) -> np.ndarray:
        t = as_numpy_1d(t) / self.timestep_scale
        return np.interp(t, np.arange(len(self.alphas_cumprod)), self.alphas_cumprod)

    def lam(self, t) -> np.ndarray:
        return self.bound(alpha_bar_to_sigma(self.alpha_bar(t)))

    def forward(self, x: torch.Tensor, t, *args, **kwargs):
        out = self.inner(x, t, *args, **kwargs)
        if self.bound.identity:
            return out
        ab = self.alpha_bar(t)
        lam = self.bound(alpha_bar_to_sigma(ab))
        if self.records is not None:
            self.records.append((as_numpy_1d(t).copy(), lam.copy()))
        C = x.shape[1]
        if self.learned_variance is True and out.shape[1] != 2 * C:
            raise ValueError(f"learned-variance network must output {2 * C} channels, got {out.shape[1]}")
        if self.learned_variance is False and out.shape[1] != C:
            raise ValueError(f"network must output {C} channels, got {out.shape[1]}")
        return scale_prediction(out, x, lam, ab, self.prediction)

