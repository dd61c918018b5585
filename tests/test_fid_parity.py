"""FID parity: our Inception features, Fréchet distance and precision/recall against torch-fidelity, torchmetrics,
clean-fid, pytorch-fid and prdc on the same images and the same Inception weights. See docs/fid_parity.md.

What is compared:

* **Inception features** (network and resize). Ours (``default_1.pt`` TorchScript, TF1 legacy bilinear resize) vs
  torch-fidelity's own Inception-v3 module (its layers, its TF1 resize) and torchmetrics' ``NoTrainInceptionV3``
  (``antialias=False``), both loaded with the weights of the same ``default_1.pt`` (its 94 conv + batch-norm tensors
  written in their state-dict layout, :func:`_fidelity_state_dict`), and clean-fid's ``InceptionV3W`` given the
  same TorchScript network, on 299 x 299 images (clean-fid's default resize is PIL bicubic: another FID by design).
* **Fréchet distance** on identical features: the shipped digits classifier's 128-d features of real and of noisy
  digits, with more samples than dimensions and with fewer (singular covariances, as for FID on < 2048 images).
  torchmetrics accumulates its own statistics (its ``FrechetInceptionDistance`` with the same feature network);
  torch-fidelity, pytorch-fid and clean-fid get the features or ``np.mean``/``np.cov`` of them, as their own code
  does. A 2048-d FD costs minutes per tool on two CPU cores (scipy's sqrtm), so the end-to-end 2048-d Inception FID
  over hundreds of images is the opt-in test at the bottom (``DIFFUSION_ES_FID_PARITY_N``).
* **Precision / recall** (k-NN manifolds, k = 3 and 5) against ``prdc`` and torch-fidelity.

Without torchvision (PyPI's build needs a CUDA torch; see docs/fid_parity.md) the tools import partly:
torchmetrics and prdc import normally; torch-fidelity's package ``__init__`` imports its CLIP/VGG/DINOv2 extractors,
which import torchvision, so its submodules are imported without running that ``__init__``
(:func:`_torch_fidelity`); torch-fidelity's metric modules, ``pytorch_fid.fid_score`` and ``cleanfid.fid`` import
torchvision at module level, so the few functions used here are compiled from the installed source files
(:func:`_tool_functions`): the tools' own code, not copies. Nothing is stubbed.

Tolerances (derived, not fitted; measured values in docs/fid_parity.md):

* features: float32 networks; two implementations differ by rounding only: ``max|Δ| <= 1e-4 max|f|``
  (float32 unit roundoff 6e-8 times dot products of up to ~10^3..10^4 terms);
* FD: the issue's contract ``|Δ| <= 1e-3 FD`` and the float64 rounding bound ``|Δ| <= 2 D sqrt(D eps ||S1 S2||)``
  (each tool's eigen/Schur solver is backward stable, so every eigenvalue of S1 S2 moves by <= D eps ||S1 S2||
  and its square root by <= the square root of that; that is the worst case at near-zero eigenvalues);
* precision/recall: equal counts, after checking that no distance lies within float64 rounding of a k-NN radius
  (then the three distance computations and prdc's ``<`` vs our ``<=`` cannot decide differently).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_es.data import load_digits
from diffusion_es.io import to_uint8
from diffusion_es.metrics.features import get_extractor
from diffusion_es.metrics.frechet import FeatureStats, frechet_distance
from diffusion_es.metrics.prdc import knn_radii, precision_recall

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [os.environ.get("DIFFUSION_ES_INCEPTION", ""), str(ROOT / ".cache" / "fid" / "default_1.pt")]
INCEPTION = next((p for p in CANDIDATES if p and Path(p).is_file()), None)
INSTALL = {"torchmetrics": "pip install -e '.[test]'", "prdc": "pip install -e '.[test]'"}  # others: --no-deps
EPS64 = np.finfo(np.float64).eps

needs_file = pytest.mark.skipif(INCEPTION is None, reason="no Inception TorchScript file (scripts/get_inception.sh)")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load; scipy sqrtm(disp=) in tools


def _require(module: str):
    if importlib.util.find_spec(module) is None:
        how = INSTALL.get(module, "pip install --no-deps -r requirements-fid.txt")
        pytest.skip(f"{module} is not installed; install it with: {how} (scripts/setup.sh does)")


# -- importing the tools without torchvision ----------------------------------------------------------------------

def _torch_fidelity():
    """The ``torch_fidelity`` package; without torchvision, registered without running its ``__init__`` (which
    imports the CLIP/VGG/DINOv2 extractors and the datasets, all needing torchvision), so that its torchvision-free
    submodules (Inception-v3, TF1 resize, helpers) import as they are."""
    _require("torch_fidelity")
    if "torch_fidelity" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        spec = importlib.util.find_spec("torch_fidelity")
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__, pkg.__spec__, pkg.__file__ = list(spec.submodule_search_locations), spec, spec.origin
        sys.modules["torch_fidelity"] = pkg
    return importlib.import_module("torch_fidelity")


def _torchmetrics_fid():
    """``torchmetrics.image.fid``; it imports torch-fidelity's Inception when torch-fidelity is installed."""
    _require("torchmetrics")
    if importlib.util.find_spec("torch_fidelity") is not None:
        _torch_fidelity()
    return importlib.import_module("torchmetrics.image.fid")


