"""Variance decomposition (metrics/variance.py) on Gaussians where both contributions are controlled.

Samples N(μ_s, I) and reference N(μ_r, I) in D = 8 with |μ_s − μ_r| = 3. To first order (delta method) the FD
moves with the two means only: FD ≈ |μ̂_s − μ̂_r|² + (covariance terms of order D/n², negligible here), so

    V_S = 4 (μ_s − μ̂_r)ᵀ Σ_s (μ_s − μ̂_r) / n      (seed sets redrawn, this reference fixed)
    V_R ≈ 4 (μ̂_s − μ̂_r)ᵀ Σ̂_r (μ̂_s − μ̂_r) / n_ref (reference rows redrawn, each seed set fixed; plug-in)

With n = 1000, n_ref = 100 the reference dominates (share ≈ 0.9); with n = 100, n_ref = 1000 the samples do
(share ≈ 0.1). Tolerances: the between-set variance over K = 30 sets is V_S χ²₂₉/29 in the Gaussian model and the
reference-side bootstrap variance over 200 shared redraws V_R χ²₁₉₉/199; over re-seedings both spread 1.12–1.19 times
wider than that model (effective degrees of freedom about 23 and 148), so the ranges are the 99.99 % ranges of χ²
with 3/4 of the nominal degrees of freedom (22 and 149): [0.22, 2.62] × V_S and [0.61, 1.52] × V_R, each a false
failure under another random stream of about 1e-4. The within-set bootstrap averages 30 × 200 redraws (relative sd ≈ sqrt(2/199/30) = 0.018, plus the spread of the
plug-in |μ̂_s − μ̂_r|² over sets, ≈ 2·sqrt(1/n)/3 ≤ 0.07 / sqrt(30)): ±15 %.

Measured (n, n_ref) = (1000, 100): between sets 0.0215 (0.55 V_S, the 2.4 % quantile of χ²₂₉/29), within-set
bootstrap 0.0379 (V_S 0.0391), reference 0.261 (V_R 0.320), share 0.92 (first order 0.89); (100, 1000): 0.365,
0.357 (V_S 0.350), 0.042 (V_R 0.037), share 0.10 (0.09).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from diffusion_es.metrics.bootstrap import count_matrix
from diffusion_es.metrics.frechet import FeatureStats, frechet_distance
from diffusion_es.metrics.variance import fd_variance_decomposition, paired_sd_by_size

D, K, NB = 8, 30, 200
SHIFT = np.zeros(D)
SHIFT[0] = 3.0


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _samples(seeds):
    return np.random.default_rng(list(seeds)).standard_normal((len(seeds), D)) + SHIFT


def _chi2_range(dof):
    """The 99.99 % range of χ²/dof at 3/4 of ``dof`` (the spread measured over re-seedings; module docstring)."""
    eff = round(0.75 * dof)
    return stats.chi2.ppf(0.00005, eff) / eff, stats.chi2.ppf(0.99995, eff) / eff


@pytest.mark.parametrize("n,n_ref", [(1000, 100), (100, 1000)])
def test_sample_and_reference_parts_match_the_controlled_variances(n, n_ref):
    ref = np.random.default_rng(7).standard_normal((n_ref, D))
    sets = [range(k * n, (k + 1) * n) for k in range(K)]
    res = fd_variance_decomposition(_samples, ref, sets, n_boot=NB, generator=np.random.default_rng(0))
    mu_r, cov_r = ref.mean(0), np.cov(ref, rowvar=False, ddof=0)
    v_s = 4 * np.sum((SHIFT - mu_r) ** 2) / n
    v_r = np.mean([4 * (d @ cov_r @ d) / n_ref for d in (_samples(s).mean(0) - mu_r for s in sets)])
    lo, hi = _chi2_range(K - 1)
    assert lo <= res.var_sets / v_s <= hi, (res.var_sets, v_s)
    lo, hi = _chi2_range(NB - 1)
    assert lo <= res.var_ref / v_r <= hi, (res.var_ref, v_r)
    assert 0.85 <= res.var_sample_boot / v_s <= 1.15, (res.var_sample_boot, v_s)
    share = v_r / (v_s + v_r)  # 0.91 or 0.09
    assert (res.ref_share > 0.75) if share > 0.5 else (res.ref_share < 0.25), (res.ref_share, share)
    assert res.statistic == "fd" and res.n_samples == n and res.n_ref == n_ref and res.n_sets == K
    ps, pr = res.predict(4 * n, 4 * n_ref)
    assert np.isclose(ps, res.var_sets / 4) and np.isclose(pr, res.var_ref / 4)


def test_paired_statistic_equals_a_direct_loop():
    """The batched computation against FeatureStats/frechet_distance on explicitly redrawn rows, same draws."""
    ref = np.random.default_rng(1).standard_normal((60, 4)) * 1.5
    arms = lambda seeds: (_samples(seeds)[:, :4], 1.05 * _samples(seeds)[:, :4] + 0.1)  # noqa: E731
    sets = [range(0, 40), range(40, 80), range(80, 120)]
    res = fd_variance_decomposition(arms, ref, sets, n_boot=5, generator=np.random.default_rng(3))
    g = np.random.default_rng(3)
    fd = lambda x, r: frechet_distance(FeatureStats.from_features(x), FeatureStats.from_features(r))  # noqa: E731
    rel = lambda a, b, r: fd(b, r) / fd(a, r) - 1  # noqa: E731
    rc = count_matrix(g, len(ref), 5)
    refs = [np.repeat(ref, c, axis=0) for c in rc]
    for k, s in enumerate(sets):
        a, b = arms(s)
        assert abs(res.values[k] - rel(a, b, ref)) < 1e-9
        assert abs(res.per_set_ref_var[k] - np.var([rel(a, b, r) for r in refs], ddof=1)) < 1e-9
        g.integers(0, 40, (5, 40))  # the within-set redraws (not checked here) keep the generator in step
    assert res.statistic == "relative_difference"
    assert abs(res.var_sets - np.var(res.values, ddof=1)) < 1e-15


def test_paired_sd_by_size_and_errors():
    ref_stats = (np.zeros(D), np.eye(D))
    sa = [_samples(range(k * 400, (k + 1) * 400)) for k in range(4)]
    sb = [1.02 * a for a in sa]
    out = paired_sd_by_size(sa, sb, ref_stats, [100, 400])
    fd = lambda x: frechet_distance(FeatureStats.from_features(x), ref_stats)  # noqa: E731
    assert abs(out[100] - np.std([fd(b[:100]) / fd(a[:100]) - 1 for a, b in zip(sa, sb)], ddof=1)) < 1e-9
    with pytest.raises(ValueError, match="exceeds"):
        paired_sd_by_size(sa, sb, ref_stats, [500])
    with pytest.raises(ValueError, match="at least 2 seed sets"):
        fd_variance_decomposition(_samples, sa[0], [range(10)], generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="generator"):
        fd_variance_decomposition(_samples, sa[0], [range(10), range(10, 20)])
