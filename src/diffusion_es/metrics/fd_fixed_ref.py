"""Many Fréchet distances at once: against one fixed reference with its square root computed once, and for
batches of resampled statistics (bootstrap replicates, FD∞ subsets, variance decompositions).

With ``A = Σ_r^{1/2}`` (symmetric eigendecomposition),

    tr((Σ Σ_r)^{1/2}) = Σ_i sqrt(λ_i(A Σ A))

(A Σ A is symmetric positive semi-definite and similar to Σ_r Σ, whose eigenvalues are those of Σ Σ_r). That is
:func:`.frechet.frechet_distance`'s ``method="eig"`` with the roles of the two statistics swapped: one
``eigvalsh`` per FD instead of three eigendecompositions, and numpy evaluates a stack of them in one call.

:func:`batch_stats` gives the means and unbiased covariances of B reweighted copies of one feature set (row i
counted ``counts[b, i]`` times: a bootstrap redraw or a subset), as the statistics of those rows would be:
``sum = C X`` and ``sum_outer = C (x_i x_iᵀ)_i``, in float64, in chunks of rows and replicates so that memory
stays O(chunk · D²). Agreement with ``frechet_distance`` and ``FeatureStats`` is tested to rounding
(tests/test_metrics_bootstrap.py).
"""

from __future__ import annotations

import numpy as np

from .frechet import FeatureStats, _mean_cov, frechet_distance

__all__ = ["FixedRefFD", "batch_stats", "fd_batch", "psd_sqrt"]


def psd_sqrt(s: np.ndarray, what: str = "covariance") -> np.ndarray:
    """Symmetric square root of a (stack of) positive semi-definite matrices; refuses clearly negative ones."""
    w, v = np.linalg.eigh((s + np.swapaxes(s, -1, -2)) / 2.0)
    scale = np.maximum(1.0, np.abs(w).max(axis=-1, keepdims=True))
    if (w < -1e-8 * scale).any():
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {w.min():.3g})")
    return (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)


def _tr_sqrt(root: np.ndarray, cov: np.ndarray) -> np.ndarray:
    m = root @ cov @ root
    w = np.linalg.eigvalsh((m + np.swapaxes(m, -1, -2)) / 2.0)
    return np.sqrt(np.clip(w, 0.0, None)).sum(axis=-1)


def fd_batch(mu1, cov1, mu2, cov2, root2=None) -> np.ndarray:
    """FD between stacks of statistics (broadcasting over leading axes), ``method="eig"``; ``root2`` is
    ``psd_sqrt(cov2)`` when already computed."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1 - mu2
    tr = np.trace(cov1, axis1=-2, axis2=-1) + np.trace(cov2, axis1=-2, axis2=-1)
    return (d * d).sum(-1) + tr - 2.0 * _tr_sqrt(psd_sqrt(cov2) if root2 is None else root2, cov1)


def batch_stats(feats: np.ndarray, counts: np.ndarray, row_chunk: int = 512):
    """Means (B, D) and unbiased covariances (B, D, D) of B reweighted copies of ``feats`` (N, D);
    ``counts`` (B, N) are non-negative integers (each row must sum to at least 2)."""
    x = np.asarray(feats, np.float64)
    c = np.asarray(counts, np.float64)
    if c.ndim != 2 or c.shape[1] != len(x):
        raise ValueError(f"counts must be (B, {len(x)}), got {c.shape}")
    n = c.sum(axis=1)
    if (n < 2).any():
        raise ValueError("every reweighted copy needs at least 2 rows")
    d = x.shape[1]
    s = c @ x
    so = np.zeros((len(c), d * d))
    for i in range(0, len(x), row_chunk):
        xi = x[i:i + row_chunk]
        so += c[:, i:i + row_chunk] @ (xi[:, :, None] * xi[:, None, :]).reshape(len(xi), d * d)
    mu = s / n[:, None]
    cov = (so.reshape(-1, d, d) - n[:, None, None] * mu[:, :, None] * mu[:, None, :]) / (n - 1)[:, None, None]
    return mu, (cov + np.swapaxes(cov, -1, -2)) / 2.0


class FixedRefFD:
    """``FixedRefFD(ref_stats, method)(stats) == frechet_distance(stats, ref_stats, method)`` up to rounding.

    ``method="eig"`` uses the cached root; ``"sqrtm"`` calls :func:`frechet_distance` (nothing to cache)."""

    def __init__(self, ref_stats, method: str = "eig"):
        if method not in ("eig", "sqrtm"):
            raise ValueError(f"unknown method {method!r}: use 'sqrtm' or 'eig'")
        self.ref_stats, self.method = ref_stats, method
        mu, s = _mean_cov(ref_stats)
        if not (np.isfinite(mu).all() and np.isfinite(s).all()):
            raise ValueError("reference statistics contain NaN or infinity")
        self.mu, self.cov = mu, s
        self.tr = float(np.trace(s))
        self.root = psd_sqrt(s, "reference covariance")

    def __call__(self, stats) -> float:
        if self.method == "sqrtm":
            return frechet_distance(stats, self.ref_stats, method="sqrtm")
        mu, s = (stats.mean, stats.cov) if isinstance(stats, FeatureStats) else _mean_cov(stats)
        if mu.shape != self.mu.shape or s.shape != self.cov.shape:
            raise ValueError(f"statistics do not match the reference: mean {mu.shape} vs {self.mu.shape}")
        return float(self.batch(mu[None], s[None])[0])

    def batch(self, means: np.ndarray, covs: np.ndarray, chunk: int = 64) -> np.ndarray:
        """FDs of a stack of statistics (B, D), (B, D, D) against the reference."""
        if self.method == "sqrtm":
            return np.array([frechet_distance((m, s), self.ref_stats, method="sqrtm") for m, s in zip(means, covs)])
        out = np.empty(len(means))
        for i in range(0, len(means), chunk):
            m, s = means[i:i + chunk], covs[i:i + chunk]
            d = m - self.mu
            out[i:i + chunk] = ((d * d).sum(-1) + np.trace(s, axis1=-2, axis2=-1) + self.tr
                                - 2.0 * _tr_sqrt(self.root, s))
        return out

    def of_features(self, feats) -> float:
        return self(FeatureStats.from_features(feats))
