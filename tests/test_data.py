"""Datasets: the spec dispatcher, toys, MNIST in its three file formats, image sets, and one clear line for every
missing or malformed file. MNIST pickles are read without running code."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_es.data import TOYS, load_dataset, load_digits, make_toy
from diffusion_es.errors import UsageError

REAL_MNIST = Path(__file__).resolve().parent.parent / ".cache" / "mnist" / "mnist.pkl.gz"


def test_digits_split_is_fixed():
    d = load_dataset("digits")
    assert d.train.shape == (1437, 1, 8, 8) and d.heldout.shape == (360, 1, 8, 8) and d.levels == 17
    assert torch.equal(d.train, load_digits("train")) and torch.equal(d.heldout, load_digits("heldout"))
    assert d.train.min() == -1 and d.train.max() == 1


@pytest.mark.parametrize("name", TOYS)
def test_toys_are_seeded(name):
    a, b, c = make_toy(name, 500, 0), make_toy(name, 500, 0), make_toy(name, 500, 1)
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 1.3
    d = load_dataset(f"toy:{name}", toy_n=300)
    assert d.train.shape == (300, 2) and d.heldout is not None and d.shape == (2,)


def test_8gaussians_has_eight_modes():
    x = make_toy("8gaussians", 4000, 0).numpy()
    ang = np.round(np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi / 8)) % 8
    counts = np.bincount(ang.astype(int), minlength=8)
    assert counts.min() > 400
    assert np.allclose(np.linalg.norm(x, axis=1).mean(), 0.8, atol=0.02)


def _fake_mnist(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _write_idx(path, arr, gz=False):
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_mnist_idx_folder_and_npz(tmp_path):
    tr, te = _fake_mnist(12, 0), _fake_mnist(5, 1)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr, gz=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", te)
    d = load_dataset(f"mnist:{tmp_path}")
    assert d.train.shape == (12, 1, 28, 28) and d.heldout.shape == (5, 1, 28, 28) and d.levels == 256
    np.testing.assert_array_equal(np.round((d.train[:, 0].numpy() + 1) * 127.5).astype(np.uint8), tr)
    np.savez(tmp_path / "mnist.npz", x_train=tr, x_test=te)
    d2 = load_dataset(str(tmp_path / "mnist.npz"))  # a bare path, recognised by name
    assert torch.equal(d2.train, d.train) and torch.equal(d2.heldout, d.heldout)


def test_mnist_classic_pickle(tmp_path):
    tr = _fake_mnist(6)
    f = lambda a: (a.reshape(len(a), 784).astype(np.float32) / 256, np.zeros(len(a), np.int64))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as fh:
        pickle.dump((f(tr), f(tr[:2]), f(tr[:3])), fh, protocol=2)
    d = load_dataset(f"mnist:{tmp_path / 'mnist.pkl.gz'}")
    assert d.train.shape == (8, 1, 28, 28) and d.heldout.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(np.round((d.train[:6, 0].numpy() + 1) * 127.5).astype(np.uint8), tr)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_mnist_pickle_never_runs_code(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as fh:
        pickle.dump(((_Evil(), None), (None, None), (None, None)), fh)
    with pytest.raises(UsageError, match="refused to load") as e:
        load_dataset(f"mnist:{tmp_path / 'mnist.pkl.gz'}")
    assert "\n" not in str(e.value)
    assert not _Evil.marker.exists()


@pytest.mark.skipif(not REAL_MNIST.exists(), reason="run scripts/get_mnist.sh to extract MNIST into .cache/mnist")
def test_real_mnist():
    d = load_dataset(f"mnist:{REAL_MNIST}")
    assert d.train.shape == (60000, 1, 28, 28) and d.heldout.shape == (10000, 1, 28, 28)
    assert d.train.min() == -1 and d.train.max() == 1


def test_mnist_default_places_and_empty_path(tmp_path, monkeypatch):
    """``mnist`` (no path) finds the file through $DIFFUSION_ES_MNIST; ``mnist:`` with an empty path is refused, not
    read as the default places (a shell variable that was not set would train on whatever MNIST is lying around)."""
    from diffusion_es.data.mnist import MNIST_ENV, load_mnist

    imgs = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", x_train=imgs, y_train=np.zeros(6), x_test=imgs[:2], y_test=np.zeros(2))
    monkeypatch.setenv(MNIST_ENV, str(tmp_path / "m.npz"))
    d = load_dataset("mnist")
    assert d.description["spec"] == "mnist" and d.train.shape == (6, 1, 28, 28)
    for bad in ("mnist:", "mnist:  "):
        with pytest.raises(UsageError, match="empty MNIST path"):
            load_dataset(bad)
    with pytest.raises(UsageError, match="empty MNIST path"):
        load_mnist("")
    assert load_mnist(None)[2] == tmp_path / "m.npz"


def test_image_sets(tmp_path):
    from PIL import Image

    imgs = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=imgs)
    d = load_dataset(f"npz:{tmp_path / 's.npz'}")
    assert d.train.shape == (4, 3, 8, 8) and d.heldout is None
    (tmp_path / "png").mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / "png" / f"{i}.png")
    d2 = load_dataset(str(tmp_path / "png"))
    assert torch.equal(d.train, d2.train)


@pytest.mark.parametrize("spec,match", [
    ("", "empty --data"),
    ("cifar", "no such file"),
    ("toy:circles", "unknown toy"),
    ("foo:bar", "unknown data kind"),
    ("mnist:/nonexistent/mnist.pkl.gz", "no such file"),
    ("npz:/nonexistent.npz", "no such file"),
])
def test_bad_specs(spec, match):
    with pytest.raises(UsageError, match=match) as e:
        load_dataset(spec)
    assert "\n" not in str(e.value)


def test_malformed_files(tmp_path):
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(b"not a pickle")[:-5])
    with pytest.raises(UsageError, match="gzip"):
        load_dataset(f"mnist:{tmp_path / 'mnist.pkl.gz'}")
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps([1, 2])))
    with pytest.raises(UsageError, match="pairs"):
        load_dataset(f"mnist:{tmp_path / 'mnist.pkl.gz'}")
    d = tmp_path / "idx"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte", _fake_mnist(3))
    (d / "train-images-idx3-ubyte").write_bytes((d / "train-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(UsageError, match="truncated"):
        load_dataset(f"mnist:{d}")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not an .npz file"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(UsageError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
