"""Noise schedules: VP (variance-preserving) beta schedules, EDM sigma grids, and timestep respacing.

Conventions (float64 numpy throughout):

* A VP model with ``T`` training steps has ``betas[t]`` and ``alphas_cumprod[t]`` (ᾱ_t) for t = 0..T-1.
* The matching sigma of step t (EDM / k-diffusion "sigma space") is ``sigma_t = sqrt((1 - ᾱ_t) / ᾱ_t)``;
  a VP sample ``x_t`` corresponds to ``x = x_t / sqrt(ᾱ_t)`` (see :mod:`diffusion_es.core.param`).
* Zero terminal SNR (Lin et al. 2024; diffusers ``rescale_betas_zero_snr``): ``ᾱ_{T-1} = 0``, i.e. ``β_{T-1} = 1``
  and ``σ_{T-1} = ∞`` (:func:`zero_terminal_snr`); see :mod:`diffusion_es.core.param` for the σ = ∞ convention.
* Rectified flow has no betas: :class:`FlowSchedule` gives its time grid (SD3-style shift), t = 1 is σ = ∞.
* A *respaced* chain uses a subset of the T timesteps (ascending). Its betas are re-derived from ᾱ so that
  the marginals are unchanged: ``beta'_i = 1 - ᾱ_{t_i} / ᾱ_{t_{i-1}}`` with ``ᾱ_{t_{-1}} = 1`` (ADM's
  ``SpacedDiffusion``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .param import alpha_bar_to_sigma, real_number

__all__ = [
    "posterior_coefficients",
    "VPSchedule",
    "FlowSchedule",
    "zero_terminal_snr",
    "flow_shift",
    "linear_betas",
    "cosine_betas",
    "karras_sigmas",
    "respace",
    "SPACINGS",
]


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear beta schedule, scaled by 1000/T as in ADM so that any T gives the same curve."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    scale = 1000.0 / T
    if scale * beta_end > 1:
        raise ValueError(f"the linear β schedule is scaled by 1000/T as in ADM, so at T = {T} it would end at β = "
                         f"{scale * beta_end:g} > 1; use T >= {math.ceil(1000 * beta_end)} or a smaller beta_end")
    return np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM's cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T)+s)/(1+s)·π/2), betas clipped."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=np.float64)


def zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2024), Algorithm 1: rescale sqrt(ᾱ) linearly so that its last value is 0 and its first is
    unchanged; returns the betas of the rescaled schedule (the last one is 1). diffusers' ``rescale_betas_zero_snr``."""
    b = np.asarray(betas, dtype=np.float64)
    s = np.sqrt(np.cumprod(1.0 - b))
    s0, sT = s[0], s[-1]
    if not s0 > sT:
        raise ValueError("zero terminal SNR needs a decreasing ᾱ (at least two betas > 0)")
    s = (s - sT) * s0 / (s0 - sT)
    ab = s**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def posterior_coefficients(ab, ab_prev) -> dict:
    """The Gaussian posterior q(x_s | x_t, x_0) between two VP noise levels ᾱ_t < ᾱ_s (``ab``, ``ab_prev``; floats
    or arrays, ᾱ_s = 1 for the step to the data): its β = 1 − ᾱ_t/ᾱ_s, variance β·(1 − ᾱ_s)/(1 − ᾱ_t) and the
    mean ``coef1·x_0 + coef2·x_t``. The one home of these formulas (respaced chains, time-shift, training)."""
    betas = 1.0 - ab / ab_prev
    return {"betas": betas, "posterior_variance": betas * (1.0 - ab_prev) / (1.0 - ab),
            "coef1": betas * np.sqrt(ab_prev) / (1.0 - ab),
            "coef2": (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab)}


