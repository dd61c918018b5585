"""Samplers on a (respaced) VP chain, as in ADM: ancestral DDPM and DDIM.

One loop (:func:`_vp_loop`) walks the chain from its noisiest step; at every step it takes the coefficients of the
transition (:class:`Transition`), asks the denoiser for x̂_0 and applies one of two step rules,
:func:`ddpm_update` (the posterior mean plus noise) or :func:`ddim_update`. A *next-timestep policy* may move a
sample to another timestep after each step (:class:`~diffusion_es.samplers.timeshift.TimeShift`); the step rules
and the loop are the same, so the policy's window 1 is the plain sampler bit for bit.

The state is the VP sample ``x_t`` in float64; the network is reached through a sigma-space denoiser
(:mod:`diffusion_es.core.param`), so Epsilon Scaling is a wrapper around it, not a branch in here. A chain of a
zero-terminal-SNR schedule starts at ᾱ = 0 (σ = ∞): the denoiser gets the state x_t itself there (the σ = ∞
convention of :mod:`diffusion_es.core.param`), and every step coefficient stays finite (β = 1 on that step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..core.param import (alpha_bar_to_sigma, as_denoiser, check_clip_x0, implied_eps, real_number,
                          sigma_to_alpha_bar, vp_to_sigma_space)
from ..core.schedules import RespacedChain, VPSchedule, posterior_coefficients
from .common import StepInfo

__all__ = ["sample_ddpm", "sample_ddim", "VARIANCES", "Transition", "chain_transition", "pair_transition",
           "ddpm_update", "ddim_update", "clip_bound", "check_eta"]

VARIANCES = ("small", "large", "learned")


@dataclass
class Transition:
    """Coefficients of one step from ᾱ (``ab``) to ᾱ_prev: Python floats (the whole batch at one timestep) or
    numpy arrays (one value per sample, for a time-shift policy). ``std_small`` / ``std_large`` are the
    fixed-small (posterior) and fixed-large (β) noise scales; ``log_beta`` and ``log_small`` feed the learned
    variance interpolation."""

    sigma: object
    t: object
    ab: object
    ab_prev: object
    coef1: object
    coef2: object
    std_small: object
    std_large: object
    log_beta: object
    log_small: object

    @property
    def per_sample(self) -> bool:
        return isinstance(self.ab, np.ndarray)


def chain_transition(chain: RespacedChain, i: int) -> Transition:
    """Step ``i`` of a respaced chain, with ADM's rules: the posterior log-variance of ``i = 0`` clipped to that of
    ``i = 1`` and the fixed-large variance's first entry replaced by the posterior variance."""
    log_small = float(chain.posterior_log_variance_clipped[i])
    return Transition(sigma=chain.sigmas[i], t=float(chain.timesteps[i]), ab=float(chain.alphas_cumprod[i]),
                      ab_prev=float(chain.alphas_cumprod_prev[i]), coef1=float(chain.posterior_mean_coef1[i]),
                      coef2=float(chain.posterior_mean_coef2[i]), std_small=math.exp(0.5 * log_small),
                      std_large=math.exp(0.5 * math.log(chain.large_variance[i])),
                      log_beta=math.log(chain.betas[i]), log_small=log_small)


def pair_transition(base: VPSchedule, s: np.ndarray, prev: int) -> Transition:
    """Per sample, the step from timestep ``s[b]`` to ``prev`` (``prev = -1``: to the data, ᾱ = 1): the formulas
    of a respaced chain ``[prev, s[b]]``."""
    ab = base.alphas_cumprod[s]
    ab_prev = np.full_like(ab, 1.0) if prev < 0 else np.full_like(ab, base.alphas_cumprod[prev])
    post = posterior_coefficients(ab, ab_prev)
    with np.errstate(divide="ignore"):  # the posterior variance is 0 on the step to the data (no noise is added)
        log_small = np.log(post["posterior_variance"])
    return Transition(sigma=alpha_bar_to_sigma(ab), t=s.astype(np.float64), ab=ab, ab_prev=ab_prev,
                      coef1=post["coef1"], coef2=post["coef2"], std_small=np.sqrt(post["posterior_variance"]),
                      std_large=np.sqrt(post["betas"]), log_beta=np.log(post["betas"]), log_small=log_small)


