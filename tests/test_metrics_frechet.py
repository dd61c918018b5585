"""Fréchet distance and streaming statistics against independent computations (numpy cov, scipy sqrtm)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion_es.metrics.frechet import FeatureStats, frechet_distance


def _fd_scipy(fa, fb):
    """The textbook computation on raw features: np.mean / np.cov / scipy.linalg.sqrtm."""
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _feats(seed, n=500, d=16, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a * scale + shift


def test_matches_scipy_sqrtm_on_same_features():
    fa, fb = _feats(0), _feats(1, shift=0.3, scale=1.5)
    ref = _fd_scipy(fa, fb)
    for method in ("sqrtm", "eig"):
        got = frechet_distance(FeatureStats.from_features(fa), FeatureStats.from_features(fb), method=method)
        assert abs(got - ref) < 1e-6, (method, got, ref)


def test_stats_match_numpy_mean_cov():
    f = _feats(2, n=300, d=8, shift=5.0)
    s = FeatureStats.from_features(f)
    np.testing.assert_allclose(s.mean, f.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.cov, np.cov(f, rowvar=False), rtol=0, atol=1e-10)


def test_identical_statistics_give_zero():
    s = FeatureStats.from_features(_feats(3))
    assert frechet_distance(s, s) == 0.0
    assert frechet_distance(s, FeatureStats.from_state(s.state())) == 0.0
    # the root itself (no shortcut) is also ~0 for equal Gaussians written differently
    mu, cov = s.mean, s.cov
    assert abs(frechet_distance((mu, cov), (mu.copy() + 0.0, cov + 1e-300))) < 1e-8


def test_streaming_merge_equals_one_shot_and_order_free():
    f = _feats(4, n=777)
    one = FeatureStats.from_features(f)
    parts = [FeatureStats(f.shape[1]).update(f[i:i + 100]) for i in range(0, len(f), 100)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    streamed = FeatureStats(f.shape[1])
    for i in range(0, len(f), 64):
        streamed.update(torch.from_numpy(f[i:i + 64]))  # torch input is accepted too
    perm = FeatureStats.from_features(f[np.random.default_rng(0).permutation(len(f))])
    for other in (merged, streamed, perm):
        assert other.n == one.n
        np.testing.assert_allclose(other.mean, one.mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(other.cov, one.cov, rtol=0, atol=1e-10)
        assert abs(frechet_distance(other, one)) < 1e-8


def test_state_and_mean_cov_round_trip():
    s = FeatureStats.from_features(_feats(5, n=50, d=4))
    r = FeatureStats.from_mean_cov(s.n, s.mean, s.cov)
    np.testing.assert_allclose(r.sum, s.sum, atol=1e-10)
    np.testing.assert_allclose(r.sum_outer, s.sum_outer, atol=1e-9)
    st = s.state()
    assert set(st) == {"n", "sum", "sum_outer"} and st["sum"].dtype == np.float64


def test_singular_covariances_stay_finite_and_agree():
    # fewer samples than dimensions: both covariances are singular
    fa, fb = _feats(6, n=10, d=32), _feats(7, n=10, d=32, shift=0.1)
    sa, sb = FeatureStats.from_features(fa), FeatureStats.from_features(fb)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v1 = frechet_distance(sa, sb)
    v2 = frechet_distance(sa, sb, method="eig")
    assert np.isfinite(v1) and np.isfinite(v2) and v2 > 0
    assert abs(v1 - v2) < 1e-3 * max(1.0, abs(v2))


def test_large_imaginary_part_is_refused():
    mu = np.zeros(2)
    bad = np.diag([1.0, -1.0])  # not a covariance: sqrtm gives an imaginary unit on the diagonal
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance((mu, bad), (mu, np.eye(2)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance((mu, bad), (mu, np.eye(2)), method="eig")


def test_bad_inputs():
    with pytest.raises(ValueError):
        FeatureStats(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError):
        FeatureStats(3).update(np.full((2, 3), np.nan))
    with pytest.raises(ValueError):
        FeatureStats(3).update(np.zeros((1, 3))).cov
    with pytest.raises(ValueError):
        frechet_distance((np.zeros(2), np.eye(2)), (np.zeros(3), np.eye(3)))
