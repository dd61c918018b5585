"""Feature networks for FD and precision/recall, behind one small interface.

Registry (``get_extractor(name)``):

* ``digits``    the shipped 8x8 digit classifier (:mod:`.classifier`), 128-d penultimate features: "FD-digits".
* ``mnist``     the 28x28 MNIST classifier, 128-d: "FD-mnist" (shipped if present in the assets folder, or any
                file given by ``weights=``).
* ``inception`` Inception-v3 2048-d pool features from a local TorchScript file (:mod:`.inception`): "FID".

Every extractor takes uint8 NHWC images (the format samples are stored in), has a ``name``, a ``dim``, a
``weights_hash`` (sha256 of its weights, see :func:`weights_hash`) and a ``preprocess`` string that says how
images are brought to the network's input; the three go into the provenance of reference statistics.

Classifier input: uint8 -> [-1, 1] (``x / 127.5 - 1``); RGB is averaged to grey; an image whose side is an integer
multiple of the network's size is average-pooled down by that factor (which exactly undoes a nearest-neighbour
upscale); any other size is resized with antialiased bilinear interpolation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..hashing import weights_hash
from ..heap import batch_for, item_bytes, settle_heap
from .frechet import FeatureStats

__all__ = ["FEATURES", "get_extractor", "weights_hash", "ClassifierExtractor", "iter_batches", "extract",
           "extract_stats", "assets_dir"]

FEATURES = ("digits", "mnist", "inception")


def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "features"


def _to_grey_float(images_u8: np.ndarray) -> torch.Tensor:
    u = np.asarray(images_u8)
    if u.ndim != 4 or u.dtype != np.uint8:
        raise UsageError(f"expected uint8 images (N, H, W, C), got {u.dtype} {u.shape}")
    if u.shape[-1] == 3 and (u[..., :1] == u[..., 1:]).all():
        u = np.ascontiguousarray(u[..., 0]).reshape(*u.shape[:3], 1)  # grey stored as RGB: the grey image, exactly
    # standard NCHW strides whatever the array's: numpy calls (N, H, W, 1) contiguous with any stride on the size-1
    # axis, and torch then took some layouts for channels-last and ran another convolution (another rounding)
    x = torch.from_numpy(np.ascontiguousarray(u.transpose(0, 3, 1, 2))).to(
        torch.float32, memory_format=torch.contiguous_format) / 127.5 - 1.0
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    elif x.shape[1] != 1:
        raise UsageError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    return x


def _resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h % size == 0 and w % size == 0 and h // size == w // size:
        return F.avg_pool2d(x, h // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class ClassifierExtractor:
    """Penultimate-layer features of a :class:`~.classifier.DigitCNN`."""

    def __init__(self, name: str, weights_path):
        from .classifier import load_classifier

        self.name = name
        self.path = Path(weights_path)
        self.model = load_classifier(self.path)
        self.in_size = self.model.in_size
        self.native_shape = (self.in_size, self.in_size, 1)  # (H, W, C) the network was trained on
        self.dim = self.model.fc.out_features
        self.weights_hash = weights_hash(self.model.state_dict())
        self.preprocess = (f"uint8/127.5-1; RGB->mean grey; integer-multiple sizes avg-pooled, others antialiased "
                           f"bilinear; to {self.in_size}x{self.in_size}")
        # as many images as keep the largest tensor on the heap (diffusion_es.heap): a batch of 1000 MNIST images
        # made 100 MB activations, mapped and zeroed afresh by every layer, which doubled the time taken
        per_image = item_bytes(lambda n: self.model.features(torch.zeros(n, 1, self.in_size, self.in_size)))
        self.batch_size = batch_for(per_image, cap=1000)

    @torch.no_grad()
    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        x = _resize_to(_to_grey_float(images_u8), self.in_size)
        return self.model.features(x).double().numpy()


def _classifier_weights(name: str, weights=None) -> Path:
    if weights:  # the user's own file: say so, not "reinstall"
        from ..io import check_input

        return check_input(weights, f"{name} feature classifier weights (--feature-weights)",
                           "give a .safetensors file written by `diffusion-es train-features`")
    p = assets_dir() / f"{name}_cnn.safetensors"
    if not p.is_file():
        how = ("train one with: python -m diffusion_es.metrics.classifier --data mnist --mnist-file mnist.pkl.gz "
               "--out mnist_cnn.safetensors, then pass it with --feature-weights" if name == "mnist"
               else "reinstall diffusion-es")
        raise UsageError(f"{name} feature classifier weights not found at {p}; {how}")
    return p


def get_extractor(name: str, inception_path=None, weights=None):
    """An extractor by registry name (see the module docstring). ``inception_path`` is for ``inception`` and
    ``weights`` for the classifiers only: given to another, each is refused (it would be ignored)."""
    if inception_path is not None and name != "inception":
        raise UsageError(f"--inception is read only with --features inception; these are {name!r} features: drop it, "
                         f"or add --features inception")
    if weights is not None and name not in ("digits", "mnist"):
        raise UsageError(f"--feature-weights replaces a classifier's weights (--features digits or mnist); the "
                         f"{name!r} network takes --inception")
    if name in ("digits", "mnist"):
        return ClassifierExtractor(name, _classifier_weights(name, weights))
    if name == "inception":
        from .inception import InceptionExtractor

        return InceptionExtractor(inception_path)
    raise UsageError(f"unknown feature network {name!r}: use one of {', '.join(FEATURES)}")


def iter_batches(images: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def extract_stats(extractor, batches, total=None, keep_features: int = 0, progress: bool = True, desc="features"):
    """Stream uint8 batches (an array, or an iterable of arrays) through ``extractor``.

    Returns ``(FeatureStats, kept)`` where ``kept`` holds the features of the first ``keep_features`` images
    (float32, for precision/recall) or ``None``. Memory is O(batch + dim² + keep_features · dim). Images done are
    reported to :mod:`diffusion_es.progress` (unless ``progress=False``); ``desc`` is kept for compatibility."""
    if isinstance(batches, np.ndarray):
        total = len(batches)
        batches = iter_batches(batches, extractor.batch_size)
    from ..progress import advance, task

    settle_heap()

    stats = FeatureStats(extractor.dim)
    kept, nkept = [], 0
    with task(total or 0):
        for b in batches:
            f = extractor(b)
            stats.update(f)
            if nkept < keep_features:
                kept.append(f[: keep_features - nkept].astype(np.float32))
                nkept += len(kept[-1])
            if progress:
                advance(len(b))
    return stats, (np.concatenate(kept) if kept else None)


def extract(extractor, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """All features (N, D) float64 of uint8 images (N, H, W, C)."""
    settle_heap()
    out = [extractor(b) for b in iter_batches(images, extractor.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, extractor.dim))