@dataclass(frozen=True)
class VPSchedule:
    """A discrete VP noise schedule: the betas of the T training steps and everything derived from them."""

    betas: np.ndarray

    def __post_init__(self):
        b = np.asarray(self.betas, dtype=np.float64)
        if b.ndim != 1 or len(b) == 0:
            raise ValueError("betas must be a non-empty 1-D array")
        if len(b) > 1 and 0.5 < b[0] < 1 and 0 <= b[-1] < b[0]:  # ᾱ (in [0, 1) too) read as β: β tables rise
            raise ValueError(f"betas fall from {b[0]:.4g} to {b[-1]:.4g}: a β table rises from near 0 (the first "
                             f"step adds a little noise); this looks like ᾱ (alphas_cumprod): pass "
                             f"1 - ab / numpy.concatenate([[1.0], ab[:-1]]) as betas")
        if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b[:-1] >= 1) or b[-1] > 1 or \
                (len(b) == 1 and b[0] >= 1):
            raise ValueError("betas must lie in (0, 1); only the last may be 1 (zero terminal SNR)")
        ab = np.cumprod(1.0 - b)
        if b[-1] == 1:
            ab[-1] = 0.0  # exactly: σ = ∞ at the last training step
        object.__setattr__(self, "betas", b)
        object.__setattr__(self, "alphas_cumprod", ab)
        object.__setattr__(self, "sigmas", alpha_bar_to_sigma(ab))
        with np.errstate(divide="ignore"):
            object.__setattr__(self, "log_sigmas", np.log(self.sigmas))
        # the finite part of the table (all of it, unless the schedule has zero terminal SNR)
        object.__setattr__(self, "n_finite", int(np.count_nonzero(np.isfinite(self.sigmas))))

    # ---- constructors -------------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               zero_snr: bool = False) -> "VPSchedule":
        b = linear_betas(T, beta_start, beta_end)
        return cls(zero_terminal_snr(b) if zero_snr else b)

    @classmethod
    def cosine(cls, T: int = 1000, zero_snr: bool = False) -> "VPSchedule":
        b = cosine_betas(T)
        return cls(zero_terminal_snr(b) if zero_snr else b)

    @classmethod
    def from_name(cls, name: str, T: int = 1000, zero_snr: bool = False) -> "VPSchedule":
        if name == "linear":
            return cls.linear(T, zero_snr=zero_snr)
        if name == "cosine":
            return cls.cosine(T, zero_snr=zero_snr)
        raise ValueError(f"unknown beta schedule {name!r}: use 'linear' or 'cosine'")

    @property
    def zero_snr(self) -> bool:
        """ᾱ = 0 at the last training step (σ = ∞)."""
        return self.n_finite < self.T

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    # ---- sigma <-> t --------------------------------------------------------------------------------
    def sigma_to_t(self, sigma):
        """Continuous timestep for a sigma: linear interpolation of t in log-sigma (k-diffusion's rule).

        Sigmas that equal a table entry map to that integer exactly. Works on numpy arrays and floats.
        With zero terminal SNR, σ = ∞ maps to T − 1 and a finite σ above the last finite table entry to that entry's
        timestep (there is no log-linear interpolation towards ∞).
        """
        n = self.n_finite
        sig = np.asarray(sigma, dtype=np.float64)
        ls = np.log(np.clip(sig, self.sigmas[0], self.sigmas[n - 1]))
        t = np.interp(ls, self.log_sigmas[:n], np.arange(n, dtype=np.float64))
        return np.where(np.isinf(sig), float(self.T - 1), t) if n < self.T else t

    def t_to_sigma(self, t):
        """Inverse of :meth:`sigma_to_t`: σ for a continuous timestep, log-linear between table entries
        (zero terminal SNR: t ≥ T − 1 is σ = ∞, t in (T − 2, T − 1) the last finite entry)."""
        n = self.n_finite
        tt = np.asarray(t, dtype=np.float64)
        s = np.exp(np.interp(tt, np.arange(n, dtype=np.float64), self.log_sigmas[:n]))
        return np.where(tt >= self.T - 1, np.inf, s) if n < self.T else s

    def respaced(self, timesteps) -> "RespacedChain":
        return RespacedChain(self, np.asarray(timesteps, dtype=np.int64))


