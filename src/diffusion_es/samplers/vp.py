"""Samplers on a (respaced) VP chain, as in ADM: ancestral DDPM and DDIM.

The state is the VP sample ``x_t`` in float64; the network is reached through a sigma-space denoiser
(:mod:`diffusion_es.core.param`), so Epsilon Scaling is a wrapper around it, not a branch in here.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..core.param import Denoiser, as_denoiser
from ..core.schedules import RespacedChain
from .common import StepInfo

__all__ = ["sample_ddpm", "sample_ddim", "VARIANCES"]

VARIANCES = ("small", "large", "learned")


def _denoise(den: Denoiser, x_t, i, chain, want_var: bool):
    ab, sigma = chain.alphas_cumprod[i], chain.sigmas[i]
    x = x_t / math.sqrt(ab)
    D, extras = den.forward_full(x, sigma)
    if want_var and "var_values" not in extras:
        raise ValueError("variance='learned' needs a learned-variance model (2C output channels)")
    return x, D, extras


def sample_ddpm(denoiser, x_T: torch.Tensor, chain: RespacedChain, noise: Callable[[int], torch.Tensor],
                variance: Optional[str] = None, clip: bool = True, callback: Optional[Callable] = None) -> torch.Tensor:
    """Ancestral sampling of ADM (``p_sample_loop``) on the chain's timesteps, last to first.

    variance: ``small`` = posterior β̃ (fixed-small), ``large`` = β (fixed-large, ADM's first entry rule),
    ``learned`` = ADM's interpolation ``exp(f·log β + (1-f)·log β̃)`` with ``f = (v + 1) / 2`` from the model;
    None (default): the model's own, i.e. ``learned`` when the network predicts a variance, else ``small``.
    clip: clip the x_0 estimate to [-1, 1] (ADM's default) before the posterior mean.
    """
    if variance is not None and variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}: use one of {', '.join(VARIANCES)}")
    den, x, n = as_denoiser(denoiser), x_T.to(torch.float64), len(chain)
    for step, i in enumerate(range(n - 1, -1, -1)):
        x_sig, D, extras = _denoise(den, x, i, chain, variance == "learned")
        if variance is None:
            variance = "learned" if "var_values" in extras else "small"
        if callback is not None:
            callback(StepInfo(step, n, float(chain.sigmas[i]), x_sig, D, (x_sig - D) / chain.sigmas[i],
                              t=float(chain.timesteps[i])))
        x0 = D.clamp(-1, 1) if clip else D
        # posterior mean of q(x_{i-1} | x_i, x_0)
        mean = chain.posterior_mean_coef1[i] * x0 + chain.posterior_mean_coef2[i] * x
        if variance == "small":
            log_var = chain.posterior_log_variance_clipped[i]
        elif variance == "large":
            log_var = math.log(chain.large_variance[i])
        else:
            frac = (extras["var_values"] + 1) / 2
            log_var = frac * math.log(chain.betas[i]) + (1 - frac) * chain.posterior_log_variance_clipped[i]
        std = math.exp(0.5 * log_var) if isinstance(log_var, float) else torch.exp(0.5 * log_var)
        z = noise(step)  # drawn at every step, so the noise stream position depends only on the step
        # no noise at the last step (i = 0): the result is the posterior mean
        x = mean + std * z if i > 0 else mean
    return x


def sample_ddim(denoiser, x_T: torch.Tensor, chain: RespacedChain, eta: float = 0.0,
                noise: Optional[Callable[[int], torch.Tensor]] = None, clip: bool = True,
                callback: Optional[Callable] = None) -> torch.Tensor:
    """DDIM (ADM's ``ddim_sample``): ε is re-derived from the (clipped) x_0 estimate; η = 0 is deterministic,
    η = 1 is ancestral sampling with the posterior variance. The last step goes to ᾱ = 1."""
    if eta < 0 or not math.isfinite(eta):
        raise ValueError(f"DDIM eta must be finite and >= 0, got {eta}")
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 needs a noise source")
    den, x, n = as_denoiser(denoiser), x_T.to(torch.float64), len(chain)
    for step, i in enumerate(range(n - 1, -1, -1)):
        ab, ab_prev = chain.alphas_cumprod[i], chain.alphas_cumprod_prev[i]
        x_sig, D, _ = _denoise(den, x, i, chain, False)
        if callback is not None:
            callback(StepInfo(step, n, float(chain.sigmas[i]), x_sig, D, (x_sig - D) / chain.sigmas[i],
                              t=float(chain.timesteps[i])))
        x0 = D.clamp(-1, 1) if clip else D
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        sig = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sig**2, 0.0)) * eps
        if eta > 0:
            z = noise(step)
            if i > 0:
                x = x + sig * z
    return x