def _tool_functions(package: str, relpath: str, names, **module_globals):
    """Functions ``names`` of the installed file ``package/relpath``, compiled from its source with the module's
    literal constants (e.g. ``KEY_METRIC_FID``) and ``module_globals`` as globals, without executing its imports."""
    _require(package)
    path = Path(importlib.util.find_spec(package).origin).parent / relpath  # locating does not import it
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    keep = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in names)
            or (isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant))]
    missing = set(names) - {n.name for n in keep if isinstance(n, ast.FunctionDef)}
    assert not missing, f"{path} has no function(s) {sorted(missing)}; update the pins in requirements-fid.txt"
    ns = dict(module_globals)
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)
    return [ns[n] for n in names]


# -- data: real digits and noisy digits, through the shipped digits classifier ------------------------------------

@pytest.fixture(scope="module")
def digits():
    """uint8 images (N, 8, 8, 1): 360 held-out digits (real), 360 training digits with Gaussian noise of std 0.3
    (fake), 360 training digits without noise (fake close to real); their 128-d features (float64)."""
    real = to_uint8(load_digits("heldout"))
    train = load_digits("train")[:360]
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(train.shape)).float()
    fakes = {"noisy": to_uint8(torch.clamp(train + 0.3 * noise, -1, 1)), "clean": to_uint8(train)}
    ex = get_extractor("digits")
    return {"ex": ex, "real": real, "fake": fakes, "f_real": ex(real), "f_fake": {k: ex(v) for k, v in fakes.items()}}


# -- Inception features ---------------------------------------------------------------------------------------------