@dataclass(frozen=True)
class RespacedChain:
    """The ancestral chain over a subset of timesteps (ascending), with ADM's re-derived coefficients.

    Index i runs over the kept timesteps t_0 < t_1 < ... < t_{N-1}; sampling walks i = N-1 .. 0.
    """

    base: VPSchedule
    timesteps: np.ndarray

    def __post_init__(self):
        ts = np.asarray(self.timesteps, dtype=np.int64)
        if ts.ndim != 1 or len(ts) == 0:
            raise ValueError("timesteps must be a non-empty 1-D array")
        if np.any(np.diff(ts) <= 0):
            raise ValueError("timesteps must be strictly increasing")
        if ts[0] < 0 or ts[-1] >= self.base.T:
            raise ValueError(f"timesteps must lie in [0, {self.base.T - 1}]")
        ab = self.base.alphas_cumprod[ts]
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        post = posterior_coefficients(ab, ab_prev)  # q(x_{i-1} | x_i, x_0) of the respaced chain
        betas, post_var = post["betas"], post["posterior_variance"]
        # ADM: the posterior variance is 0 at i = 0; its log is clipped by using the value of i = 1
        post_var_clipped = np.concatenate([post_var[1:2], post_var[1:]]) if len(ts) > 1 else betas.copy()
        object.__setattr__(self, "timesteps", ts)
        object.__setattr__(self, "alphas_cumprod", ab)
        object.__setattr__(self, "alphas_cumprod_prev", ab_prev)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "sigmas", alpha_bar_to_sigma(ab))
        object.__setattr__(self, "posterior_variance", post_var)
        object.__setattr__(self, "posterior_log_variance_clipped", np.log(post_var_clipped))
        object.__setattr__(self, "posterior_mean_coef1", post["coef1"])
        object.__setattr__(self, "posterior_mean_coef2", post["coef2"])
        # ADM's "fixed large" variance: betas, with the first entry replaced by the posterior variance of i = 1
        large = np.concatenate([post_var[1:2], betas[1:]]) if len(ts) > 1 else betas.copy()
        object.__setattr__(self, "large_variance", large)

    def __len__(self) -> int:
        return len(self.timesteps)

    def prev_timestep(self, i: int) -> int:
        """The timestep step ``i`` goes to: ``t_{i-1}``, or -1 (the data, ᾱ = 1) for the last step."""
        return int(self.timesteps[i - 1]) if i > 0 else -1