def _bc(v, x: torch.Tensor):
    """A float stays a float; a per-sample array becomes a (B, 1, ...) tensor like ``x``."""
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.asarray(v, dtype=np.float64)).to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
    return v


def ddpm_update(x, x0, tr: Transition, z, variance: str, extras: dict, last: bool):
    """Ancestral step: the posterior mean of q(x_prev | x_t, x̂_0) plus noise (none on the last step)."""
    mean = _bc(tr.coef1, x) * x0 + _bc(tr.coef2, x) * x
    if last:
        return mean
    if variance == "small":
        std = _bc(tr.std_small, x)
    elif variance == "large":
        std = _bc(tr.std_large, x)
    else:  # ADM's learned interpolation exp(f·log β + (1 − f)·log β̃), f = (v + 1) / 2
        frac = (extras["var_values"] + 1) / 2
        std = torch.exp(0.5 * (frac * _bc(tr.log_beta, x) + (1 - frac) * _bc(tr.log_small, x)))
    return mean + std * z


def ddim_update(x, x0, tr: Transition, eta: float, z, last: bool):
    """DDIM step: ε re-derived from the (clipped) x̂_0, then x_prev = sqrt(ᾱ_prev)·x̂_0 + direction + η-noise."""
    xp = np if tr.per_sample else math
    ab, ab_prev = tr.ab, tr.ab_prev
    eps = (x - _bc(xp.sqrt(ab), x) * x0) / _bc(xp.sqrt(1 - ab), x)
    sig = eta * xp.sqrt((1 - ab_prev) / (1 - ab)) * xp.sqrt(1 - ab / ab_prev)
    keep = np.maximum(1 - ab_prev - sig**2, 0.0) if tr.per_sample else max(1 - ab_prev - sig**2, 0.0)
    x_next = _bc(xp.sqrt(ab_prev), x) * x0 + _bc(xp.sqrt(keep), x) * eps
    return x_next + _bc(sig, x) * z if (z is not None and not last) else x_next


def check_eta(eta) -> float:
    """DDIM's η as a float in [0, 1] (0: deterministic, 1: ancestral); above 1 the step's noise would exceed the
    posterior's (ADM's and diffusers' DDIM give NaN there)."""
    eta = real_number(eta, "eta")
    if not (math.isfinite(eta) and 0 <= eta <= 1):
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: ancestral), got {eta}; above 1 the "
                         f"step's noise would exceed what the posterior allows (ADM and diffusers give NaN there)")
    return eta


def clip_bound(clip, denoiser) -> Optional[float]:
    """The bound r of the x̂_0 clipping to [-r, r] that the ``clip`` option asks for (None: no clipping).
    ``clip``: None = the model's own (the denoiser's ``clip_x0``; 1.0 where it has none, ADM's default),
    True = 1.0, False or 0 = none, a number > 0 = that bound (numpy and 0-d torch booleans count as booleans)."""
    if clip is None:
        return getattr(denoiser, "clip_x0", 1.0)
    if isinstance(clip, torch.Tensor) and clip.ndim == 0 and clip.dtype == torch.bool:
        clip = bool(clip)
    if isinstance(clip, (bool, np.bool_)):
        return 1.0 if clip else None
    if isinstance(clip, (int, float, np.integer, np.floating)) and float(clip) == 0:
        return None  # 0: no clipping, as False (what a falsy clip always meant)
    return check_clip_x0(clip, "clip")


