"""Time-Shift sampling (TS-DDPM / TS-DDIM; Li, Qu, Yao, Sun & Moens, ICLR 2024, "Alleviating exposure bias in
diffusion models through sampling with shifted time steps").

Idea: a sample produced by the model's own earlier steps is not distributed like the training input of its nominal
timestep; its noise level usually fits a *neighbouring* timestep better. TS keeps the sampler and only changes the
timestep at which the network is asked, and from which the next update starts.

The rule implemented here (per sample, so a sample depends only on its own seed, never on its batch):

1. The chain walks the nominal (respaced) timesteps ``t_{N-1} > … > t_0``. The current state ``x`` is believed to
   be at timestep ``s_k`` (``s_{N-1} = t_{N-1}``): the network is evaluated at ``σ(s_k)`` and the update goes from
   ``ᾱ_{s_k}`` to the nominal next ``ᾱ_{t_{k-1}}`` (the DDPM posterior / DDIM step between those two levels).
2. After the update, the sample's empirical variance ``v̂ = Var(x_next)`` over all its C·H·W entries (VP space) is
   compared with the variance the forward process implies at each candidate timestep ``τ``:
   ``v(τ) = ᾱ_τ · data_var + (1 − ᾱ_τ)``, and ``s_{k-1} = argmin_τ |v̂ − v(τ)|`` (ties go to the candidate nearest
   the nominal one). With ``data_var = 0`` this is the paper's rule ``|v̂ − (1 − ᾱ_τ)|`` (it drops ``ᾱ_τ·Var(x_0)``,
   which is small at the large t where shifting is done); ``data_var`` = the data's per-sample variance
   (:func:`data_variance`) is the exact forward-process value for any t.
3. The candidates are the ``window`` integer timesteps of the *base* T-step table around the nominal next timestep,
   ``t_{k-1} − ⌊(w−1)/2⌋ … t_{k-1} + ⌊w/2⌋``, restricted to ``t_{k-2} < τ < s_k`` (the chain keeps moving down) and
   to ``[0, T−1]``. ``window = 1`` is the plain sampler, bit for bit.
4. Cutoff: shifting is only done while the nominal next timestep is ``>= cutoff`` (the paper's t_c); below it
   ``s = t`` (near the data all neighbouring timesteps look alike, and the variance rule breaks down).

Epsilon Scaling: λ is bound to the *nominal* σ grid, and a shifted evaluation at ``σ(s_k)`` can fall into another
step's interval. The sampler passes ``step_sigma = σ(t_k)`` (the nominal σ of the step) with every evaluation, so an
:class:`~diffusion_es.scaling.EpsilonScaled` denoiser keys λ on the nominal step, exactly as without shifting.

Noise protocol: as :func:`~diffusion_es.samplers.sample_ddpm` / ``sample_ddim``: ``noise(step)`` at every step
(DDPM) or at every step when η > 0 (DDIM); :func:`sample_timeshift` uses :class:`SeedNoise` per seed.

Callback: one :class:`StepInfo` per step. ``sigma`` and ``t`` are the nominal ones at steps where the rule is off
(window 1, the first step, below the cutoff); otherwise ``t`` is a float64 tensor (B,) of the timesteps actually
used and ``sigma`` the nominal σ, with ``x`` chosen so that ``info.x_vp`` is the exact VP state; ``denoised`` and
``eps`` are exact. The variance is taken per sample (not over the batch), so a sample depends only on its seed.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.param import as_denoiser
from ..core.scaling import LambdaSchedule, epsilon_scaled
from ..core.schedules import RespacedChain, VPSchedule
from .common import StepInfo, over_seed_batches
from .vp import VARIANCES

__all__ = ["sample_ts_ddpm", "sample_ts_ddim", "sample_timeshift", "choose_timesteps", "data_variance",
           "TS_SAMPLERS"]

TS_SAMPLERS = ("ddpm", "ddim")


def data_variance(x0: torch.Tensor) -> float:
    """Mean over samples of each sample's variance over its entries (the ``data_var`` of the TS rule)."""
    x = x0.reshape(len(x0), -1).to(torch.float64)
    return float(x.var(dim=1, unbiased=False).mean())


def _check(window: int, cutoff: int, data_var: float) -> None:
    if int(window) != window or window < 1:
        raise ValueError(f"time-shift window must be a whole number >= 1, got {window!r}")
    if int(cutoff) != cutoff or cutoff < 0:
        raise ValueError(f"time-shift cutoff must be a whole number >= 0, got {cutoff!r}")
    if not (math.isfinite(data_var) and data_var >= 0):
        raise ValueError(f"time-shift data_var must be finite and >= 0, got {data_var!r}")


