"""Noise schedules: VP (variance-preserving) beta schedules, EDM sigma grids, and timestep respacing.

Conventions (float64 numpy throughout):

* A VP model with ``T`` training steps has ``betas[t]`` and ``alphas_cumprod[t]`` (ᾱ_t) for t = 0..T-1.
* The matching sigma of step t (EDM / k-diffusion "sigma space") is ``sigma_t = sqrt((1 - ᾱ_t) / ᾱ_t)``;
  a VP sample ``x_t`` corresponds to ``x = x_t / sqrt(ᾱ_t)`` (see :mod:`diffusion_es.core.param`).
* A *respaced* chain uses a subset of the T timesteps (ascending). Its betas are re-derived from ᾱ so that
  the marginals are unchanged: ``beta'_i = 1 - ᾱ_{t_i} / ᾱ_{t_{i-1}}`` with ``ᾱ_{t_{-1}} = 1`` (ADM's
  ``SpacedDiffusion``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .param import alpha_bar_to_sigma

__all__ = [
    "posterior_coefficients",
    "VPSchedule",
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
    return np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM's cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T)+s)/(1+s)·π/2), betas clipped."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=np.float64)


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
        if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b >= 1):
            raise ValueError("betas must lie in (0, 1)")
        object.__setattr__(self, "betas", b)
        object.__setattr__(self, "alphas_cumprod", np.cumprod(1.0 - b))
        object.__setattr__(self, "sigmas", alpha_bar_to_sigma(self.alphas_cumprod))
        object.__setattr__(self, "log_sigmas", np.log(self.sigmas))

    # ---- constructors -------------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "VPSchedule":
        return cls(linear_betas(T, beta_start, beta_end))

    @classmethod
    def cosine(cls, T: int = 1000) -> "VPSchedule":
        return cls(cosine_betas(T))

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> "VPSchedule":
        if name == "linear":
            return cls.linear(T)
        if name == "cosine":
            return cls.cosine(T)
        raise ValueError(f"unknown beta schedule {name!r}: use 'linear' or 'cosine'")

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
        """
        ls = np.log(np.clip(np.asarray(sigma, dtype=np.float64), self.sigmas[0], self.sigmas[-1]))
        return np.interp(ls, self.log_sigmas, np.arange(self.T, dtype=np.float64))

    def t_to_sigma(self, t):
        """Inverse of :meth:`sigma_to_t`: σ for a continuous timestep, log-linear between table entries."""
        return np.exp(np.interp(np.asarray(t, dtype=np.float64), np.arange(self.T, dtype=np.float64),
                                self.log_sigmas))

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


# ---- respacing -------------------------------------------------------------------------------------------
SPACINGS = ("adm", "linspace", "leading", "trailing")


def respace(T: int, n: int, spacing: str = "adm", steps_offset: int = 0) -> np.ndarray:
    """Pick ``n`` of the ``T`` training timesteps, ascending.

    * ``adm`` / ``linspace``: ``round(linspace(0, T-1, n))`` with both ends included (ADM's uniform section
      spacing, diffusers' "linspace"; ties round half to even in both).
    * ``leading``: diffusers' default, ``arange(n) * (T // n) + steps_offset``.
    * ``trailing``: diffusers' "trailing", ``round(arange(T, 0, -T/n)) - 1`` (includes T-1).
    """
    if not (1 <= n <= T):
        raise ValueError(f"number of sampling steps must be in [1, {T}], got {n}")
    if spacing in ("adm", "linspace"):
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
    if n == 1:
        return np.array([sigma_max, 0.0])
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig[0], sig[-1] = sigma_max, sigma_min
    return np.concatenate([sig, [0.0]])
