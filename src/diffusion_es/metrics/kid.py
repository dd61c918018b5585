"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018) on feature arrays, in float64.

KID is the squared maximum mean discrepancy between the feature distributions of samples X (m rows) and a
reference Y (n rows) under the cubic polynomial kernel

    k(x, y) = (γ x·y + c)^p,   p = 3, γ = 1/D, c = 1   (D = feature dimension),

estimated without bias (Gretton et al., JMLR 2012, eq. 3):

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m-1)) + Σ_{i≠j} k(y_i, y_j) / (n(n-1)) - 2 Σ_{i,j} k(x_i, y_j) / (mn).

Unlike FD it has no bias that depends on the sample size (E[MMD²_u] is the population MMD² for every m, n ≥ 2),
so numbers from different sample counts can be compared, and it can be slightly negative when the distributions
are equal. Two estimates are returned by :func:`kid`:

* ``full``: MMD²_u on all rows of X and Y (kernel sums taken in row blocks, memory O(block · max(m, n))).
* the **subset estimate** used by torch-fidelity and the KID paper: ``n_subsets`` times, draw ``subset_size`` rows
  of X and of Y without replacement and compute MMD²_u on them; report the mean and the standard deviation
  (``ddof=0``, as torch-fidelity does) of the subset values. The std describes the spread of one subset's value,
  not the error of the mean; for an interval use :mod:`.bootstrap` or several seed sets.

Subsets are drawn with ``generator.choice(m, subset_size, replace=False)`` then the same for n, once per subset:
with ``generator=np.random.RandomState(2020)`` the subsets are exactly torch-fidelity's (its default
``rng_seed``), with a ``np.random.Generator`` they are reproducible from its seed.

