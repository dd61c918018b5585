"""The shipped digit classifier and FD-digits on real data."""

import json

import numpy as np
import pytest
import torch

from diffusion_es.data import load_digits
from diffusion_es.io import to_uint8
from diffusion_es.metrics.classifier import load_classifier
from diffusion_es.training.feature_net import train_feature_net as train
from diffusion_es.hashing import weights_hash
from diffusion_es.metrics.features import assets_dir, extract, extract_stats, get_extractor
from diffusion_es.metrics.frechet import FeatureStats, frechet_distance


@pytest.fixture(scope="module")
def ex():
    return get_extractor("digits")


@pytest.fixture(scope="module")
def digits_u8():
    return {s: to_uint8(load_digits(s)) for s in ("train", "heldout")}


def test_card_matches_shipped_weights():
    card = json.loads((assets_dir() / "digits_cnn.json").read_text())
    model = load_classifier(assets_dir() / "digits_cnn.safetensors")
    assert card["weights_sha256"] == weights_hash(model.state_dict())
    assert card["heldout_accuracy"] >= 0.97
    x, y = load_digits("heldout", with_labels=True)
    from diffusion_es.io import from_uint8

    with torch.no_grad():
        acc = (model(torch.from_numpy(from_uint8(to_uint8(x)))).argmax(1) == y).double().mean().item()
    assert abs(acc - card["heldout_accuracy"]) < 1e-9


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # the constant-image set has a zero covariance
def test_train_vs_heldout_small_noise_large(ex, digits_u8):
    st = FeatureStats.from_features(extract(ex, digits_u8["train"]))
    sh = FeatureStats.from_features(extract(ex, digits_u8["heldout"]))
    noise = np.random.default_rng(0).integers(0, 256, size=(360, 8, 8, 1), dtype=np.uint8)
    sn = FeatureStats.from_features(extract(ex, noise))
    floor = frechet_distance(st, sh)
    assert 0 < floor < 60
    assert frechet_distance(st, sn) > 20 * floor
    # blank images and a shifted copy are also far
    blank = np.zeros((360, 8, 8, 1), np.uint8)
    blank[:, 2:6, 2:6] = 255
    assert frechet_distance(st, FeatureStats.from_features(extract(ex, blank))) > 10 * floor


def test_order_batching_resizing_and_channels_do_not_change_stats(ex, digits_u8):
    u = digits_u8["heldout"]
    ref, _ = extract_stats(ex, u, progress=False)
    perm = u[np.random.default_rng(1).permutation(len(u))]
    shuffled, _ = extract_stats(ex, perm, progress=False)
    small = ex.batch_size
    ex.batch_size = 7
    try:
        batched, _ = extract_stats(ex, u, progress=False)
    finally:
        ex.batch_size = small
    up = u.repeat(3, axis=1).repeat(3, axis=2)  # 24x24 nearest-neighbour upscale
    upscaled, _ = extract_stats(ex, up, progress=False)
    rgb, _ = extract_stats(ex, np.repeat(u, 3, axis=3), progress=False)
    for other in (shuffled, batched, upscaled, rgb):
        np.testing.assert_allclose(other.mean, ref.mean, atol=1e-5)
        np.testing.assert_allclose(other.cov, ref.cov, atol=1e-4 * np.abs(ref.cov).max())
        assert abs(frechet_distance(other, ref)) < 1e-4


def test_keep_features_and_streaming_batches(ex, digits_u8):
    u = digits_u8["train"]
    batches = (u[i:i + 100] for i in range(0, len(u), 100))
    stats, kept = extract_stats(ex, batches, total=len(u), keep_features=250, progress=False)
    full = extract(ex, u)
    assert stats.n == len(u) and kept.shape == (250, ex.dim) and kept.dtype == np.float32
    np.testing.assert_allclose(kept, full[:250], rtol=1e-6, atol=1e-5)


def test_training_is_deterministic():
    m1, c1 = train("digits", epochs=1, seed=3, log=None)
    m2, c2 = train("digits", epochs=1, seed=3, log=None)
    assert weights_hash(m1.state_dict()) == weights_hash(m2.state_dict())
    assert c1["heldout_accuracy"] == c2["heldout_accuracy"]


def test_unknown_and_missing_extractors():
    from diffusion_es.errors import UsageError

    with pytest.raises(UsageError, match="unknown feature network"):
        get_extractor("vgg")
    with pytest.raises(UsageError, match="not found"):
        get_extractor("digits", weights="/nonexistent/w.safetensors")


def test_shipped_mnist_classifier():
    card = json.loads((assets_dir() / "mnist_cnn.json").read_text())
    ex = get_extractor("mnist")
    assert card["weights_sha256"] == ex.weights_hash and ex.in_size == 28 and card["heldout_accuracy"] >= 0.98
    u = np.zeros((3, 28, 28, 1), np.uint8)
    assert ex(u).shape == (3, 128)
    np.testing.assert_allclose(ex(u.repeat(2, axis=1).repeat(2, axis=2)), ex(u), atol=1e-5)  # 56x56 pooled to 28


def test_mnist_accuracy_on_real_test_images():
    from pathlib import Path

    from diffusion_es.data.mnist import load_mnist
    from diffusion_es.io import from_uint8

    root = Path(__file__).resolve().parent.parent / ".cache"
    cands = [p for p in (root / "mnist" / "mnist.pkl.gz", root / "mnist.pkl.gz") if p.is_file()]
    if not cands:
        pytest.skip("no MNIST file in .cache (scripts/get_mnist.sh)")
    _, te, _ = load_mnist(str(cands[0]))
    from diffusion_es.data.mnist import load_mnist_labels

    _, yte = (torch.from_numpy(y) for y in load_mnist_labels(str(cands[0])))
    model = load_classifier(assets_dir() / "mnist_cnn.safetensors")
    with torch.no_grad():
        pred = model(torch.from_numpy(from_uint8(te[:2000]))).argmax(1)
    assert (pred == yte[:2000]).double().mean().item() >= 0.98
