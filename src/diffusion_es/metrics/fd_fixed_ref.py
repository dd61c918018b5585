"""FD of many sample statistics against one fixed reference, with the reference's square root computed once.

Bootstrap replicates, FD∞ subsets and variance decompositions evaluate thousands of FDs against the same
reference (μ_r, Σ_r). With ``A = Σ_r^{1/2}`` (symmetric eigendecomposition, once),

    tr((Σ Σ_r)^{1/2}) = Σ_i sqrt(λ_i(A Σ A))

(A Σ A is symmetric positive semi-definite and similar to Σ_r Σ, whose eigenvalues are those of Σ Σ_r), which is
:func:`.frechet.frechet_distance`'s ``method="eig"`` with the roles of the two statistics swapped: one
``eigvalsh`` per call instead of three eigendecompositions. Agreement with ``frechet_distance`` is tested to
rounding (tests/test_metrics_bootstrap.py).
"""

from __future__ import annotations

import numpy as np

from .frechet import FeatureStats, _mean_cov, frechet_distance

__all__ = ["FixedRefFD"]


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
        w, v = np.linalg.eigh((s + s.T) / 2.0)
        if w.min(initial=0.0) < -1e-8 * max(1.0, float(np.abs(w).max())):
            raise ValueError(f"reference covariance is not positive semi-definite (eigenvalue {w.min():.3g})")
        self.root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T

    def __call__(self, stats) -> float:
        if self.method == "sqrtm":
            return frechet_distance(stats, self.ref_stats, method="sqrtm")
        mu, s = (stats.mean, stats.cov) if isinstance(stats, FeatureStats) else _mean_cov(stats)
        if mu.shape != self.mu.shape or s.shape != self.cov.shape:
            raise ValueError(f"statistics do not match the reference: mean {mu.shape} vs {self.mu.shape}")
        m = self.root @ s @ self.root
        w = np.linalg.eigvalsh((m + m.T) / 2.0)
        d = mu - self.mu
        return float(d @ d + np.trace(s) + self.tr - 2.0 * np.sum(np.sqrt(np.clip(w, 0.0, None))))

    def of_features(self, feats) -> float:
        return self(FeatureStats.from_features(feats))
