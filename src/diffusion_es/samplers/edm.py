"""EDM's samplers in sigma space (Karras et al. 2022, Algorithm 2): Euler and Heun, deterministic or stochastic.

The state ``x = x_0 + σ ε`` is float64; the ODE derivative is ``d = (x - D(x, σ)) / σ``. With Epsilon Scaling
the wrapped denoiser is used at every evaluation, Heun's correction included; churn noise is unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..core.param import as_denoiser
from .common import StepInfo

__all__ = ["sample_euler", "sample_heun", "sample_edm"]


def sample_edm(denoiser, x: torch.Tensor, sigmas: Sequence[float], heun: bool = True,
               noise: Optional[Callable[[int], torch.Tensor]] = None, S_churn: float = 0.0,
               S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0,
               callback: Optional[Callable] = None) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]`` (usually 0). ``x`` must already be at ``sigmas[0]``
    (EDM starts from ``σ_0 · z``). Heun with N steps costs 2N - 1 evaluations when the grid ends at 0."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    if n < 1 or any(b >= a for a, b in zip(sig, sig[1:])) or sig[-1] < 0:
        raise ValueError("sigmas must be a decreasing grid of at least 2 values ending at >= 0")
    if S_churn < 0 or S_noise <= 0:
        raise ValueError(f"need S_churn >= 0 and S_noise > 0, got {S_churn}, {S_noise}")
    stochastic = S_churn > 0
    if stochastic and noise is None:
        raise ValueError("a stochastic EDM sampler (S_churn > 0) needs a noise source")
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


def sample_euler(denoiser, x, sigmas, **kwargs):
    return sample_edm(denoiser, x, sigmas, heun=False, **kwargs)


def sample_heun(denoiser, x, sigmas, **kwargs):
    return sample_edm(denoiser, x, sigmas, heun=True, **kwargs)