def _vp_loop(denoiser, x_T, chain: RespacedChain, update: Callable, noise, callback, clip, policy,
             want_var: bool = False):
    """Walk the chain from its noisiest step; ``update(x, x0, transition, extras, step, last)`` makes one step."""
    if not hasattr(chain, "posterior_log_variance_clipped"):
        raise TypeError(f"the VP samplers walk a respaced chain (VPSchedule.respaced(timesteps)), got "
                        f"{type(chain).__name__}; for timesteps from respace(T, n), pass schedule.respaced(timesteps)")
    den, x, n = as_denoiser(denoiser), x_T.to(torch.float64), len(chain)
    bound = clip_bound(clip, den)
    state = None if policy is None else policy.start(chain, x.shape[0])
    for step, i in enumerate(range(n - 1, -1, -1)):
        s = None if state is None else state.current()  # per-sample timesteps, or None: the chain's own step
        tr = chain_transition(chain, i) if s is None else pair_transition(chain.base, s, chain.prev_timestep(i))
        nominal = float(chain.sigmas[i])
        if s is None:
            x_sig = vp_to_sigma_space(x, tr.ab)
            D, extras = den.forward_full(x_sig, chain.sigmas[i], step_sigma=chain.sigmas[i])
        else:  # network asked at each sample's own noise level; λ stays keyed on the nominal step
            x_sig = vp_to_sigma_space(x, _bc(tr.ab, x))
            D, extras = den.forward_full(x_sig, torch.from_numpy(tr.sigma).to(x.device), step_sigma=nominal)
        if want_var and "var_values" not in extras:
            raise ValueError("variance='learned' needs a learned-variance model (2C output channels)")
        if callback is not None:  # the ε the step used; σ = ∞ (ᾱ = 0): the state x_t itself
            if s is None:
                eps_used = implied_eps(x_sig, D, float(chain.sigmas[i]))
                x_rep, t_rep = x_sig, tr.t
            else:
                eps_used = implied_eps(x_sig, D, _bc(tr.sigma, x))
                x_rep, t_rep = vp_to_sigma_space(x, sigma_to_alpha_bar(nominal)), torch.from_numpy(tr.t)
            callback(StepInfo(step, n, nominal, x_rep, D, eps_used, t=t_rep))
        x0 = D if bound is None else D.clamp(-bound, bound)
        x = update(x, x0, tr, extras, step, i == 0)
        if state is not None and i > 0:
            state.advance(x, i)
    return x


def sample_ddpm(denoiser, x: torch.Tensor, chain: RespacedChain, *, noise: Optional[Callable] = None,
                callback: Optional[Callable] = None, variance: Optional[str] = None, clip=None,
                time_shift=None) -> torch.Tensor:
    """Ancestral sampling of ADM (``p_sample_loop``) on the chain's timesteps, last to first.

    variance: ``small`` = posterior β̃ (fixed-small), ``large`` = β (fixed-large, ADM's first entry rule),
    ``learned`` = ADM's interpolation ``exp(f·log β + (1-f)·log β̃)`` with ``f = (v + 1) / 2`` from the model;
    None (default): the model's own, i.e. ``learned`` when the network predicts a variance, else ``small``.
    clip: the clipping of the x_0 estimate (:func:`clip_bound`): None (default) the model's own, [-1, 1] unless it
    says otherwise (ADM's default); True [-1, 1]; False none; a number r > 0 [-r, r]. time_shift: a next-timestep
    policy (TS-DDPM).
    Step noise ``noise(step)`` is drawn at every step but the last (which adds none), so its stream position
    depends only on the step.
    """
    if variance is not None and variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}: use one of {', '.join(VARIANCES)}")
    if noise is None:
        raise ValueError("ancestral DDPM needs a noise source (noise=...)")
    chosen = [variance]

    def update(x, x0, tr, extras, step, last):
        if chosen[0] is None:
            chosen[0] = "learned" if "var_values" in extras else "small"
        return ddpm_update(x, x0, tr, None if last else noise(step), chosen[0], extras, last)

    return _vp_loop(denoiser, x, chain, update, noise, callback, clip, time_shift, want_var=variance == "learned")


def sample_ddim(denoiser, x: torch.Tensor, chain: RespacedChain, *, noise: Optional[Callable] = None,
                callback: Optional[Callable] = None, eta: float = 0.0, clip=None,
                time_shift=None) -> torch.Tensor:
    """DDIM (ADM's ``ddim_sample``): ε is re-derived from the (clipped) x_0 estimate; η = 0 is deterministic,
    η = 1 is ancestral sampling with the posterior variance. The last step goes to ᾱ = 1. ``clip``: as for
    :func:`sample_ddpm`."""
    check_eta(eta)
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 needs a noise source (noise=...)")

    def update(x, x0, tr, extras, step, last):
        return ddim_update(x, x0, tr, eta, noise(step) if eta > 0 and not last else None, last)

    return _vp_loop(denoiser, x, chain, update, noise, callback, clip, time_shift)
