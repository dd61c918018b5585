"""Unbiased MMD² and sliced Wasserstein against direct computations."""

import numpy as np
import pytest
import scipy.stats
import torch

from diffusion_es.metrics.toy import median_bandwidth, mmd2_unbiased, sliced_wasserstein, wasserstein_1d


def _mmd_loops(x, y, h):
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd_matches_double_loop_and_median():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(25, 2)) + [0.5, 0]
    z = np.concatenate([x, y])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    assert median_bandwidth(x, y) == pytest.approx(np.median(d), rel=1e-12)
    for bw in (0.7, "median"):
        got = mmd2_unbiased(x, y, bandwidth=bw)
        h = 0.7 if bw == 0.7 else np.median(d)
        assert got["mmd2"] == pytest.approx(_mmd_loops(x, y, h), abs=1e-12)
        assert got["bandwidth"] == pytest.approx(h)


def test_mmd_near_zero_same_distribution_large_for_different():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(1000, 2)), g.normal(size=(1000, 2))
    c = g.normal(size=(1000, 2)) * 0.5 + [2.0, 0.0]
    same = mmd2_unbiased(a, b, bandwidth=1.0)["mmd2"]
    diff = mmd2_unbiased(a, c, bandwidth=1.0)["mmd2"]
    assert abs(same) < 5e-3
    assert diff > 0.2 and diff > 50 * abs(same)


def test_wasserstein_1d_matches_scipy():
    g = np.random.default_rng(2)
    for m, n in ((50, 50), (37, 61)):
        u, v = g.normal(size=m), g.normal(size=n) * 2 + 1
        assert wasserstein_1d(u, v, p=1) == pytest.approx(scipy.stats.wasserstein_distance(u, v), abs=1e-12)
    u = g.normal(size=40)
    # p=2 with different sizes: duplicating every point must not change the distance
    assert wasserstein_1d(u, u * 3, p=2) == pytest.approx(wasserstein_1d(np.repeat(u, 2), u * 3, p=2), abs=1e-12)


def test_sliced_wasserstein_shift_is_exact():
    g = np.random.default_rng(3)
    x = g.normal(size=(200, 2))
    a = np.array([1.0, -2.0])
    assert sliced_wasserstein(x, x, generator=torch.Generator().manual_seed(0)) == 0.0
    got = sliced_wasserstein(x, x + a, n_proj=64, generator=torch.Generator().manual_seed(0))
    theta = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).numpy()
    assert got == pytest.approx(np.sqrt(np.mean((theta @ a) ** 2)), rel=1e-10)
    with pytest.raises(ValueError, match="generator"):
        sliced_wasserstein(x, x)


def test_each_metric_names_the_generator_kind_it_takes():
    """KID, FD∞ and the bootstraps draw with numpy, sliced Wasserstein with torch: the wrong kind is named in one
    line (it was an AttributeError from inside, e.g. 'torch._C.Generator' object has no attribute 'choice')."""
    from diffusion_es.metrics import bootstrap_fd, fd_infinity, kid
    from diffusion_es.metrics.frechet import FeatureStats

    g = np.random.default_rng(0)
    x, y = g.normal(size=(40, 3)), g.normal(size=(40, 3))
    ref = FeatureStats.from_features(y)
    tg = torch.Generator().manual_seed(0)
    for call in (lambda gen: kid(x, y, n_subsets=2, subset_size=10, generator=gen),
                 lambda gen: fd_infinity(x, ref, sizes=[10, 20, 30], generator=gen),
                 lambda gen: bootstrap_fd(x, ref, n_boot=3, generator=gen)):
        with pytest.raises(TypeError, match=r"numpy Generator .* got torch\.(_C\.)?Generator"):
            call(tg)
        call(np.random.default_rng(1))         # both numpy kinds work
        call(np.random.RandomState(2020))
    with pytest.raises(TypeError, match=r"torch\.Generator.* got numpy\.random.*Generator"):
        sliced_wasserstein(x, y, generator=np.random.default_rng(0))
