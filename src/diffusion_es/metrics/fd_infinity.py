"""FD∞: the Fréchet distance extrapolated to infinitely many samples (Chong & Forsyth, "Effectively Unbiased FID
and Inception Score and where to find them", CVPR 2020).

FD computed from N samples against fixed reference statistics is biased upward, and to first order the bias is
proportional to 1/N:

    E[FD_N] = FD∞ + k/N + O(1/N²).

(The mean term alone shows it: E|μ̂ − μ_r|² = |μ − μ_r|² + tr Σ / N; the covariance terms add more of the same
order.) So evaluate FD on random subsets of the samples of several sizes N_1 < … < N_K = N (a random subset of an
i.i.d. sample is an i.i.d. sample, so each FD_{N_i} follows the expansion), fit FD(N) = FD∞ + k/N by ordinary
least squares in x = 1/N, and report the intercept FD∞ (and k, the fit's residuals and the FD at the full N).

What it removes and what it does not:

* it removes the **sample-side** bias only: the reference statistics are taken as exact, so a small reference
  (e.g. 360 held-out digits) keeps its own bias and noise (see :mod:`.variance` to measure that part);
* it trades bias for variance: the intercept is an extrapolation beyond the largest N, so FD∞ is noisier than
  FD_N from the same samples (the OLS standard error of the intercept is returned; it treats the subset FDs as
  independent, which they are not — nested subsets of one pool — so read it as indicative and use seed sets or
  :mod:`.bootstrap` for intervals);
* the 1/N law is an asymptotic statement for N well above the feature dimension D; the default smallest subset
  is max(N/10, 2D) (Chong & Forsyth used 5k..50k for D = 2048). With N < 4D the sizes span less than a factor 2
  and the extrapolation is long: prefer more samples.

Subsets are drawn with ``generator.choice(N, N_i, replace=False)``, ``repeats`` times per size (their FDs are
averaged); the largest size is the full sample set (drawn once, no randomness). FDs use ``method="eig"`` by
default (the same number as ``"sqrtm"`` to 1e-6, tests/test_metrics_frechet.py; faster for the many subsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .fd_fixed_ref import FixedRefFD
from .frechet import _as_f64_2d
from .rng import numpy_generator

__all__ = ["FDInfinityResult", "fd_infinity", "fit_inverse_n", "default_sizes"]


@dataclass
class FDInfinityResult:
    fd_inf: float                 # intercept of FD = FD∞ + k/N
    slope: float                  # k
    fd_full: float                # FD of all N samples (the usual number)
    intercept_se: float           # OLS standard error of the intercept (indicative: subset FDs are correlated)
    residual_sd: float            # sd of the fit's residuals
    n: int                        # number of samples
    sizes: List[int] = field(default_factory=list)
    fds: List[float] = field(default_factory=list)   # mean FD over `repeats` subsets, per size

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_inverse_n(sizes: Sequence[float], values: Sequence[float]):
    """OLS fit of values = a + k / sizes: ``(a, k, se(a), residual sd)``."""
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    yv = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("the fit needs at least two different sizes")
    a_mat = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(a_mat, yv, rcond=None)
    resid = yv - a_mat @ coef
    dof = len(x) - 2
    s2 = float(resid @ resid) / dof if dof > 0 else float("nan")
    cov = s2 * np.linalg.inv(a_mat.T @ a_mat)
    return float(coef[0]), float(coef[1]), float(np.sqrt(cov[0, 0])), float(np.sqrt(s2))


def default_sizes(n: int, dim: int, n_points: int = 15, min_size: Optional[int] = None) -> List[int]:
    """``n_points`` sizes evenly spaced from max(n/10, 2·dim) (or ``min_size``) to n, distinct integers; the
    smallest is capped at n/2 (so that the fit spans a factor 2 in n), and must exceed ``dim``."""
    if min_size is not None and int(min_size) <= dim:
        raise ValueError(f"min_size {int(min_size)} is not above the feature dimension {dim}: its subsets' covariance "
                         f"is singular and FD(N) = FD∞ + k/N does not hold there; give more than {dim}")
    lo = int(min_size) if min_size is not None else max(int(np.ceil(n / 10)), 2 * dim)
    lo = min(lo, n // 2)
    if lo < 2 or lo <= dim:
        raise ValueError(f"too few samples ({n}) for FD∞ in {dim} dimensions: its subsets need more samples than "
                         f"dimensions (a full-rank covariance, where FD(N) = FD∞ + k/N holds), so at least "
                         f"{2 * (dim + 1)}; report FD at N instead, or use more samples")
    return sorted(set(int(round(v)) for v in np.linspace(lo, n, n_points)))


def fd_infinity(sample_feats, ref_stats, sizes: Optional[Sequence[int]] = None, n_points: int = 15,
                min_size: Optional[int] = None, repeats: int = 1, generator=None,
                method: str = "eig") -> FDInfinityResult:
    """FD∞ of ``sample_feats`` (N, D) against ``ref_stats`` (:class:`FeatureStats` or ``(mu, sigma)``).

    ``sizes``: subset sizes (default :func:`default_sizes`); ``generator``: ``np.random.Generator`` (required).
    """
    f = _as_f64_2d(sample_feats)
    n, dim = f.shape
    numpy_generator(generator, "fd_infinity")
    sizes = default_sizes(n, dim, n_points, min_size) if sizes is None else sorted(int(s) for s in sizes)
    if sizes[0] < 2 or sizes[-1] > n:
        raise ValueError(f"subset sizes must lie in [2, {n}], got {sizes[0]}..{sizes[-1]}")
    if sizes[0] <= dim:
        raise ValueError(f"subset size {sizes[0]} is not above the feature dimension {dim}: its covariance is singular "
                         f"and FD(N) = FD∞ + k/N does not hold there; use subsets of more than {dim} samples")
    fd = FixedRefFD(ref_stats, method)
    fds = []
    for s in sizes:
        if s == n:
            vals = [fd.of_features(f)]
        else:
            vals = [fd.of_features(f[generator.choice(n, s, replace=False)]) for _ in range(int(repeats))]
        fds.append(float(np.mean(vals)))
    a, k, se, rsd = fit_inverse_n(sizes, fds)
    full = fds[-1] if sizes[-1] == n else fd.of_features(f)
    return FDInfinityResult(fd_inf=a, slope=k, fd_full=float(full), intercept_se=se, residual_sd=rsd, n=n,
                            sizes=list(sizes), fds=fds)
