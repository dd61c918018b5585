"""Where the seed-set variance of FD comes from: the samples or the reference.

An FD (or a paired FD difference) is computed from two finite sets: n generated samples and n_ref reference
images. Each carries sampling noise. To first order the two add:

    Var[stat] ≈ V_S(n) + V_R(n_ref),     V_S ∝ 1/n,  V_R ∝ 1/n_ref

(delta method: the FD is a smooth function of the two sets' means and covariances, each an average over its set;
e.g. the mean term |μ̂ − μ̂_r|² contributes 4 ΔμᵀΣΔμ / n and 4 ΔμᵀΣ_rΔμ / n_ref). :func:`fd_variance_decomposition`
measures both parts:

* **sample side**, V_S: the variance of the statistic over K seed sets with the reference held fixed (ddof = 1;
  this is what repeated runs with different seeds show), cross-checked by a bootstrap inside each set (its rows
  redrawn with replacement, reference fixed, averaged over sets);
* **reference side**, V_R: the variance over ``n_boot`` redraws of the reference rows (with replacement) with
  each seed set held fixed, averaged over sets. The same redraws are used for every set and for both arms of a
  paired comparison.

How to read them. In a comparison that uses *one* fixed reference for every seed set (the usual case), the
reference's error is the same for every set: V_R does not appear in the spread over seed sets, more sets or more
samples do not reduce it, and a paired t-interval over sets is conditional on that reference. V_R says how far
the result could move with a different reference of the same size (only a larger reference shrinks it). V_S is
what more samples per set (∝ 1/n) and more sets (∝ 1/K for the mean) reduce: it is the input of
``experiments.power``.

``sample_fn(seeds) -> features`` returns the (n, D) features of the samples drawn from ``seeds``; for a paired
comparison it returns a pair ``(features_A, features_B)`` drawn from the same seeds (A the baseline), and the
statistic is FD_B / FD_A − 1 (``relative=True``) or FD_B − FD_A.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Sequence

import numpy as np

from .bootstrap import count_matrix
from .fd_fixed_ref import FixedRefFD, batch_stats, fd_batch, psd_sqrt
from .frechet import FeatureStats, _as_f64_2d

__all__ = ["VarianceDecomposition", "fd_variance_decomposition", "paired_sd_by_size"]


@dataclass
class VarianceDecomposition:
    values: List[float]        # the statistic per seed set, full reference
    var_sets: float            # V_S: variance over seed sets, reference fixed (ddof=1)
    var_sample_boot: float     # V_S again, from bootstrapping the rows inside each set (mean over sets)
    var_ref: float             # V_R: variance over reference redraws, samples fixed (mean over sets)
    n_samples: int
    n_ref: int
    n_sets: int
    n_boot: int
    statistic: str             # "fd", "relative_difference" or "difference"
    per_set_ref_var: List[float] = field(default_factory=list)

    @property
    def var_total(self) -> float:
        """Variance if both the seed set and the reference were drawn anew (first order: the parts add)."""
        return self.var_sets + self.var_ref

    @property
    def ref_share(self) -> float:
        return self.var_ref / self.var_total if self.var_total > 0 else float("nan")

    def predict(self, n_samples: int, n_ref: int = None):
        """(V_S, V_R) at other set sizes under the 1/n laws."""
        n_ref = self.n_ref if n_ref is None else n_ref
        return self.var_sets * self.n_samples / n_samples, self.var_ref * self.n_ref / n_ref

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(var_total=self.var_total, ref_share=self.ref_share)
        return d


def _as_arms(out):
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError("sample_fn must return features or a pair (features_A, features_B)")
        a, b = _as_f64_2d(out[0]), _as_f64_2d(out[1])
        if a.shape != b.shape:
            raise ValueError(f"paired arms must have the same shape, got {a.shape} and {b.shape}")
        return [a, b]
    return [_as_f64_2d(out)]


def _stat(fds: Sequence, relative: bool):
    if len(fds) == 1:
        return fds[0]
    return fds[1] / fds[0] - 1.0 if relative else fds[1] - fds[0]


def fd_variance_decomposition(sample_fn: Callable, ref_feats, seed_sets: Sequence[Sequence[int]], n_boot: int = 100,
                              relative: bool = True, generator=None) -> VarianceDecomposition:
    """Measure V_S and V_R (module docstring) over ``seed_sets`` (at least 2) against reference features.

    Random draws, in order: the ``n_boot`` reference redraws (counts over its rows, shared by all sets), then per
    set the ``n_boot`` row redraws of that set (shared by the arms of a pair)."""
    if generator is None:
        raise ValueError("pass generator=np.random.default_rng(seed) so the redraws are reproducible")
    if len(seed_sets) < 2:
        raise ValueError("the seed-set variance needs at least 2 seed sets")
    if int(n_boot) < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    rf = _as_f64_2d(ref_feats)
    full = FixedRefFD(FeatureStats.from_features(rf))
    r_mu, r_cov = batch_stats(rf, count_matrix(generator, len(rf), int(n_boot)))
    r_root = psd_sqrt(r_cov, "a redrawn reference covariance")
    values, boot_var, ref_var, n, kind = [], [], [], None, None
    for seeds in seed_sets:
        arms = _as_arms(sample_fn(seeds))
        kind = kind or ("fd" if len(arms) == 1 else ("relative_difference" if relative else "difference"))
        n = n or len(arms[0])
        if len(arms[0]) != n:
            raise ValueError("every seed set must give the same number of samples")
        stats = [FeatureStats.from_features(a) for a in arms]
        values.append(float(_stat([full(s) for s in stats], relative)))
        ref_var.append(float(np.var(_stat([fd_batch(s.mean, s.cov, r_mu, r_cov, r_root) for s in stats], relative),
                                    ddof=1)))
        c = count_matrix(generator, n, int(n_boot))
        boot_var.append(float(np.var(_stat([full.batch(*batch_stats(a, c)) for a in arms], relative), ddof=1)))
    return VarianceDecomposition(values=values, var_sets=float(np.var(values, ddof=1)),
                                 var_sample_boot=float(np.mean(boot_var)), var_ref=float(np.mean(ref_var)),
                                 n_samples=int(n), n_ref=len(rf), n_sets=len(seed_sets), n_boot=int(n_boot),
                                 statistic=kind, per_set_ref_var=ref_var)


def paired_sd_by_size(sets_a: Sequence, sets_b: Sequence, ref_stats, sizes: Sequence[int],
                      relative: bool = True) -> dict:
    """sd over seed sets (ddof=1) of the paired statistic computed on the first ``n`` rows of each set, per n.

    ``sets_a[k]`` / ``sets_b[k]``: features of seed set k for the baseline / candidate (same seeds, same order).
    Returns ``{n: sd}``, the input of ``experiments.power.fit_sd_scaling``."""
    if len(sets_a) != len(sets_b) or len(sets_a) < 2:
        raise ValueError("need the same number (>= 2) of baseline and candidate seed sets")
    fd = FixedRefFD(ref_stats)
    out = {}
    for n in sizes:
        vals = []
        for a, b in zip(sets_a, sets_b):
            a, b = _as_f64_2d(a), _as_f64_2d(b)
            if len(a) < n or len(b) < n:
                raise ValueError(f"size {n} exceeds a seed set ({len(a)}, {len(b)} rows)")
            vals.append(_stat([fd.of_features(a[:n]), fd.of_features(b[:n])], relative))
        out[int(n)] = float(np.std(vals, ddof=1))
    return out
