"""Precision/recall (k-NN manifolds) against a brute-force numpy/scipy implementation."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from diffusion_es.metrics.prdc import knn_radii, precision_recall


def _brute(real, fake, k):
    def radii(x):
        d = cdist(x, x)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    rr, rf = radii(real), radii(fake)
    prec = np.mean([(cdist(f[None], real)[0] <= rr).any() for f in fake])
    rec = np.mean([(cdist(r[None], fake)[0] <= rf).any() for r in real])
    return prec, rec


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(120, 5))
    fake = rng.normal(size=(90, 5)) * 1.3 + 0.4
    got = precision_recall(real, fake, k=k, block=17)
    p, r = _brute(real, fake, k)
    assert got["precision"] == pytest.approx(p, abs=1e-12)
    assert got["recall"] == pytest.approx(r, abs=1e-12)
    assert (got["n_real"], got["n_fake"], got["k"]) == (120, 90, k)


def test_identical_sets_and_disjoint_sets():
    x = np.random.default_rng(0).normal(size=(200, 8))
    same = precision_recall(x, x.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(x, x + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # a collapsed generator (all samples near one real point): high precision, low recall
    collapsed = x[:1] + 1e-3 * np.random.default_rng(1).normal(size=(200, 8))
    pr = precision_recall(x, collapsed)
    assert pr["precision"] == 1.0 and pr["recall"] < 0.1


def test_radii_and_errors():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(knn_radii(x, k=1), [1, 1, 2, 4])
    np.testing.assert_allclose(knn_radii(x, k=2), [3, 2, 3, 6])
    with pytest.raises(ValueError):
        knn_radii(x, k=4)
    with pytest.raises(ValueError):
        precision_recall(x, np.zeros((4, 2)))
