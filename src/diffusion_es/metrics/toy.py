"""Distances between two point clouds for the low-dimensional (2-D) toy problems.

**MMD² (unbiased).** With a kernel k, samples X (m points) and Y (n points),

    MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)

(Gretton et al., JMLR 2012, eq. 3). It is an unbiased estimate of MMD², so it can be slightly negative when the
two distributions are equal. Kernel: Gaussian RBF ``k(x, y) = exp(-|x - y|² / (2 h²))``. The bandwidth ``h`` is
either a number or ``"median"``: the median of the pairwise distances between all points of X ∪ Y (distinct
pairs), the usual median heuristic. Report ``h`` with the number (it is returned) and, when comparing several
sample sets against one reference, fix ``h`` so the numbers share one kernel.

**Sliced Wasserstein.** ``SW_p = (E_θ W_p^p(θᵀX, θᵀY))^{1/p}`` over directions θ uniform on the unit sphere,
estimated with ``n_proj`` directions drawn from the generator you pass. The 1-D W_p between two empirical
distributions is computed exactly from their quantile functions (sorted projections; for different sizes the
two step functions are integrated over the merged grid of breakpoints).
"""

from __future__ import annotations

import numpy as np
import torch

from .rng import torch_generator

__all__ = ["mmd2_unbiased", "median_bandwidth", "wasserstein_1d", "sliced_wasserstein"]


def _t(x) -> torch.Tensor:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"points must be (N, D), got shape {tuple(t.shape)}")
    return t


def median_bandwidth(x, y) -> float:
    z = torch.cat([_t(x), _t(y)])
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(len(z), len(z), offset=1)
    h = float(torch.median(d[iu[0], iu[1]]))
    if not h > 0:
        raise ValueError("median pairwise distance is 0 (the points are mostly identical); give a fixed bandwidth")
    return h


def mmd2_unbiased(x, y, bandwidth="median") -> dict:
    """``{"mmd2": value, "bandwidth": h, "kernel": "rbf"}`` (see the module docstring)."""
    x, y = _t(x), _t(y)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("unbiased MMD needs at least 2 points in each set")
    h = median_bandwidth(x, y) if bandwidth == "median" else float(bandwidth)
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be a positive number or 'median', got {bandwidth!r}")

    def k(a, b):
        d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        return torch.exp(-d2 / (2.0 * h * h))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return {"mmd2": float(sxx + syy - 2.0 * kxy.mean()), "bandwidth": h, "kernel": "rbf"}


def wasserstein_1d(u, v, p: float = 2.0) -> float:
    """Exact W_p between two 1-D empirical distributions (equal weights within each)."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    if len(u) == len(v):
        return float(np.mean(np.abs(u - v) ** p) ** (1.0 / p))
    # quantile functions are step functions with breakpoints k/len; integrate |Fu^-1 - Fv^-1|^p over [0, 1]
    grid = np.union1d(np.arange(1, len(u) + 1) / len(u), np.arange(1, len(v) + 1) / len(v))
    grid = np.concatenate([[0.0], grid])
    mid = (grid[:-1] + grid[1:]) / 2.0
    qu = u[np.minimum((mid * len(u)).astype(np.int64), len(u) - 1)]
    qv = v[np.minimum((mid * len(v)).astype(np.int64), len(v) - 1)]
    return float(np.sum(np.diff(grid) * np.abs(qu - qv) ** p) ** (1.0 / p))


def sliced_wasserstein(x, y, n_proj: int = 128, p: float = 2.0, generator: torch.Generator = None) -> float:
    """Sliced W_p over ``n_proj`` random directions from ``generator`` (required: no hidden global seeding)."""
    torch_generator(generator, "sliced_wasserstein")
    x, y = _t(x), _t(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    theta = torch.randn(n_proj, x.shape[1], generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    px, py = (x @ theta.T).numpy(), (y @ theta.T).numpy()
    wp = [wasserstein_1d(px[:, j], py[:, j], p) ** p for j in range(n_proj)]
    return float(np.mean(wp) ** (1.0 / p))
