"""EDM's samplers in sigma space (Karras et al. 2022, Algorithm 2): Euler and Heun, deterministic or stochastic.

The state ``x = x_0 + σ ε`` is float64; the ODE derivative is ``d = (x - D(x, σ)) / σ``. With Epsilon Scaling
the wrapped denoiser is used at every evaluation, Heun's correction included; churn noise is unchanged.

PFGM++ models (a denoiser with a finite ``pfgm_D``, :mod:`diffusion_es.core.pfgm`) use the same ODE from their own
prior; churn would add Gaussian noise, the wrong kernel for finite D, so it is refused for them
(:func:`check_pfgm_churn`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..core.param import as_denoiser
from .common import StepInfo

__all__ = ["sample_euler", "sample_heun", "check_churn", "check_pfgm_churn"]


def check_churn(S_churn: float, S_tmin: float, S_tmax: float, S_noise: float) -> None:
    """EDM's stochastic options: S_churn >= 0, 0 <= S_tmin <= S_tmax (S_tmax may be inf), S_noise > 0, no NaN."""
    if not (math.isfinite(S_churn) and S_churn >= 0):
        raise ValueError(f"S_churn must be finite and >= 0, got {S_churn}")
    if not (math.isfinite(S_noise) and S_noise > 0):
        raise ValueError(f"S_noise must be finite and > 0, got {S_noise}")
    if not (math.isfinite(S_tmin) and S_tmin >= 0):
        raise ValueError(f"S_tmin must be finite and >= 0, got {S_tmin}")
    if math.isnan(S_tmax) or S_tmax < S_tmin:
        raise ValueError(f"S_tmax must be >= S_tmin (inf allowed), got {S_tmax}")


def check_pfgm_churn(S_churn: float, pfgm_D) -> None:
    """Refuse EDM's churn (Gaussian noise) for a PFGM++ model with finite D."""
    if pfgm_D is not None and math.isfinite(float(pfgm_D)) and float(S_churn) > 0:
        D = float(pfgm_D)
        raise ValueError(f"S_churn > 0 adds Gaussian noise, the wrong perturbation kernel for this PFGM++ model "
                         f"(D = {int(D) if D == int(D) else D}): sample it deterministically (no churn)")


def _edm(denoiser, x: torch.Tensor, sigmas: Sequence[float], heun: bool, noise, callback, S_churn, S_tmin, S_tmax,
         S_noise) -> torch.Tensor:
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    if n < 1 or any(not (b < a) for a, b in zip(sig, sig[1:])) or not sig[-1] >= 0:
        raise ValueError("sigmas must be a decreasing grid of at least 2 values ending at >= 0")
    check_churn(S_churn, S_tmin, S_tmax, S_noise)
    check_pfgm_churn(S_churn, getattr(denoiser, "pfgm_D", None))
    stochastic = S_churn > 0
    if stochastic and noise is None:
        raise ValueError("a stochastic EDM sampler (S_churn > 0) needs a noise source (noise=...)")
    den, x = as_denoiser(denoiser), x.to(torch.float64)
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        # churn: raise the noise level to s_hat = s (1 + gamma) by adding fresh noise
        gamma = min(S_churn / n, math.sqrt(2) - 1) if stochastic and S_tmin <= s <= S_tmax else 0.0
        s_hat = s * (1 + gamma)
        if stochastic:
            z = noise(i)
            if gamma > 0:
                x = x + math.sqrt(s_hat**2 - s**2) * S_noise * z
        # Euler step from s_hat to s_next
        D = den(x, s_hat, step_sigma=s)  # λ is keyed on the step's σ, not on the churned σ̂
        d = (x - D) / s_hat
        if callback is not None:
            callback(StepInfo(i, n, s_hat, x, D, d))
        x_next = x + (s_next - s_hat) * d
        # Heun's second-order correction (skipped on the final step to sigma = 0)
        if heun and s_next > 0:
            D2 = den(x_next, s_next)
            d2 = (x_next - D2) / s_next
            if callback is not None:
                callback(StepInfo(i, n, s_next, x_next, D2, d2, stage="correction"))
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def sample_euler(denoiser, x: torch.Tensor, sigmas: Sequence[float], *, noise: Optional[Callable] = None,
                 callback: Optional[Callable] = None, S_churn: float = 0.0, S_tmin: float = 0.0,
                 S_tmax: float = float("inf"), S_noise: float = 1.0) -> torch.Tensor:
    """EDM Euler from ``sigmas[0]`` to ``sigmas[-1]`` (usually 0); ``x`` must already be at ``sigmas[0]``."""
    return _edm(denoiser, x, sigmas, False, noise, callback, S_churn, S_tmin, S_tmax, S_noise)


def sample_heun(denoiser, x: torch.Tensor, sigmas: Sequence[float], *, noise: Optional[Callable] = None,
                callback: Optional[Callable] = None, S_churn: float = 0.0, S_tmin: float = 0.0,
                S_tmax: float = float("inf"), S_noise: float = 1.0) -> torch.Tensor:
    """EDM Heun (2nd order; N steps cost 2N − 1 evaluations when the grid ends at 0)."""
    return _edm(denoiser, x, sigmas, True, noise, callback, S_churn, S_tmin, S_tmax, S_noise)
