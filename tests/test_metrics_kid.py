"""KID (metrics/kid.py) against torch-fidelity's implementation on identical features and subsets, against an
independent explicit-feature-map computation, and against the closed-form MMD² of Gaussians.

Rounding tolerance (float64, unit roundoff u = 2^-53), for features with row norms ≤ R in dimension D:
each kernel argument s = γ x·y + c has |s| ≤ S = γR² + |c| and, a dot product of D terms in any order, an error
≤ (D + 1) u S; cubing multiplies a relative error by 3 and adds 2u, so each kernel entry is off by
≤ (3D + 5) u S³. An average of N entries summed in any order (recursive-summation bound) adds ≤ (N − 1) u S³.
MMD² combines three averages (the cross one twice, N ≤ m²), so one implementation is within
4 ((3D + 5) + m²) u S³ of the exact value and two agree within twice that: ``_tol``. Subset means and the
(1-Lipschitz) std of subset values inherit the per-subset bound.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_es.metrics.kid import kid, mmd2_poly, poly_kernel, poly_mmd2_gaussian

U = np.finfo(np.float64).eps / 2


def _tol(x, y, m, gamma=None, coef0=1.0, degree=3):
    d = x.shape[1]
    g = 1.0 / d if gamma is None else gamma
    r = max(np.linalg.norm(x, axis=1).max(), np.linalg.norm(y, axis=1).max())
    s = g * r * r + abs(coef0)
    return 8.0 * ((3 * d + 5) + m * m) * U * s ** degree


def _gauss(rng, n, mu, cov):
    return mu + rng.standard_normal((n, len(mu))) @ np.linalg.cholesky(cov).T


def _cov(rng, d, scale=1.0):
    a = rng.standard_normal((d, d)) / math.sqrt(d)
    return scale * (a @ a.T + 0.5 * np.eye(d))


# -- torch-fidelity, imported without torchvision (as in tests/test_fid_parity.py) ---------------------------------

def _fidelity_kid_functions():
    """torch-fidelity's ``kid_features_to_metric`` and ``mmd2``/``kernel_poly``, compiled from its installed
    ``metric_kid.py`` (whose module imports torchvision through ``utils``), with its own helpers as globals."""
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps -r requirements-fid.txt)")
    if "torch_fidelity" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        spec = importlib.util.find_spec("torch_fidelity")  # register the package without running its __init__
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__, pkg.__spec__, pkg.__file__ = list(spec.submodule_search_locations), spec, spec.origin
        sys.modules["torch_fidelity"] = pkg
    helpers = importlib.import_module("torch_fidelity.helpers")
    path = Path(importlib.util.find_spec("torch_fidelity").submodule_search_locations[0]) / "metric_kid.py"
    names = ["mmd2", "kernel_poly", "kernel_rbf", "kernel_mmd", "kid_features_to_metric"]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    keep = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in names)
            or (isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant))]
    assert {n.name for n in keep if isinstance(n, ast.FunctionDef)} == set(names), "torch-fidelity changed"
    from tqdm import tqdm

    ns = dict(np=np, torch=torch, tqdm=tqdm, get_kwarg=helpers.get_kwarg, vassert=helpers.vassert,
              vprint=helpers.vprint)
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def digit_features():
    from diffusion_es.data import load_digits
    from diffusion_es.io import to_uint8
    from diffusion_es.metrics.features import get_extractor

    ex = get_extractor("digits")
    real = ex(to_uint8(load_digits("heldout")))
    train = load_digits("train")[:300]
    noisy = torch.clamp(train + 0.3 * torch.from_numpy(np.random.default_rng(0).standard_normal(train.shape)).float(),
                        -1, 1)
    return np.asarray(ex(to_uint8(noisy)), np.float64), np.asarray(real, np.float64)


def _synthetic():
    rng = np.random.default_rng(1)
    d = 32
    return _gauss(rng, 300, np.zeros(d), _cov(rng, d)), _gauss(rng, 260, 0.2 * np.ones(d), _cov(rng, d, 1.3))


@pytest.mark.parametrize("which", ["synthetic_32d", "digits_128d"])
def test_subset_kid_equals_torch_fidelity_on_the_same_subsets(which, request):
    x, y = _synthetic() if which == "synthetic_32d" else request.getfixturevalue("digit_features")
    tf = _fidelity_kid_functions()
    size, subsets = 100, 25
    # float64 tensors: torch-fidelity then computes in float64 too; its RNG is RandomState(rng_seed)
    theirs = tf["kid_features_to_metric"](torch.from_numpy(x), torch.from_numpy(y), kid_subsets=subsets,
                                          kid_subset_size=size, rng_seed=2020, verbose=False)
    ours = kid(x, y, n_subsets=subsets, subset_size=size, generator=np.random.RandomState(2020))
    tol = _tol(x, y, size)
    # a different choice of subsets would move the mean by ~std/sqrt(25), many orders above tol
    assert tol < 1e-6 * ours.std
    assert abs(ours.mean - theirs["kernel_inception_distance_mean"]) <= tol, (ours.mean, theirs, tol)
    assert abs(ours.std - theirs["kernel_inception_distance_std"]) <= tol
    # full-set estimate (m == n needed by their mmd2) against their kernel and estimator
    n = min(len(x), len(y))
    kw = dict(kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    k = [tf["kernel_poly"](a, b, **kw) for a, b in ((x[:n], x[:n]), (x[:n], y[:n]), (y[:n], y[:n]))]
    assert abs(mmd2_poly(x[:n], y[:n]) - tf["mmd2"](*k)) <= _tol(x, y, n)


def _phi(x, degree=3, gamma=None, coef0=1.0):
    """Explicit feature map of (γ x·y + c)^p: blocks sqrt(C(p,q) γ^q c^(p-q)) x^{⊗q}, q = 0..p."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    blocks, t = [], np.ones((len(x), 1))
    for q in range(degree + 1):
        blocks.append(math.sqrt(math.comb(degree, q) * g ** q * coef0 ** (degree - q)) * t)
        t = np.einsum("ni,nj->nij", t, x).reshape(len(x), -1)
    return np.concatenate(blocks, axis=1)


