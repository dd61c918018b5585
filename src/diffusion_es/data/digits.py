"""scikit-learn's handwritten digits (8x8, 1,797 images), normalised to [-1, 1], with a fixed split.

The split is fixed forever (changing it would silently change every reported number): a permutation of the
1,797 indices drawn with ``numpy.random.default_rng(0)``; the first 1,437 (80 %) are ``train``, the remaining
360 are ``heldout``.
"""

from __future__ import annotations

import numpy as np
import torch

N_TRAIN = 1437
SPLITS = ("train", "heldout", "all")


def _split_indices(n: int) -> dict:
    perm = np.random.default_rng(0).permutation(n)
    return {"train": np.sort(perm[:N_TRAIN]), "heldout": np.sort(perm[N_TRAIN:]), "all": np.arange(n)}


def load_digits(split: str = "train", with_labels: bool = False):
    """Digits as a float32 tensor (N, 1, 8, 8) in [-1, 1] (pixel values 0..16 mapped linearly)."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}: use one of {', '.join(SPLITS)}")
    from sklearn.datasets import load_digits as _sk_load

    d = _sk_load()
    idx = _split_indices(len(d.images))[split]
    x = torch.from_numpy(d.images[idx].astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    if with_labels:
        return x, torch.from_numpy(d.target[idx].astype(np.int64))
    return x
