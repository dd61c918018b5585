"""Bootstrap intervals for the Fréchet distance and for paired FD differences.

One replicate redraws the N sample rows with replacement (the generator's noise is what varies between seed
sets), computes the feature statistics of the redrawn rows and the FD against the reference. The reference is
kept fixed by default; with ``resample_ref=True`` its rows are redrawn too (needs reference *features*), which
adds the reference's own sampling noise — the right choice when the claim is about the data distribution rather
than about this particular reference set (a 360-image held-out reference is noisy).

For a **paired** difference (baseline A and candidate B sampled from the same seeds, row i of A and row i of B
from seed i) one replicate uses the same row indices for A and B and the same reference redraw for both, so the
noise they share cancels as it does in the paired comparison itself. The difference is ``FD_B − FD_A`` or, with
``relative=True``, ``FD_B / FD_A − 1`` (the convention of ``diagnostics.calibrate.paired_gain``).

Intervals (level 1 − a):

* ``interval``: the percentile interval [q_{a/2}, q_{1−a/2}] of the replicate values;
* ``basic_interval``: the basic (reverse-percentile) interval [2θ̂ − q_{1−a/2}, 2θ̂ − q_{a/2}]. FD is biased
  upward by ~k/N, the bootstrap replicates carry that bias again (``bias`` = mean of replicates − θ̂ estimates it),
  and the basic interval subtracts it: use it when the bias is not small against the spread (few samples per D).

Replicate statistics are weighted sums: with draw counts c_i, ``sum = Σ c_i x_i`` and ``sum_outer = Σ c_i x_i x_iᵀ``
(float64), i.e. exactly the statistics of the redrawn rows; replicates are computed in stacks of ``chunk``
(:mod:`.fd_fixed_ref`). The FDs use ``method="eig"``, which agrees with ``"sqrtm"`` to 1e-6
(tests/test_metrics_frechet.py). Counts are drawn as ``generator.integers(0, N, (chunk, N))`` (``randint`` for a
``RandomState``), replicate chunks in order, the sample rows before the reference rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from .fd_fixed_ref import FixedRefFD, batch_stats, fd_batch
from .frechet import FeatureStats, _as_f64_2d
from .rng import numpy_generator

__all__ = ["BootstrapResult", "bootstrap_fd", "bootstrap_fd_difference", "count_matrix", "resampled_stats"]


@dataclass
class BootstrapResult:
    estimate: float                   # the statistic on the data as given
    interval: Tuple[float, float]     # percentile interval
    basic_interval: Tuple[float, float]
    level: float
    se: float                         # sd of the replicates (ddof=1)
    bias: float                       # mean of the replicates − estimate
    n_boot: int
    resample_ref: bool
    values: List[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["interval"], d["basic_interval"] = list(self.interval), list(self.basic_interval)
        return d

    def at_level(self, level: float) -> "BootstrapResult":
        """The same replicates, intervals at another level."""
        return _result(self.estimate, np.asarray(self.values), level, self.resample_ref)


def resampled_stats(feats: np.ndarray, counts: np.ndarray) -> FeatureStats:
    """Statistics of the multiset that holds row i of ``feats`` ``counts[i]`` times."""
    c = np.asarray(counts, dtype=np.float64)
    out = FeatureStats(feats.shape[1])
    out.n = int(round(c.sum()))
    out.sum = c @ feats
    out.sum_outer = (feats * c[:, None]).T @ feats
    return out


def count_matrix(generator, n: int, b: int) -> np.ndarray:
    """(b, n) draw counts of b bootstrap redraws of n rows (each row of the result sums to n)."""
    idx = generator.integers(0, n, (b, n)) if hasattr(generator, "integers") else generator.randint(0, n, (b, n))
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)


def _ref(ref, resample_ref: bool):
    """(features or None, fixed statistics)."""
    if isinstance(ref, (FeatureStats, tuple)):
        if resample_ref:
            raise ValueError("resample_ref=True needs the reference features (N_ref, D), not statistics")
        return None, ref
    f = _as_f64_2d(ref)
    return f, FeatureStats.from_features(f)


def _result(estimate: float, values: np.ndarray, level: float, resample_ref: bool) -> BootstrapResult:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a = 1.0 - level
    lo, hi = (float(q) for q in np.quantile(values, [a / 2.0, 1.0 - a / 2.0]))
    return BootstrapResult(estimate=float(estimate), interval=(lo, hi), basic_interval=(2 * estimate - hi,
                           2 * estimate - lo), level=level, se=float(values.std(ddof=1)),
                           bias=float(values.mean() - estimate), n_boot=len(values), resample_ref=resample_ref,
                           values=values.tolist())


def _check(n_boot: int, level: float, generator):
    numpy_generator(generator, "bootstrap")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if int(n_boot) < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")


def _chunks(n_boot: int, chunk: int):
    for i in range(0, int(n_boot), int(chunk)):
        yield min(int(chunk), int(n_boot) - i)


def _fds(fixed: FixedRefFD, rf, feats_list, counts, ref_counts):
    """FDs of each reweighted feature set in ``feats_list`` against the fixed or the reweighted reference."""
    stats = [batch_stats(f, counts) for f in feats_list]
    if ref_counts is None:
        return [fixed.batch(m, c) for m, c in stats]
    rm, rc = batch_stats(rf, ref_counts)
    return [fd_batch(m, c, rm, rc) for m, c in stats]


def bootstrap_fd(sample_feats, ref, n_boot: int = 1000, level: float = 0.95, resample_ref: bool = False,
                 generator=None, chunk: int = 64) -> BootstrapResult:
    """Bootstrap interval for FD(samples, reference). ``ref``: features (N_ref, D), or statistics when
    ``resample_ref`` is False. ``generator``: ``np.random.Generator`` (required)."""
    _check(n_boot, level, generator)
    x = _as_f64_2d(sample_feats)
    rf, rstats = _ref(ref, resample_ref)
    fixed = FixedRefFD(rstats)
    est = fixed(FeatureStats.from_features(x))
    vals = []
    for b in _chunks(n_boot, chunk):
        c = count_matrix(generator, len(x), b)
        rc = count_matrix(generator, len(rf), b) if resample_ref else None
        vals.append(_fds(fixed, rf, [x], c, rc)[0])
    return _result(est, np.concatenate(vals), level, resample_ref)


def bootstrap_fd_difference(feats_a, feats_b, ref, relative: bool = True, paired: bool = True, n_boot: int = 1000,
                            level: float = 0.95, resample_ref: bool = False, generator=None,
                            chunk: int = 64) -> BootstrapResult:
    """Bootstrap interval for FD_B − FD_A (or FD_B / FD_A − 1 with ``relative``), A the baseline.

    ``paired=True`` requires equal row counts and redraws the same rows of A and B (row i = seed i in both)."""
    _check(n_boot, level, generator)
    a, b = _as_f64_2d(feats_a), _as_f64_2d(feats_b)
    if paired and len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same seeds on both sides, have {len(a)} and {len(b)} rows")
    rf, rstats = _ref(ref, resample_ref)
    fixed = FixedRefFD(rstats)

    def stat(fa, fb):
        return fb / fa - 1.0 if relative else fb - fa

    est = stat(fixed(FeatureStats.from_features(a)), fixed(FeatureStats.from_features(b)))
    vals = []
    for k in _chunks(n_boot, chunk):
        ca = count_matrix(generator, len(a), k)
        cb = ca if paired else count_matrix(generator, len(b), k)
        rc = count_matrix(generator, len(rf), k) if resample_ref else None
        if paired:
            fa, fb = _fds(fixed, rf, [a, b], ca, rc)
        else:
            fa, fb = _fds(fixed, rf, [a], ca, rc)[0], _fds(fixed, rf, [b], cb, rc)[0]
        vals.append(stat(fa, fb))
    return _result(est, np.concatenate(vals), level, resample_ref)
