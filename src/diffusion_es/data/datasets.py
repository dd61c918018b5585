"""One entry point for every dataset: :func:`load_dataset` turns a spec string into normalised tensors.

Specs:

* ``digits`` — scikit-learn's 8x8 digits (fixed split: 1,437 train / 360 held-out; 17 grey levels).
* ``toy:8gaussians`` | ``toy:moons`` | ``toy:spiral`` — 2-D points (a seeded train set and a held-out set).
* ``mnist:PATH`` — MNIST from the classic ``mnist.pkl.gz``, a folder of IDX files, or an ``.npz``: train = the
  60,000 training images, held-out = the 10,000 test images. ``mnist`` alone looks in the default places
  (:func:`diffusion_es.data.mnist.default_mnist_path`: ``$DIFFUSION_ES_MNIST``, ``.cache/mnist/``).
* ``npz:PATH`` or ``images:PATH`` — any ADM-style ``.npz`` (uint8 NHWC under ``arr_0``) or folder of PNGs.
* a bare path — ``mnist.pkl.gz`` / IDX folder / ``.npz`` / PNG folder, guessed from its contents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["Dataset", "load_dataset"]


@dataclass
class Dataset:
    """Training data in [-1, 1]: ``train`` (N, *shape) float32, optional ``heldout``, and a JSON description.

    ``levels`` is the number of grey levels per value (17 for digits, 256 for 8-bit images, 0 for continuous
    data); the variational loss uses it for the discretized likelihood at t = 0.
    """

    train: torch.Tensor
    heldout: Optional[torch.Tensor]
    levels: int
    description: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        return tuple(self.train.shape[1:])


def _from_uint8_nhwc(arr: np.ndarray) -> torch.Tensor:
    from ..io import from_uint8

    return torch.from_numpy(from_uint8(arr))


def _image_dataset(spec: str, kind: str, arr: np.ndarray, path: Path, heldout: Optional[np.ndarray] = None) -> Dataset:
    x = _from_uint8_nhwc(arr)
    h = _from_uint8_nhwc(heldout) if heldout is not None else None
    desc = {"spec": spec, "name": kind, "path": str(path), "shape": list(x.shape[1:]), "n_train": len(x),
            "n_heldout": 0 if h is None else len(h), "range": [-1.0, 1.0], "levels": 256}
    return Dataset(x, h, 256, desc)


def load_dataset(spec: str, toy_n: int = 8192, toy_seed: int = 0) -> Dataset:
    """Load a dataset from a spec (see the module docstring); every failure is a one-line UsageError."""
    spec = str(spec).strip()
    if not spec:
        raise UsageError("empty --data: use digits, mnist, toy:NAME, mnist:PATH, npz:PATH or a path")
    if spec == "digits":
        from .digits import N_TRAIN, load_digits

        x, h = load_digits("train"), load_digits("heldout")
        desc = {"spec": "digits", "name": "sklearn-digits", "shape": [1, 8, 8], "n_train": N_TRAIN,
                "n_heldout": len(h), "range": [-1.0, 1.0], "levels": 17,
                "split": "fixed permutation numpy default_rng(0), first 1437 train"}
        return Dataset(x, h, 17, desc)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "toy":
        from .toys import make_toy

        x = make_toy(rest, toy_n, toy_seed)
        h = make_toy(rest, min(toy_n, 2048), toy_seed + 1)
        desc = {"spec": spec, "name": f"toy-{rest}", "shape": [2], "n_train": toy_n, "n_heldout": len(h),
                "seed": toy_seed, "levels": 0}
        return Dataset(x, h, 0, desc)
    if spec == "mnist" or (sep and kind == "mnist"):  # "mnist": the default places; "mnist:" (no path) is refused
        from .mnist import load_mnist

        tr, te, src = load_mnist(rest if sep else None)
        return _image_dataset(spec, "mnist", tr, src, te)
    if sep and kind in ("npz", "images", "png"):
        from ..io import load_images

        return _image_dataset(spec, "images", load_images(rest), Path(rest))
    if sep and len(kind) > 1 and not Path(spec).exists():
        raise UsageError(f"unknown data kind {kind!r} in --data {spec!r}: use digits, mnist, toy:NAME, mnist:PATH, npz:PATH or a path")
    # a bare path: guess
    p = Path(spec)
    if not p.exists():
        raise UsageError(f"--data {spec!r}: no such file or folder (known names: digits, mnist, toy:8gaussians, toy:moons, toy:spiral)")
    from .mnist import looks_like_mnist

    if looks_like_mnist(p):
        from .mnist import load_mnist

        tr, te, src = load_mnist(str(p))
        return _image_dataset(f"mnist:{p}", "mnist", tr, src, te)
    from ..io import load_images

    return _image_dataset(f"npz:{p}" if p.is_file() else f"images:{p}", "images", load_images(p), p)
