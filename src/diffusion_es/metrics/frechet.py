"""Fréchet distance between Gaussians fitted to feature sets, from streaming float64 statistics.

:class:`FeatureStats` keeps only sums, so memory does not grow with the number of images and two partial
statistics (batches, shards, processes) combine by adding their state:

* ``n``          number of feature vectors seen,
* ``sum``        (D,)   float64, the sum of the vectors,
* ``sum_outer``  (D, D) float64, the sum of their outer products x xᵀ.

Mean and covariance follow: ``mu = sum / n`` and the unbiased covariance
``sigma = (sum_outer - n mu muᵀ) / (n - 1)`` (the ``np.cov`` convention that FID code uses). Because the state
is three sums, a distributed run all-reduces them with ``SUM`` (see :meth:`FeatureStats.state`).

The Fréchet distance between N(mu1, S1) and N(mu2, S2) is

    FD = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

Two ways to get the last trace are offered:

* ``method="sqrtm"`` (default; the computation FID papers use): ``scipy.linalg.sqrtm(S1 @ S2)``. When the
  result is not finite (a singular product), ``eps`` is added to both diagonals and the root is taken again;
  a result with a large imaginary part (> ``imag_tol`` on the diagonal) is refused with an error instead of
  being silently truncated to its real part.
* ``method="eig"``: ``tr((S1 S2)^{1/2}) = sum(sqrt(eig(A S2 A)))`` with ``A = S1^{1/2}`` from a symmetric
  eigendecomposition. ``A S2 A`` is symmetric positive semi-definite and similar to ``S1 S2``, so the two methods
  agree (tested to 1e-6) while this one is faster and never produces complex numbers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FeatureStats", "frechet_distance"]


def _as_f64_2d(feats) -> np.ndarray:
    if hasattr(feats, "detach"):
        feats = feats.detach().cpu().numpy()
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, D), got shape {f.shape}")
    return f


class FeatureStats:
    """Streaming float64 mean/covariance of D-dimensional features (see the module docstring)."""

    def __init__(self, dim: int):
        if int(dim) < 1:
            raise ValueError(f"feature dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.n = 0
        self.sum = np.zeros(self.dim, dtype=np.float64)
        self.sum_outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    # -- accumulation -------------------------------------------------------------------------------------------
    def update(self, feats) -> "FeatureStats":
        """Add a batch of feature vectors (N, D) (numpy or torch; converted to float64 first)."""
        f = _as_f64_2d(feats)
        if f.shape[1] != self.dim:
            raise ValueError(f"features have dimension {f.shape[1]}, these statistics have {self.dim}")
        if not np.isfinite(f).all():
            raise ValueError("features contain NaN or infinity; check the images and the feature network")
        self.n += f.shape[0]
        self.sum += f.sum(axis=0)
        self.sum_outer += f.T @ f
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """A new statistic equal to having seen both inputs (order does not matter)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        out = FeatureStats(self.dim)
        out.n = self.n + other.n
        out.sum = self.sum + other.sum
        out.sum_outer = self.sum_outer + other.sum_outer
        return out

    __add__ = merge

    # -- results ------------------------------------------------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("no features were accumulated")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, have {self.n}")
        mu = self.mean
        c = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) / 2.0  # exact symmetry against rounding

    # -- (de)serialisation: the state is three sums, suitable for an all-reduce with SUM ------------------------
    def state(self) -> dict:
        return {"n": np.array(self.n, dtype=np.int64), "sum": self.sum.copy(), "sum_outer": self.sum_outer.copy()}

    @classmethod
    def from_state(cls, state: dict) -> "FeatureStats":
        s = np.asarray(state["sum"], dtype=np.float64)
        out = cls(s.shape[0])
        out.n = int(np.asarray(state["n"]))
        out.sum = s.copy()
        out.sum_outer = np.asarray(state["sum_outer"], dtype=np.float64).copy()
        if out.sum_outer.shape != (out.dim, out.dim):
            raise ValueError("inconsistent state: sum_outer must be (D, D) for sum of shape (D,)")
        return out

    @classmethod
    def from_mean_cov(cls, n: int, mean, cov) -> "FeatureStats":
        """Rebuild the sums from (n, mean, unbiased covariance), the form reference files store."""
        mu = np.asarray(mean, dtype=np.float64)
        out = cls(mu.shape[0])
        out.n = int(n)
        out.sum = n * mu
        out.sum_outer = (n - 1) * np.asarray(cov, dtype=np.float64) + n * np.outer(mu, mu)
        return out

    @classmethod
    def from_features(cls, feats) -> "FeatureStats":
        f = _as_f64_2d(feats)
        return cls(f.shape[1]).update(f)

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, n={self.n})"


def _mean_cov(s):
    if isinstance(s, FeatureStats):
        return s.mean, s.cov
    if not isinstance(s, (tuple, list)) or len(s) != 2:
        raise ValueError(f"Fréchet distance takes feature statistics (FeatureStats or a (mean, covariance) pair), got "
                         f"{type(s).__name__}{' of shape ' + str(tuple(s.shape)) if hasattr(s, 'shape') else ''}; "
                         f"for raw features (N, D) use FeatureStats.from_features(features)")
    mu, sigma = s
    return np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)


def _trace_sqrt_product_sqrtm(s1, s2, eps: float, imag_tol: float) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        worst = float(np.max(np.abs(np.diag(covmean).imag)))
        if worst > imag_tol:
            raise ValueError(
                f"Fréchet distance: the matrix square root has an imaginary component of {worst:.3g} on its diagonal "
                "(covariances are not positive semi-definite or are too ill-conditioned); use more samples than the "
                "feature dimension, or method='eig'")
        covmean = covmean.real
    return float(np.trace(covmean))


def _check_psd(w: np.ndarray, psd_tol: float) -> None:
    scale = max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
    if w.min(initial=0.0) < -psd_tol * scale:
        raise ValueError(
            f"Fréchet distance: a covariance is not positive semi-definite (eigenvalue {w.min():.3g}); "
            "the statistics are corrupt or not covariances")


def _trace_sqrt_product_eig(s1, s2, psd_tol: float) -> float:
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2.0)
    _check_psd(w1, psd_tol)
    _check_psd(np.linalg.eigvalsh((s2 + s2.T) / 2.0), psd_tol)
    a = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^{1/2}
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    _check_psd(w, psd_tol)
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(stats_a, stats_b, method: str = "sqrtm", eps: float = 1e-6, imag_tol: float = 1e-3) -> float:
    """Fréchet distance between two feature statistics.

    ``stats_a``/``stats_b`` are :class:`FeatureStats` or ``(mu, sigma)`` pairs. See the module docstring for the
    two methods and the guards.
    """
    mu1, s1 = _mean_cov(stats_a)
    mu2, s2 = _mean_cov(stats_b)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"statistics do not match: mean {mu1.shape} vs {mu2.shape}, covariance {s1.shape} vs {s2.shape}")
    for name, a in (("mean", mu1), ("covariance", s1), ("mean", mu2), ("covariance", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"Fréchet distance: the {name} contains NaN or infinity")
    diff = mu1 - mu2
    if method not in ("sqrtm", "eig"):
        raise ValueError(f"unknown method {method!r}: use 'sqrtm' or 'eig'")
    if np.array_equal(mu1, mu2) and np.array_equal(s1, s2):
        return 0.0  # identical statistics: exactly zero (the root would leave ~1e-12 of rounding)
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps, imag_tol)
    elif method == "eig":
        tr_covmean = _trace_sqrt_product_eig(s1, s2, psd_tol=1e-8)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