def choose_timesteps(x_next: torch.Tensor, nominal: int, lower: int, upper: np.ndarray, base: VPSchedule,
                     window: int, data_var: float = 0.0) -> np.ndarray:
    """The TS rule for one step: per sample, the candidate timestep whose forward-process variance
    ``ᾱ_τ·data_var + 1 − ᾱ_τ`` is nearest the sample's variance. ``x_next`` is the VP state (B, ...);
    candidates lie in the window around ``nominal`` with ``lower < τ < upper[b]`` (``upper`` per sample)."""
    offs = np.arange(-((window - 1) // 2), window // 2 + 1, dtype=np.int64)
    # candidates ordered by distance to the nominal step (nominal first), so argmin breaks ties toward it
    offs = offs[np.argsort(np.abs(offs) * 2 - (offs > 0), kind="stable")]
    cand = nominal + offs
    cand = cand[(cand >= 0) & (cand < base.T) & (cand > lower)]
    v_hat = x_next.reshape(len(x_next), -1).var(dim=1, unbiased=False).cpu().numpy()
    ab = base.alphas_cumprod[cand]
    v_tau = ab * data_var + (1.0 - ab)
    err = np.abs(v_hat[:, None] - v_tau[None, :])
    err[cand[None, :] >= np.asarray(upper).reshape(-1, 1)] = np.inf  # never at or above the current level
    return cand[np.argmin(err, axis=1)]


def _bc(v: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(v, dtype=np.float64)).to(x.device).reshape(-1, *([1] * (x.ndim - 1)))


def _pair_coeffs(base: VPSchedule, s: np.ndarray, b: int) -> dict:
    """Coefficients of the transition from timestep ``s`` (per sample) to ``b`` (b = −1: to the data, ᾱ = 1),
    the same formulas as :class:`RespacedChain` for a chain ``[b, s]``."""
    ab = base.alphas_cumprod[s]
    ab_prev = np.full_like(ab, 1.0) if b < 0 else np.full_like(ab, base.alphas_cumprod[b])
    betas = 1.0 - ab / ab_prev
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    return {"ab": ab, "ab_prev": ab_prev, "betas": betas, "post_var": post_var,
            "coef1": betas * np.sqrt(ab_prev) / (1.0 - ab),
            "coef2": (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab)}


def _run(mode: str, denoiser, x_T, chain: RespacedChain, noise, window: int, cutoff: int, data_var: float,
         variance: str, eta: float, clip: bool, callback, trace):
    _check(window, cutoff, data_var)
    base, ts = chain.base, chain.timesteps
    den, x, n = as_denoiser(denoiser), x_T.to(torch.float64), len(chain)
    B = x.shape[0]
    s = np.full(B, ts[-1], dtype=np.int64)  # the timestep each sample is believed to be at
    shifted = False  # whether s came from the TS rule (decided per step, never by the batch's contents)
    for step, i in enumerate(range(n - 1, -1, -1)):
        nominal_sigma = float(chain.sigmas[i])
        if not shifted:
            # exactly the arithmetic of samplers.vp (window 1 is the plain sampler bit for bit)
            ab = chain.alphas_cumprod[i]
            x_sig = x / math.sqrt(ab)
            D, extras = den.forward_full(x_sig, chain.sigmas[i], step_sigma=chain.sigmas[i])
            eps_used = (x_sig - D) / chain.sigmas[i]
            if callback is not None:
                callback(StepInfo(step, n, nominal_sigma, x_sig, D, eps_used, t=float(ts[i])))
        else:
            c = _pair_coeffs(base, s, int(ts[i - 1]) if i > 0 else -1)
            ab_t = _bc(c["ab"], x)
            sig_s = np.sqrt((1.0 - c["ab"]) / c["ab"])
            x_sig = x / ab_t.sqrt()
            D, extras = den.forward_full(x_sig, torch.from_numpy(sig_s).to(x.device), step_sigma=nominal_sigma)
            if callback is not None:
                eps_used = (x_sig - D) / _bc(sig_s, x)
                callback(StepInfo(step, n, nominal_sigma, x * math.sqrt(1.0 + nominal_sigma**2), D, eps_used,
                                  t=torch.from_numpy(s.astype(np.float64))))
        if trace is not None:
            trace.append(s.copy())
        x0 = D.clamp(-1, 1) if clip else D
        if mode == "ddpm":
            if not shifted:
                mean = chain.posterior_mean_coef1[i] * x0 + chain.posterior_mean_coef2[i] * x
                if variance == "small":
                    std = math.exp(0.5 * chain.posterior_log_variance_clipped[i])
                else:
                    std = math.exp(0.5 * math.log(chain.large_variance[i]))
            else:
                mean = _bc(c["coef1"], x) * x0 + _bc(c["coef2"], x) * x
                if i == 0:
                    std = 0.0  # no noise at the last step
                elif variance == "small":
                    std = _bc(np.sqrt(c["post_var"]), x)
                else:
                    std = _bc(np.sqrt(c["betas"]), x)
            z = noise(step)
            x_next = mean + std * z if i > 0 else mean
        else:
            if not shifted:
                ab, ab_prev = chain.alphas_cumprod[i], chain.alphas_cumprod_prev[i]
                eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
                sig = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
                x_next = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sig**2, 0.0)) * eps
            else:
                ab, ab_prev = c["ab"], c["ab_prev"]
                eps = (x - _bc(np.sqrt(ab), x) * x0) / _bc(np.sqrt(1 - ab), x)
                sig = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
                x_next = _bc(np.sqrt(ab_prev), x) * x0 + _bc(np.sqrt(np.maximum(1 - ab_prev - sig**2, 0.0)), x) * eps
            if eta > 0:
                z = noise(step)
                if i > 0:
                    x_next = x_next + (sig * z if not shifted else _bc(sig, x) * z)
        x = x_next
        if i > 0:
            nxt = int(ts[i - 1])
            shifted = window > 1 and nxt >= cutoff
            if shifted:
                lower = int(ts[i - 2]) if i > 1 else -1
                s = choose_timesteps(x, nxt, lower, s, base, int(window), data_var)
            else:
                s = np.full(B, nxt, dtype=np.int64)
    return x