def test_full_estimate_equals_explicit_feature_map_formula_unequal_sizes():
    """Independent formula: Σ_{i≠j} k(x_i, x_j) = |Σ φ(x_i)|² − Σ |φ(x_i)|² (no kernel matrix at all)."""
    rng = np.random.default_rng(2)
    d = 6
    x, y = _gauss(rng, 150, np.zeros(d), _cov(rng, d)), _gauss(rng, 90, 0.5 * np.ones(d), _cov(rng, d))
    px, py = _phi(x), _phi(y)
    # entrywise: kernel entry ≤ (3D + 5) u S³ (module docstring), the map's dot product of P terms ≤ P u S³
    r = max(np.linalg.norm(x, axis=1).max(), np.linalg.norm(y, axis=1).max())
    s3 = (r * r / d + 1.0) ** 3
    assert np.abs(px @ py.T - poly_kernel(x, y)).max() <= (3 * d + 5 + px.shape[1]) * U * s3
    sx, sy = px.sum(0), py.sum(0)
    m, n = len(x), len(y)
    direct = ((sx @ sx - (px * px).sum()) / (m * (m - 1)) + (sy @ sy - (py * py).sum()) / (n * (n - 1))
              - 2 * (sx @ sy) / (m * n))
    tol = _tol(x, y, max(m, n))
    for block in (7, 2048):  # row blocks do not change the value beyond rounding
        assert abs(mmd2_poly(x, y, block=block) - direct) <= tol
    assert abs(kid(x, y, n_subsets=0).full - direct) <= tol


def test_closed_form_equals_third_moment_tensor_contraction():
    """E[(x·y)^3] = <E x^{⊗3}, E y^{⊗3}> with the Gaussian third moments written out, for every kernel term."""
    rng = np.random.default_rng(3)
    d = 5
    mu, nu, s, t = rng.standard_normal(d), rng.standard_normal(d), _cov(rng, d), _cov(rng, d, 2.0)

    def m3(m, c):
        return (np.einsum("i,j,k->ijk", m, m, m) + np.einsum("i,jk->ijk", m, c) + np.einsum("j,ik->ijk", m, c)
                + np.einsum("k,ij->ijk", m, c))

    def ek(m_a, c_a, m_b, c_b, g=1.0 / d):
        e = [1.0, m_a @ m_b, np.sum((c_a + np.outer(m_a, m_a)) * (c_b + np.outer(m_b, m_b))),
             np.sum(m3(m_a, c_a) * m3(m_b, c_b))]
        return sum(math.comb(3, q) * g ** q * e[q] for q in range(4))

    want = ek(mu, s, mu, s) + ek(nu, t, nu, t) - 2 * ek(mu, s, nu, t)
    assert abs(poly_mmd2_gaussian(mu, s, nu, t) - want) <= 1e-12 * abs(want)


@pytest.mark.parametrize("shift", [0.0, 0.25])
def test_unbiased_estimate_matches_population_mmd2_of_gaussians(shift):
    """E[MMD²_u] = population MMD² at any sample size: the mean over R independent draws must lie within
    4 standard errors (SE measured from the same R draws; P(|z| > 4) ≈ 6e-5 when the estimator is right) of the
    closed form — 0 for identical distributions. Sizes differ (m = 80, n = 120) to cover that case too."""
    rng = np.random.default_rng(4)
    d = 16
    mu1, s1 = np.zeros(d), _cov(rng, d)
    mu2, s2 = (mu1, s1) if shift == 0 else (mu1 + shift, _cov(rng, d, 1.2))
    truth = poly_mmd2_gaussian(mu1, s1, mu2, s2)
    vals = np.array([mmd2_poly(_gauss(rng, 80, mu1, s1), _gauss(rng, 120, mu2, s2)) for _ in range(300)])
    se = vals.std(ddof=1) / math.sqrt(len(vals))
    assert abs(vals.mean() - truth) <= 4 * se, (vals.mean(), truth, se)
    if shift:
        assert truth > 10 * se  # the check has power: a wrong closed form of this size would be caught
    else:
        assert truth == 0.0


def test_subsets_reproducible_and_clipped():
    x, y = _synthetic()
    a = kid(x, y, n_subsets=5, subset_size=50, generator=np.random.default_rng(7))
    b = kid(x, y, n_subsets=5, subset_size=50, generator=np.random.default_rng(7))
    assert a.subsets == b.subsets and a.full == b.full
    c = kid(x, y, n_subsets=2, subset_size=10_000, generator=np.random.default_rng(0), full=False)
    assert c.subset_size == 260 and math.isnan(c.full)
    # the defaults run (they raised "pass generator="): None is torch-fidelity's RandomState(2020)
    d = kid(x, y)
    assert d.subsets == kid(x, y, generator=np.random.RandomState(2020)).subsets and d.n_subsets == 100
    with pytest.raises(TypeError, match="generator must be a numpy Generator"):
        kid(x, y, n_subsets=3, generator=7)
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(x, y[:, :5], n_subsets=0)