# ---- rectified flow ----------------------------------------------------------------------------------------
def flow_shift(t, shift: float):
    """SD3's time shift ``t' = s·t / (1 + (s − 1)·t)`` (s = 1: unchanged; t = 0 and t = 1 are fixed points)."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class FlowSchedule:
    """The time grid of a rectified-flow model (``x_t = (1 − t) x_0 + t ε``): ``T`` training time steps of size
    1/T (the network sees ``τ = 1000·t`` in diffusers' convention) and the SD3-style ``shift``.

    :meth:`grid` is exactly the grid of diffusers' ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=T,
    shift=shift).set_timesteps(n)`` (and of ``FlowMatchHeunDiscreteScheduler``), float32 values included: n times
    from t = 1 (σ = ∞) down to ``t_min``, then 0, where diffusers' ``t_min`` is the shifted 1/T shifted once more
    (its table is shifted when built and its linspace again when sampling; we follow it so that grids agree bit
    for bit). Static shift only (not Flux's resolution-dependent ``use_dynamic_shifting``).
    """

    T: int = 1000
    shift: float = 1.0

    def __post_init__(self):
        if isinstance(self.T, bool) or int(self.T) != self.T or int(self.T) < 1:
            raise ValueError(f"T must be a whole number >= 1, got {self.T}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be finite and > 0, got {self.shift}")
        import torch

        # diffusers' training table, in its float32 arithmetic: its first and last entries bound every grid
        t = torch.from_numpy(np.linspace(1, self.T, self.T, dtype=np.float32)[::-1].copy()) / int(self.T)
        t = self.shift * t / (1 + (self.shift - 1) * t)
        object.__setattr__(self, "t_max", float(t[0]))
        object.__setattr__(self, "t_min", float(t[-1]))

    @property
    def sigma_max(self) -> float:
        return math.inf if self.t_max == 1.0 else self.t_max / (1.0 - self.t_max)

    @property
    def sigma_min(self) -> float:
        return self.t_min / (1.0 - self.t_min)

    def grid(self, n: int) -> np.ndarray:
        """n + 1 times, descending from ``t_max`` (= 1) to 0 (float64 holding diffusers' float32 values)."""
        import torch

        if isinstance(n, bool) or int(n) != n or int(n) < 1:
            raise ValueError(f"number of steps must be a whole number >= 1, got {n}")
        ts = np.linspace(self.t_max * self.T, self.t_min * self.T, int(n)) / self.T
        ts = torch.from_numpy(flow_shift(ts, self.shift)).to(torch.float32)
        return np.concatenate([ts.double().numpy(), [0.0]])

    def with_shift(self, shift: Optional[float]) -> "FlowSchedule":
        return self if shift is None or float(shift) == self.shift else FlowSchedule(self.T, float(shift))


# ---- respacing -------------------------------------------------------------------------------------------
SPACINGS = ("adm", "linspace", "leading", "trailing")


def respace(T: int, n: int, spacing: str = "adm", steps_offset: int = 0) -> np.ndarray:
    """Pick ``n`` of the ``T`` training timesteps, ascending.

    * ``adm``: guided-diffusion's ``space_timesteps(T, [n])``: both ends included, a running float sum of the
      stride (T-1)/(n-1), each total rounded (Python's ``round``, half to even). It is ``linspace`` except where a
      total lands on a tie: 278 of n = 1..1000 at T = 1000 (e.g. n = 21: 499 where linspace has 500), none of
      10, 20, 50, 100.
    * ``linspace``: diffusers' "linspace", ``round(linspace(0, T-1, n))`` (numpy's rounding, half to even).
    * ``leading``: diffusers' default, ``arange(n) * (T // n) + steps_offset``.
    * ``trailing``: diffusers' "trailing", ``round(arange(T, 0, -T/n)) - 1`` (includes T-1).
    """
    if not (1 <= n <= T):
        raise ValueError(f"number of sampling steps must be in [1, {T}], got {n}")
    if spacing == "adm":
        stride, total, ts = (T - 1) / (n - 1) if n > 1 else 1, 0.0, []
        for _ in range(n):  # ADM's loop as written: the sum's float round-off decides its ties
            ts.append(round(total))
            total += stride
        ts = np.asarray(ts, dtype=np.int64)
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, n)).astype(np.int64)
    elif spacing == "leading":
        ts = np.arange(n, dtype=np.int64) * (T // n) + steps_offset
    elif spacing == "trailing":
        ts = (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)[::-1]
    else:
        raise ValueError(f"unknown spacing {spacing!r}: use one of {', '.join(SPACINGS)}")
    ts = np.unique(ts)
    if len(ts) != n or ts[0] < 0 or ts[-1] >= T:
        raise ValueError(f"spacing {spacing!r} cannot place {n} distinct steps in T={T}")
    return ts


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM's sampling grid: n sigmas from sigma_max down to sigma_min (rho-spaced), then a final 0."""
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    rho = real_number(rho, "rho (EDM's grid exponent)")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho (EDM's grid exponent, 7 by default) must be a finite number > 0, got {rho!r}")
    if n == 1:
        return np.array([sigma_max, 0.0])
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig[0], sig[-1] = sigma_max, sigma_min
    return np.concatenate([sig, [0.0]])