def _rgb_nchw(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.repeat(u8, 3 // u8.shape[-1], axis=-1).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def inception():
    """Our extractor, image groups that exercise the resize (8x8 grey upsampled, 24x40 RGB non-square, 299x299
    RGB unchanged, 384x512 RGB downsampled) and our features for each group."""
    if INCEPTION is None:
        pytest.skip("no Inception TorchScript file (scripts/get_inception.sh)")
    from diffusion_es.metrics.inception import InceptionExtractor

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:384, 0:512]
    smooth = (127.5 + 100 * np.sin(xx[..., None] / 23.0 + np.arange(3)) * np.cos(yy[..., None] / 17.0)).astype(np.uint8)
    groups = {
        "digits_8x8_grey": to_uint8(load_digits("heldout")[:2]),
        "rgb_24x40": rng.integers(0, 256, size=(1, 24, 40, 3), dtype=np.uint8),
        "rgb_299x299": rng.integers(0, 256, size=(1, 299, 299, 3), dtype=np.uint8),
        "rgb_384x512": smooth[None],
    }
    ex = InceptionExtractor(INCEPTION)
    return {"ex": ex, "groups": groups, "ours": {k: ex(v) for k, v in groups.items()}}


def _fidelity_state_dict(torchscript_path) -> dict:
    """``default_1.pt``'s weights in torch-fidelity's Inception-v3 layout.

    Both are the TF 2015-12-05 graph: 94 convolutions, each followed by a batch norm without scale (gamma = 1) and
    eps 0.001, in the same order (the TorchScript's ``conv, conv_1, ..., mixed_10.tower_2.conv``; torch-fidelity's
    ``Conv2d_1a_3x3, ..., Mixed_7c.branch_pool``); each pair's kernel shape is checked, and the features test checks
    the rest. The 1008-way ``fc`` (not part of the pool3 features) is not in ``default_1.pt`` and is set to zero."""
    fe = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")

    class _Skeleton(fe.FeatureExtractorInceptionV3):  # the module structure, without loading weights
        def load_state_dict(self, *args, **kwargs):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        src = torch.jit.load(str(torchscript_path), map_location="cpu").state_dict()
    convs = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    skeleton = _Skeleton("inception-v3-compat", ["2048"], empty)
    dst = [name for name, m in skeleton.named_modules() if isinstance(m, fe.BasicConv2d)]
    assert len(convs) == len(dst) == 94, (len(convs), len(dst))
    out = {}
    for s, d in zip(convs, dst):
        w = src[s + ".weight"]
        assert w.shape == skeleton.get_submodule(d).conv.weight.shape, (s, d)
        out.update({d + ".conv.weight": w, d + ".bn.weight": torch.ones_like(src[s + ".beta"]),
                    d + ".bn.bias": src[s + ".beta"], d + ".bn.running_mean": src[s + ".mean"],
                    d + ".bn.running_var": src[s + ".var"], d + ".bn.num_batches_tracked": torch.tensor(0)})
    out["fc.weight"], out["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return out


@pytest.fixture(scope="module")
def fidelity_weights(tmp_path_factory):
    if INCEPTION is None:
        pytest.skip("no Inception TorchScript file (scripts/get_inception.sh)")
    _torch_fidelity()
    path = tmp_path_factory.mktemp("fid_parity") / "default_1_as_torch_fidelity.pth"
    torch.save(_fidelity_state_dict(INCEPTION), path)
    return str(path)


def _assert_features_close(theirs, ours, what):
    err, scale = float(np.max(np.abs(theirs - ours))), float(np.max(np.abs(ours)))
    assert theirs.shape == ours.shape and err <= 1e-4 * scale, f"{what}: max |Δ| {err:.3g}, max |f| {scale:.3g}"


@needs_file
def test_inception_features_equal_torch_fidelity(inception, fidelity_weights):
    fe = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], fidelity_weights)
    for name, u8 in inception["groups"].items():
        with torch.no_grad():
            theirs = net(_rgb_nchw(u8))[0].double().numpy()
        _assert_features_close(theirs, inception["ours"][name], f"torch-fidelity, {name}")


@needs_file
def test_inception_features_equal_torchmetrics_without_antialias(inception, fidelity_weights):
    """torchmetrics' forward is its own copy of torch-fidelity's (same layers and TF1 resize function), so one
    upsampled group shows it; its default ``antialias=True`` resizes with half-pixel centres instead: a different
    FID unless the images are already 299 x 299."""
    tm = _torchmetrics_fid()
    u8, ours = inception["groups"]["digits_8x8_grey"], inception["ours"]["digits_8x8_grey"]
    for antialias in (False, True):
        net = tm.NoTrainInceptionV3("inception-v3-compat", ["2048"], fidelity_weights, antialias=antialias)
        with torch.no_grad():
            theirs = net(_rgb_nchw(u8)).double().numpy()
        if antialias:
            assert np.max(np.abs(theirs - ours)) > 1e-2 * np.max(np.abs(ours))
        else:
            _assert_features_close(theirs, ours, "torchmetrics antialias=False")


@needs_file
def test_inception_features_equal_clean_fid_on_299(inception, tmp_path):
    _require("cleanfid")
    from cleanfid.inception_torchscript import InceptionV3W

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.load(INCEPTION, map_location="cpu").net, str(tmp_path / "inception-2015-12-05.pt"))
    net = InceptionV3W(str(tmp_path), download=False, resize_inside=False).eval()  # calls net.layers on (x-128)/128
    u8 = inception["groups"]["rgb_299x299"]
    with torch.no_grad():
        theirs = net(torch.from_numpy(np.ascontiguousarray(u8.transpose(0, 3, 1, 2))).float()).double().numpy()
    np.testing.assert_array_equal(theirs, inception["ours"]["rgb_299x299"])  # same network, same input tensor


# -- Fréchet distance ------------------------------------------------------------------------------------------------

