"""Rectified-flow samplers (SD3, Flux): Euler and Heun on a descending time grid ``1 ≥ t_0 > … > t_n = 0``.

The state is the flow point ``x_t = (1 − t) x_0 + t ε``; the velocity ``v = ε − x_0`` comes from the denoiser's
flow view (:meth:`~diffusion_es.core.param.Denoiser.velocity_full`: a :class:`~diffusion_es.core.param.FlowDenoiser`
hands over its network's output itself, any other denoiser is converted), so Epsilon Scaling is the usual wrapper
(:class:`~diffusion_es.core.scaling.EpsilonScaled` rewrites v with ε → ε/λ, λ = 1 at t = 1 where σ = ∞).

The step rules are diffusers' own, in the same order of operations:

* ``flow_euler`` (``FlowMatchEulerDiscreteScheduler``): ``x ← x + (t_{i+1} − t_i)·v``;
* ``flow_heun`` (``FlowMatchHeunDiscreteScheduler``): with ``x̂_0 = x − t·v`` and ``d = (x − x̂_0)/t``, the Euler
  predictor to ``t_{i+1}``, a second evaluation there and ``x ← x + (t_{i+1} − t_i)·(d + d')/2``; the last step (to
  t = 0) is Euler only, so n steps cost 2n − 1 evaluations.

``dtype``: the arithmetic of the state and of the step. ``"float64"`` (default) integrates in float64 like every
other sampler here; ``"float32"`` keeps the state, the grid and the step in float32 exactly as diffusers does, so
that with a float32 network and diffusers' grid (:meth:`~diffusion_es.core.schedules.FlowSchedule.grid`) the
result equals the diffusers scheduler loop bit for bit (the test suite checks this).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..core.param import FLOW, as_denoiser, flow_t_to_sigma, flow_to_sigma_space
from .common import StepInfo

__all__ = ["sample_flow_euler", "sample_flow_heun", "FLOW_DTYPES", "check_flow_grid"]

FLOW_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def check_flow_grid(ts: Sequence[float]) -> list:
    """A flow time grid as floats: strictly decreasing, inside [0, 1], ending at 0, at least one step."""
    t = [float(v) for v in ts]
    if len(t) < 2 or any(not (b < a) for a, b in zip(t, t[1:])) or t[0] > 1 or t[-1] != 0:
        raise ValueError("a flow time grid must decrease strictly from t_0 <= 1 to a final 0 (at least one step)")
    return t


def _report(callback, i, n, x_t, v, t, stage):
    """StepInfo in the denoiser frame: x = x_t/(1 − t) (x_t at t = 1), x̂_0 = x_t − t·v, ε̂ = x_t + (1 − t)·v."""
    x64, v64 = x_t.to(torch.float64), v.to(torch.float64)
    x0, eps = FLOW.x0_eps(v64, x64, 1.0 - t, t)
    callback(StepInfo(i, n, flow_t_to_sigma(t), flow_to_sigma_space(x64, t), x0, eps, t=t, stage=stage,
                      process="flow"))


def _flow(denoiser, x: torch.Tensor, ts: Sequence[float], heun: bool, callback, dtype: str) -> torch.Tensor:
    if dtype not in FLOW_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOW_DTYPES)}, got {dtype!r}")
    t = check_flow_grid(ts)
    wd = FLOW_DTYPES[dtype]
    tt = torch.tensor(t, dtype=wd)  # the grid in the working dtype (diffusers keeps float32 sigmas)
    den, x, n = as_denoiser(denoiser), x.to(wd), len(t) - 1
    for i in range(n):
        v = den.velocity_full(x, t[i], step_sigma=flow_t_to_sigma(t[i]))[0].to(wd)
        if callback is not None:
            _report(callback, i, n, x, v, t[i], "step")
        dt = tt[i + 1] - tt[i]
        if not heun:
            x = x + dt * v
            continue
        d = (x - (x - v * tt[i])) / tt[i]  # diffusers' d = (x − x̂_0)/t with x̂_0 = x − t·v
        x_next = x + d * dt
        if t[i + 1] > 0:  # Heun's correction (none on the step to t = 0)
            v2 = den.velocity_full(x_next, t[i + 1])[0].to(wd)
            if callback is not None:
                _report(callback, i, n, x_next, v2, t[i + 1], "correction")
            d2 = (x_next - (x_next - v2 * tt[i + 1])) / tt[i + 1]
            x_next = x + 0.5 * (d + d2) * dt
        x = x_next
    return x


def sample_flow_euler(denoiser, x: torch.Tensor, ts: Sequence[float], *, noise: Optional[Callable] = None,
                      callback: Optional[Callable] = None, dtype: str = "float64") -> torch.Tensor:
    """Rectified-flow Euler from ``ts[0]`` to ``ts[-1] = 0``; ``x`` is the flow state at ``ts[0]`` (pure noise at
    t = 1). Deterministic (``noise`` is accepted for the common signature and unused)."""
    return _flow(denoiser, x, ts, False, callback, dtype)


def sample_flow_heun(denoiser, x: torch.Tensor, ts: Sequence[float], *, noise: Optional[Callable] = None,
                     callback: Optional[Callable] = None, dtype: str = "float64") -> torch.Tensor:
    """Rectified-flow Heun (diffusers' ``FlowMatchHeunDiscreteScheduler``; n steps cost 2n − 1 evaluations)."""
    return _flow(denoiser, x, ts, True, callback, dtype)