def sample_ts_ddpm(denoiser, x_T: torch.Tensor, chain: RespacedChain, noise: Callable[[int], torch.Tensor],
                   window: int = 1, cutoff: int = 0, data_var: float = 0.0, variance: str = "small",
                   clip: bool = True, callback: Optional[Callable] = None, trace: Optional[list] = None):
    """TS-DDPM: ancestral sampling (ADM's posterior, ``variance`` small or large) with time shifting.

    ``trace`` (a list), if given, receives per step the int64 array (B,) of timesteps the network was asked at.
    """
    if variance not in VARIANCES or variance == "learned":
        raise ValueError(f"time-shift DDPM supports variance 'small' or 'large', got {variance!r}")
    return _run("ddpm", denoiser, x_T, chain, noise, window, cutoff, data_var, variance, 0.0, clip, callback, trace)


def sample_ts_ddim(denoiser, x_T: torch.Tensor, chain: RespacedChain, eta: float = 0.0,
                   noise: Optional[Callable[[int], torch.Tensor]] = None, window: int = 1, cutoff: int = 0,
                   data_var: float = 0.0, clip: bool = True, callback: Optional[Callable] = None,
                   trace: Optional[list] = None):
    """TS-DDIM: DDIM (η = 0 deterministic) with time shifting; see the module docstring for the rule."""
    if eta < 0 or not math.isfinite(eta):
        raise ValueError(f"DDIM eta must be finite and >= 0, got {eta}")
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 needs a noise source")
    return _run("ddim", denoiser, x_T, chain, noise, window, cutoff, data_var, "small", float(eta), clip,
                callback, trace)


def sample_timeshift(denoiser, sampler: str, steps: int, shape: Sequence[int], seeds: Sequence[int],
                     schedule: Optional[VPSchedule] = None, es: Optional[LambdaSchedule] = None, window: int = 1,
                     cutoff: int = 0, data_var: float = 0.0, batch_size: int = 256, device="cpu",
                     spacing: str = "adm", callback: Optional[Callable] = None, **sampler_kwargs) -> torch.Tensor:
    """Front end like :func:`diffusion_es.samplers.sample`: one sample per seed (per-seed noise), optional ES
    bound to the nominal grid, TS with ``window`` / ``cutoff`` / ``data_var``. Returns float64 on the CPU."""
    from . import SamplingPlan

    if sampler not in TS_SAMPLERS:
        raise ValueError(f"time-shift sampling works with {', '.join(TS_SAMPLERS)}, got {sampler!r}")
    if schedule is None:
        schedule = getattr(denoiser, "schedule", None) or VPSchedule.linear()
    plan = SamplingPlan(sampler, steps, schedule, spacing=spacing)
    den = epsilon_scaled(as_denoiser(denoiser), es, plan.sigmas)
    fn = sample_ts_ddpm if sampler == "ddpm" else sample_ts_ddim
    return over_seed_batches(seeds, shape, batch_size, device,
                             lambda noise, cb: fn(den, noise.initial(), plan.chain, noise=noise, window=window,
                                                  cutoff=cutoff, data_var=data_var, callback=cb, **sampler_kwargs),
                             callback)