def _fd_torchmetrics(d, fake, n):
    tm = _torchmetrics_fid()
    ex = d["ex"]

    class DigitsFeatures(torch.nn.Module):  # the same feature network, run by torchmetrics on the images
        num_features = ex.dim

        def forward(self, x):
            return torch.from_numpy(ex(x.numpy()))

    m = tm.FrechetInceptionDistance(feature=DigitsFeatures())
    m.update(torch.from_numpy(d["real"][:n]), real=True)
    m.update(torch.from_numpy(d["fake"][fake][:n]), real=False)
    return float(m.compute())  # float64 state; the result is cast to the features' dtype, here float64


def _fd_torch_fidelity(fr, ff):
    _torch_fidelity()
    helpers = importlib.import_module("torch_fidelity.helpers")
    stats, fd = _tool_functions("torch_fidelity", "metric_fid.py",
                                ["fid_features_to_statistics", "fid_statistics_to_metric"],
                                np=np, torch=torch, vprint=helpers.vprint)
    return fd(stats(torch.from_numpy(fr)), stats(torch.from_numpy(ff)), False)["frechet_inception_distance"]


def _sqrtm_has_disp():
    import scipy.linalg

    return "disp" in inspect.signature(scipy.linalg.sqrtm).parameters


def _fd_scipy_tool(package, relpath, name, fr, ff):
    import scipy

    if not _sqrtm_has_disp():
        pytest.skip(f"{package} calls scipy.linalg.sqrtm(..., disp=False), which SciPy {scipy.__version__} removed")
    from scipy import linalg

    (fd,) = _tool_functions(package, relpath, [name], np=np, linalg=linalg)
    # their own code computes the statistics inline this way (np.mean / np.cov of the activations)
    with contextlib.redirect_stdout(io.StringIO()):
        return float(fd(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False)))


TOOLS = {
    "torchmetrics": lambda d, fake, n, fr, ff: _fd_torchmetrics(d, fake, n),
    "torch-fidelity": lambda d, fake, n, fr, ff: _fd_torch_fidelity(fr, ff),
    "pytorch-fid": lambda d, fake, n, fr, ff: _fd_scipy_tool("pytorch_fid", "fid_score.py",
                                                              "calculate_frechet_distance", fr, ff),
    "clean-fid": lambda d, fake, n, fr, ff: _fd_scipy_tool("cleanfid", "fid.py", "frechet_distance", fr, ff),
}


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("fake,n", [("noisy", 360), ("clean", 360), ("noisy", 64)], ids=["noisy-360", "clean-360",
                                                                                         "noisy-64"])
def test_frechet_distance_equals_tool(digits, tool, fake, n):
    """n = 360 > D = 128: full-rank covariances; n = 64 < D: singular ones (like FID from < 2048 images)."""
    fr, ff = digits["f_real"][:n], digits["f_fake"][fake][:n]
    sa, sb = FeatureStats.from_features(fr), FeatureStats.from_features(ff)
    ours = {m: frechet_distance(sa, sb, method=m) for m in ("sqrtm", "eig")}
    theirs = TOOLS[tool](digits, fake, n, fr, ff)
    d = sa.dim
    bound = 2 * d * np.sqrt(d * EPS64 * np.linalg.norm(sa.cov @ sb.cov, 2))
    for method, value in ours.items():
        diff = abs(theirs - value)
        assert diff <= 1e-3 * value and diff <= bound, (tool, method, theirs, value, bound)


# -- precision / recall ----------------------------------------------------------------------------------------------

def _counts(pr, n_real, n_fake):
    return round(pr[0] * n_fake), round(pr[1] * n_real)