:func:`poly_mmd2_gaussian` is the population MMD² for two Gaussians under a polynomial kernel of degree ≤ 3, in
closed form from the Gaussian moments of u = x·y (x, y independent; x ~ N(μ, Σ), y ~ N(ν, Σ')):

    E u   = μ·ν
    E u²  = tr(ΣΣ') + μᵀΣ'μ + νᵀΣν + (μ·ν)²
    E u³  = (μ·ν)³ + 3(μ·ν)(μᵀΣ'μ + νᵀΣν + tr(ΣΣ')) + 6 μᵀΣ'Σν

(E u³ = Σ_ijk E[x_i x_j x_k] E[y_i y_j y_k] with E[x_i x_j x_k] = μ_iμ_jμ_k + μ_iΣ_jk + μ_jΣ_ik + μ_kΣ_ij), and
E k(x, y) = Σ_q C(p, q) γ^q c^(p-q) E u^q; MMD² = E k(x, x') + E k(y, y') - 2 E k(x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .rng import numpy_generator

__all__ = ["KIDResult", "kid", "mmd2_poly", "poly_kernel", "poly_mmd2_gaussian"]


def _f64(feats, what: str) -> np.ndarray:
    if hasattr(feats, "detach"):
        feats = feats.detach().cpu().numpy()
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, D), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{what} contain NaN or infinity")
    return f


def _gamma(gamma: Optional[float], dim: int) -> float:
    return 1.0 / dim if gamma is None else float(gamma)


def poly_kernel(x, y, degree: int = 3, gamma: Optional[float] = None, coef0: float = 1.0) -> np.ndarray:
    """The kernel matrix k(x_i, y_j) = (γ x_i·y_j + c)^p (γ = 1/D when None), float64."""
    x, y = _f64(x, "x"), _f64(y, "y")
    return (x @ y.T * _gamma(gamma, x.shape[1]) + coef0) ** degree


def _kernel_sums(x, y, same: bool, kw: dict, block: int):
    """(Σ_ij k(x_i, y_j), Σ_i k(x_i, x_i) if ``same``) in row blocks of x."""
    total, diag = 0.0, 0.0
    for s in range(0, len(x), block):
        kb = poly_kernel(x[s:s + block], y, **kw)
        total += float(kb.sum())
        if same:
            diag += float(np.trace(kb[:, s:s + block]))
    return total, diag


def mmd2_poly(x, y, degree: int = 3, gamma: Optional[float] = None, coef0: float = 1.0, block: int = 2048) -> float:
    """Unbiased MMD² (module docstring) of X (m, D) and Y (n, D) under the polynomial kernel; m, n ≥ 2."""
    x, y = _f64(x, "sample features"), _f64(y, "reference features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 rows on each side, have {m} and {n}")
    kw = dict(degree=degree, gamma=_gamma(gamma, x.shape[1]), coef0=coef0)
    sxx, dxx = _kernel_sums(x, x, True, kw, block)
    syy, dyy = _kernel_sums(y, y, True, kw, block)
    sxy, _ = _kernel_sums(x, y, False, kw, block)
    return (sxx - dxx) / (m * (m - 1)) + (syy - dyy) / (n * (n - 1)) - 2.0 * sxy / (m * n)


@dataclass
class KIDResult:
    full: float                      # MMD²_u on all rows
    mean: float                      # mean of the subset values (torch-fidelity's "kernel_inception_distance_mean")
    std: float                       # their std, ddof=0 (torch-fidelity's "kernel_inception_distance_std")
    n_subsets: int
    subset_size: int
    m: int                           # rows of X (samples)
    n: int                           # rows of Y (reference)
    subsets: List[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def kid(sample_feats, ref_feats, n_subsets: int = 100, subset_size: int = 1000, generator=None, degree: int = 3,
        gamma: Optional[float] = None, coef0: float = 1.0, full: bool = True) -> KIDResult:
    """KID of samples against a reference (module docstring).

    ``subset_size`` is clipped to min(m, n) (torch-fidelity refuses instead; with a 500-sample set the subsets
    are then permutations of the full sets and only ``full`` is informative). ``generator``: a
    ``np.random.Generator`` or ``np.random.RandomState`` that draws the subsets; None (the default) is a fresh
    ``np.random.RandomState(2020)``, torch-fidelity's own default, so the subsets are its subsets.
    ``full=False`` skips the full estimate (O(m² + n² + mn) kernel evaluations) and sets it to NaN.
    """
    x, y = _f64(sample_feats, "sample features"), _f64(ref_feats, "reference features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = len(x), len(y)
    kw = dict(degree=degree, gamma=gamma, coef0=coef0)
    size = min(int(subset_size), m, n)
    if n_subsets > 0 and size < 2:
        raise ValueError(f"KID subsets need at least 2 rows, have m={m}, n={n}, subset_size={subset_size}")
    if n_subsets > 0:
        generator = np.random.RandomState(2020) if generator is None else numpy_generator(generator, "kid")
    vals = []
    for _ in range(int(n_subsets)):
        ix = generator.choice(m, size, replace=False)
        iy = generator.choice(n, size, replace=False)
        vals.append(mmd2_poly(x[ix], y[iy], **kw))
    v = np.asarray(vals, dtype=np.float64)
    return KIDResult(full=mmd2_poly(x, y, **kw) if full else float("nan"),
                     mean=float(v.mean()) if len(v) else float("nan"),
                     std=float(v.std()) if len(v) else float("nan"),
                     n_subsets=int(n_subsets), subset_size=size, m=m, n=n, subsets=v.tolist())


# -- closed form for Gaussians ------------------------------------------------------------------------------------

def _inner_moments(mu, s, nu, t):
    """E u, E u², E u³ for u = x·y, x ~ N(mu, s), y ~ N(nu, t) independent (module docstring)."""
    a = float(mu @ nu)
    q = float(mu @ t @ mu + nu @ s @ nu)
    tr = float(np.trace(s @ t))
    e1 = a
    e2 = tr + q + a * a
    e3 = a ** 3 + 3.0 * a * (q + tr) + 6.0 * float(mu @ t @ s @ nu)
    return (1.0, e1, e2, e3)


def poly_mmd2_gaussian(mu1, cov1, mu2, cov2, degree: int = 3, gamma: Optional[float] = None,
                       coef0: float = 1.0) -> float:
    """Population MMD² between N(mu1, cov1) and N(mu2, cov2) under (γ x·y + c)^p, p ≤ 3 (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if not 0 <= degree <= 3:
        raise ValueError(f"closed form implemented for degree 0..3, got {degree}")
    g = _gamma(gamma, mu1.shape[0])

    def ek(m_a, s_a, m_b, s_b):
        mom = _inner_moments(m_a, s_a, m_b, s_b)
        return sum(math.comb(degree, q) * g ** q * coef0 ** (degree - q) * mom[q] for q in range(degree + 1))

    return ek(mu1, cov1, mu1, cov1) + ek(mu2, cov2, mu2, cov2) - 2.0 * ek(mu1, cov1, mu2, cov2)
