"""Sample-quality metrics as plain callables ``metric(samples) -> float`` (lower is better), the currency of
``calibrate`` and ``repro``.

* :class:`FDMetric`: Fréchet distance of image samples to a reference, through a feature network. Samples
  (float64 in [-1, 1], NCHW) are first quantised to uint8 exactly as a saved sample file is, so the number equals
  what ``diffusion-es fid`` reports on the written ``.npz``.
* :class:`SlicedWassersteinMetric`: for vector (2-D toy) data, against held-out real points.

:func:`build_metric` picks one for a dataset: a reference ``.npz`` made by ``diffusion-es fid-ref`` (its feature
network is checked), or a split of the model's own dataset (``train``, ``heldout``, ``all``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UsageError
from ..io import to_uint8

__all__ = ["FDMetric", "SlicedWassersteinMetric", "build_metric", "reference_stats", "check_native_size"]

SPLITS = ("train", "heldout", "all")


class FDMetric:
    def __init__(self, extractor, ref_stats, name: str):
        self.extractor, self.ref_stats, self.name = extractor, ref_stats, name

    def features(self, x: torch.Tensor) -> np.ndarray:
        from . import extract

        return extract(self.extractor, to_uint8(x))

    def from_features(self, feats: np.ndarray) -> float:
        """FD of samples given by their features."""
        from .frechet import FeatureStats, frechet_distance

        return float(frechet_distance(FeatureStats.from_features(feats), self.ref_stats))

    def __call__(self, x: torch.Tensor) -> float:
        return self.from_features(self.features(x))


class SlicedWassersteinMetric:
    def __init__(self, ref: torch.Tensor, name: str, n_proj: int = 128, seed: int = 0):
        self.ref, self.name, self.n_proj, self.seed = ref.to(torch.float64), name, n_proj, seed

    def __call__(self, x: torch.Tensor) -> float:
        from .toy import sliced_wasserstein

        return float(sliced_wasserstein(x.reshape(x.shape[0], -1), self.ref.reshape(self.ref.shape[0], -1),
                                        n_proj=self.n_proj, generator=torch.Generator().manual_seed(self.seed)))


def _split(ds, split: str) -> torch.Tensor:
    if split not in SPLITS:
        raise UsageError(f"unknown reference split {split!r}: use one of {', '.join(SPLITS)} or a reference .npz")
    if split == "train":
        return ds.train
    if ds.heldout is None or len(ds.heldout) == 0:
        raise UsageError(f"dataset {ds.description.get('spec')!r} has no held-out split; use --ref train or a .npz")
    return ds.heldout if split == "heldout" else torch.cat([ds.train, ds.heldout])


def reference_stats(extractor, images: torch.Tensor):
    """Feature statistics of real images (float, [-1, 1], NCHW), quantised to uint8 like samples are."""
    from . import FeatureStats, extract

    return FeatureStats.from_features(extract(extractor, to_uint8(images)))


def check_native_size(ext, hw, what: str) -> None:
    """Refuse a classifier feature network for images of another size than its own (``hw``: the images' (H, W);
    ``what``: where they come from, for the message); Inception takes any size."""
    native = getattr(ext, "native_shape", None)  # a classifier's own input (H, W, C)
    h, w = (int(v) for v in tuple(hw)[:2])
    if native is not None and (h, w) != tuple(native[:2]):
        raise UsageError(f"--features {ext.name} is a classifier of {native[0]}x{native[1]} images but {what} has "
                         f"{h}x{w} images: its features of resized images mean nothing; use "
                         f"{'--features mnist' if (h, w) == (28, 28) else '--features digits' if (h, w) == (8, 8) else ''}"
                         f"{' or ' if (h, w) in ((28, 28), (8, 8)) else ''}--features inception")


def build_metric(data: str = "digits", ref: str = "train", features: Optional[str] = None,
                 inception: Optional[str] = None, shape=None):
    """A metric for samples of a model trained on ``data`` (a :func:`diffusion_es.data.load_dataset` spec).

    ``ref``: ``train`` / ``heldout`` / ``all`` (a split of ``data``) or the path of a reference ``.npz``.
    ``features``: feature network for images (default ``digits`` for digits data, ``mnist`` for MNIST,
    ``inception`` otherwise); vector data use sliced Wasserstein.
    """
    from ..data import load_dataset

    if str(ref).endswith(".npz"):
        from . import get_extractor
        from .reference import check_features, check_images, load_reference

        r = load_reference(ref)
        ext = get_extractor(features or r.feature_name, inception_path=inception)
        check_features(r, ext)
        if shape is not None and len(shape) == 3:  # the model's samples (C, H, W) must be what the reference holds
            c, h, w = shape
            check_images(r, ext, (h, w, c), what="the model's samples")
        return FDMetric(ext, r.stats, f"FD-{ext.name} vs {Path(ref).name}")
    ds = load_dataset(data)
    if shape is not None and tuple(shape) != ds.shape:
        raise UsageError(f"the model makes samples of shape {tuple(shape)} but --data {data!r} has shape {ds.shape}; "
                         f"use the data the model was trained on")
    real = _split(ds, ref)
    if len(ds.shape) == 1:
        return SlicedWassersteinMetric(real, f"SW2 vs {ref}")
    if features is None:
        name = ds.description.get("name", "")
        features = "digits" if name == "sklearn-digits" else "mnist" if name == "mnist" else "inception"
    from . import get_extractor

    ext = get_extractor(features, inception_path=inception)
    check_native_size(ext, ds.shape[1:3], f"--data {data!r}")
    return FDMetric(ext, reference_stats(ext, real), f"FD-{ext.name} vs {ref}")