def _check_no_ties(real, fake, k):
    """No real-fake distance lies within float64 rounding of a k-NN radius, so any correct computation of the
    distances (torch.cdist's matmul form, scikit-learn's, ...) and ``<`` vs ``<=`` give the same decisions.
    Rounding of |x|² + |y|² - 2 x·y is ~4 eps max|x|² on d², i.e. ~2 eps max|x|² / d² relative on d; the gap
    must exceed 50 times that."""
    d = np.sqrt(np.maximum(((real[:, None, :] - fake[None, :, :]) ** 2).sum(-1), 0.0))
    rr, rf = knn_radii(real, k), knn_radii(fake, k)
    gap = min(np.min(np.abs(d - rr[:, None]) / rr[:, None]), np.min(np.abs(d - rf[None, :]) / rf[None, :]))
    sq = max(float((real ** 2).sum(1).max()), float((fake ** 2).sum(1).max()))
    rounding = 100 * EPS64 * sq / float(min(rr.min(), rf.min())) ** 2
    assert gap > rounding, (gap, rounding)


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_equal_prdc(digits, k):
    _require("prdc")
    import prdc

    real, fake = digits["f_real"], digits["f_fake"]["noisy"]
    _check_no_ties(real, fake, k)
    ours = precision_recall(real, fake, k=k)
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        theirs = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    assert _counts((theirs["precision"], theirs["recall"]), len(real), len(fake)) == \
        _counts((ours["precision"], ours["recall"]), len(real), len(fake))
    assert 0.3 < ours["precision"] < 0.99 and 0.3 < ours["recall"] < 0.99  # informative, not saturated


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_equal_torch_fidelity(digits, k):
    _torch_fidelity()
    prc_full, prc_part = _tool_functions(
        "torch_fidelity", "metric_prc.py", ["calculate_precision_recall_full", "calculate_precision_recall_part",
                                            "calc_cdist_full", "calc_cdist_part"], torch=torch)[:2]
    real, fake = digits["f_real"], digits["f_fake"]["noisy"]
    _check_no_ties(real, fake, k)
    pr = precision_recall(real, fake, k=k)
    ours = _counts((pr["precision"], pr["recall"]), len(real), len(fake))
    # torch-fidelity's convention: features_1 = generated, features_2 = real; float32 means, hence the counts
    for fn, extra in ((prc_full, ()), (prc_part, (100,))):
        theirs = fn(torch.from_numpy(fake), torch.from_numpy(real), k, *extra)
        assert _counts(theirs, len(real), len(fake)) == ours, (fn.__name__, theirs, ours)


# -- opt-in: end-to-end 2048-d Inception FID over many images --------------------------------------------------------

FULL_N = int(os.environ.get("DIFFUSION_ES_FID_PARITY_N", "0"))


@needs_file
@pytest.mark.skipif(FULL_N < 2, reason="set DIFFUSION_ES_FID_PARITY_N=<images per side> (minutes of CPU per 100)")
def test_full_inception_fid_end_to_end(digits, fidelity_weights):
    """FID of N held-out digits vs N noisy digits: ours (features + FD) vs torchmetrics (its
    FrechetInceptionDistance: its resize, torch-fidelity's Inception with default_1.pt's weights, its statistics and
    FD) vs torch-fidelity (its Inception, statistics and FD) vs pytorch-fid and clean-fid (FD of our features)."""
    from diffusion_es.metrics.features import extract
    from diffusion_es.metrics.inception import InceptionExtractor

    n = FULL_N
    real, fake = digits["real"][:n], digits["fake"]["noisy"][:n]
    ex = InceptionExtractor(INCEPTION)
    fr, ff = extract(ex, real), extract(ex, fake)
    sa, sb = FeatureStats.from_features(fr), FeatureStats.from_features(ff)
    results = {"ours (sqrtm)": frechet_distance(sa, sb), "ours (eig)": frechet_distance(sa, sb, method="eig")}

    tm = _torchmetrics_fid()
    m = tm.FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=fidelity_weights, antialias=False)
    fe = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], fidelity_weights)
    tf_feats = {True: [], False: []}
    for is_real, u8 in ((True, real), (False, fake)):
        for i in range(0, n, 25):
            x = _rgb_nchw(u8[i:i + 25])
            m.update(x, real=is_real)
            with torch.no_grad():
                tf_feats[is_real].append(net(x)[0].double().numpy())
    results["torchmetrics"] = float(m.compute())  # float64 statistics; the value is cast to float32 at the end
    results["torch-fidelity"] = _fd_torch_fidelity(np.concatenate(tf_feats[True]), np.concatenate(tf_feats[False]))
    results["pytorch-fid (our features)"] = _fd_scipy_tool("pytorch_fid", "fid_score.py",
                                                           "calculate_frechet_distance", fr, ff)
    results["clean-fid (our features)"] = _fd_scipy_tool("cleanfid", "fid.py", "frechet_distance", fr, ff)
    ref = results["ours (sqrtm)"]
    print(f"\nFID, {n} held-out digits vs {n} noisy digits (8x8 -> 299x299):")
    for k, v in results.items():
        print(f"  {k:28s} {v:.10f}  rel. diff {abs(v - ref) / ref:.2e}")
    for k, v in results.items():
        assert abs(v - ref) <= 1e-3 * ref, (k, v, ref)
