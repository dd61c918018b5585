"""Time-Shift sampling (TS-DDPM / TS-DDIM; Li, Qu, Yao, Sun & Moens, ICLR 2024, "Alleviating exposure bias in
diffusion models through sampling with shifted time steps").

Idea: a sample produced by the model's own earlier steps is not distributed like the training input of its nominal
timestep; its noise level usually fits a *neighbouring* timestep better. TS keeps the sampler and only changes the
timestep at which the network is asked, and from which the next update starts.

The rule implemented here (per sample: a sample's choice never uses the other samples of its batch):

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
:class:`~diffusion_es.core.scaling.EpsilonScaled` denoiser keys λ on the nominal step, exactly as without shifting.

It is a *next-timestep policy* of the VP samplers (:mod:`.vp`), not a sampler of its own: pass
``time_shift=TimeShift(window, cutoff, data_var)`` to :func:`~diffusion_es.samplers.sample_ddpm`,
:func:`~diffusion_es.samplers.sample_ddim` or :func:`~diffusion_es.samplers.sample` (``ddpm`` / ``ddim``); the step
rules, noise protocol and ES keying are theirs.

Callback: one :class:`StepInfo` per step. ``sigma`` and ``t`` are the nominal ones at steps where the rule is off
(window 1, the first step, below the cutoff); otherwise ``t`` is a float64 tensor (B,) of the timesteps actually
used and ``sigma`` the nominal σ, with ``x`` chosen so that ``info.x_vp`` is the exact VP state; ``denoised`` and
``eps`` are exact. The variance is taken per sample (not over the batch), so no sample's timestep depends on the others.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..core.schedules import RespacedChain, VPSchedule

__all__ = ["TimeShift", "choose_timesteps", "data_variance"]


def data_variance(x0: torch.Tensor) -> float:
    """Mean over samples of each sample's variance over its entries (the ``data_var`` of the TS rule)."""
    x = x0.reshape(len(x0), -1).to(torch.float64)
    return float(x.var(dim=1, unbiased=False).mean())


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


class TimeShift:
    """The TS next-timestep policy: ``window`` candidate timesteps around the nominal next one, shifting only
    while that is ``>= cutoff``; ``data_var`` as in :func:`choose_timesteps`. ``trace`` (a list), if given,
    receives per step the int64 array (B,) of timesteps the network was asked at."""

    def __init__(self, window: int = 1, cutoff: int = 0, data_var: float = 0.0, trace: Optional[list] = None):
        if isinstance(window, bool) or int(window) != window or window < 1:
            raise ValueError(f"window must be a whole number >= 1, got {window!r}")
        if isinstance(cutoff, bool) or int(cutoff) != cutoff or cutoff < 0:
            raise ValueError(f"cutoff must be a whole number >= 0, got {cutoff!r}")
        if not (math.isfinite(data_var) and data_var >= 0):
            raise ValueError(f"data_var must be finite and >= 0, got {data_var!r}")
        self.window, self.cutoff, self.data_var, self.trace = int(window), int(cutoff), float(data_var), trace

    def __repr__(self):
        return f"TimeShift(window={self.window}, cutoff={self.cutoff}, data_var={self.data_var})"

    def start(self, chain: RespacedChain, batch: int) -> "_Walk":
        return _Walk(self, chain, batch)


class _Walk:
    """One run of the policy: the timestep each sample is believed to be at."""

    def __init__(self, policy: TimeShift, chain: RespacedChain, batch: int):
        self.p, self.chain = policy, chain
        self.s = np.full(batch, chain.timesteps[-1], dtype=np.int64)
        self.shifted = False  # whether s came from the TS rule (decided per step, never by the batch's contents)

    def current(self) -> Optional[np.ndarray]:
        """The per-sample timesteps of this step, or None when every sample is at the chain's own step."""
        if self.p.trace is not None:
            self.p.trace.append(self.s.copy())
        return self.s if self.shifted else None

    def advance(self, x_next: torch.Tensor, i: int) -> None:
        """After step ``i`` (i > 0): choose the timesteps of step ``i − 1``."""
        ts = self.chain.timesteps
        nxt = int(ts[i - 1])
        self.shifted = self.p.window > 1 and nxt >= self.p.cutoff
        if self.shifted:
            lower = int(ts[i - 2]) if i > 1 else -1
            self.s = choose_timesteps(x_next, nxt, lower, self.s, self.chain.base, self.p.window, self.p.data_var)
        else:
            self.s = np.full(len(self.s), nxt, dtype=np.int64)
