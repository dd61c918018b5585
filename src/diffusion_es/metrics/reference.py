"""Reference statistics files (``.npz``) that say where they came from.

Arrays in the file (readable with ``np.load(path, allow_pickle=False)``):

* ``mu`` (D,) and ``sigma`` (D, D): float64 mean and unbiased covariance (the names ADM/pytorch-fid use);
* ``n``: number of images; the streaming sums are rebuilt from (n, mu, sigma) when loading;
* ``provenance``: a JSON string: ``format`` ("diffusion-es-reference"), ``format_version``, ``dataset``,
  ``split``, ``count``, ``features`` {``name``, ``weights_sha256``, ``dim``, ``preprocess``}, the
  ``diffusion_es_version`` that wrote it and (since 0.x, optional) ``image_shape`` [H, W, C] of the images;
* ``features`` (optional, float32 (K, D)): the features of the first K images, for precision/recall.

Loading checks the format, its version, the type of every provenance field and the arrays against it; comparing
against a reference made with another feature network (name or weight hash differ), or images of another size or
channel count (:func:`check_images`), is refused with :class:`~diffusion_es.errors.UsageError`. Files without our
provenance (e.g. ADM's ``VIRTUAL_*.npz``) are refused too: their feature network cannot be verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .frechet import FeatureStats

__all__ = ["FORMAT", "FORMAT_VERSION", "Reference", "save_reference", "load_reference", "check_features",
           "check_images", "is_grey", "grey_channel"]

FORMAT = "diffusion-es-reference"
FORMAT_VERSION = 1


@dataclass
class Reference:
    stats: FeatureStats
    provenance: dict
    features: np.ndarray = None  # (K, D) float32 or None
    path: str = ""

    @property
    def feature_name(self) -> str:
        return self.provenance["features"]["name"]


def _feature_info(extractor) -> dict:
    return {"name": extractor.name, "weights_sha256": extractor.weights_hash, "dim": int(extractor.dim),
            "preprocess": extractor.preprocess}


def save_reference(path, stats: FeatureStats, extractor, dataset: str, split: str, features=None,
                   image_shape=None) -> dict:
    """Write the statistics with their provenance; ``image_shape`` (H, W, C) of the images they were made from
    lets ``fid`` refuse samples of another size or channel count."""
    from ..version import __version__
    from ..io import atomic_path

    if stats.dim != extractor.dim:
        raise ValueError(f"statistics have dimension {stats.dim}, the feature network {extractor.dim}")
    prov = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": str(dataset), "split": str(split),
            "count": int(stats.n), "features": _feature_info(extractor), "diffusion_es_version": __version__}
    if image_shape is not None:
        prov["image_shape"] = [int(v) for v in image_shape]
    arrays = {"mu": stats.mean, "sigma": stats.cov, "n": np.array(stats.n, dtype=np.int64),
              "provenance": np.array(json.dumps(prov))}
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=np.float32)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return prov


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_provenance(prov, where: str) -> dict:
    """Every field ``fid`` relies on, with its type: a hand-edited or foreign file fails here, in one line."""
    def bad(field, want):
        return UsageError(f"{where}: provenance field {field!r} must be {want}; recreate the reference with "
                          "`diffusion-es fid-ref`")

    if not isinstance(prov, dict):
        raise bad("(the whole provenance)", "a JSON object")
    if prov.get("format") != FORMAT:
        raise UsageError(f"{where}: format {prov.get('format')!r} is not {FORMAT!r}")
    if prov.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{where}: reference format version {prov.get('format_version')} is not supported "
                         f"(this diffusion-es reads version {FORMAT_VERSION}); recreate it with `diffusion-es fid-ref`")
    for key in ("dataset", "split"):
        if not isinstance(prov.get(key), str):
            raise bad(key, "a string")
    if not _is_int(prov.get("count")) or prov["count"] < 2:
        raise bad("count", "a whole number >= 2")
    f = prov.get("features")
    if not isinstance(f, dict):
        raise bad("features", "an object {name, weights_sha256, dim, preprocess}")
    for key in ("name", "weights_sha256", "preprocess"):
        if not isinstance(f.get(key), str):
            raise bad(f"features.{key}", "a string")
    if not _is_int(f.get("dim")) or f["dim"] < 1:
        raise bad("features.dim", "a whole number >= 1")
    shape = prov.get("image_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0
                                                                                       for v in shape)):
        raise bad("image_shape", "[H, W, C] with positive whole numbers")
    return prov


def load_reference(path) -> Reference:
    from ..io import read_npz

    path = Path(path)
    if not path.exists():
        raise UsageError(f"reference {path} does not exist; make one with `diffusion-es fid-ref --data digits "
                         f"--split heldout --out {path.name}`")
    hint = "make a reference with `diffusion-es fid-ref`"
    arrays = read_npz(path, what="a reference statistics file", hint=hint)
    if "provenance" not in arrays:
        raise UsageError(f"{path}: no provenance (dataset, feature network and its hash), so the feature network "
                         "cannot be checked; make a reference with `diffusion-es fid-ref`")
    p = arrays["provenance"]
    if p.ndim != 0 or p.dtype.kind != "U":
        raise UsageError(f"{path}: provenance is not a JSON string; {hint}")
    try:
        prov = json.loads(str(p))
    except (json.JSONDecodeError, RecursionError):
        raise UsageError(f"{path}: provenance is not valid JSON; {hint}") from None
    prov = _check_provenance(prov, str(path))
    for key in ("mu", "sigma", "n"):
        if key not in arrays:
            raise UsageError(f"{path}: missing array {key!r}; {hint}")
    mu, sigma, n_arr = arrays["mu"], arrays["sigma"], arrays["n"]
    d = prov["features"]["dim"]
    if n_arr.ndim != 0 or n_arr.dtype.kind not in "iu":
        raise UsageError(f"{path}: array 'n' must be one whole number, got {n_arr.dtype} {n_arr.shape}; {hint}")
    n = int(n_arr)
    if mu.shape != (d,) or sigma.shape != (d, d) or n != prov["count"]:
        raise UsageError(f"{path}: arrays do not match the provenance (mu {mu.shape}, sigma {sigma.shape}, n {n}, "
                         f"provenance dim {d}, count {prov['count']})")
    for key, a in (("mu", mu), ("sigma", sigma)):
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise UsageError(f"{path}: array {key!r} must hold finite floats; {hint}")
    feats = arrays.get("features")
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != d or feats.dtype.kind != "f"
                              or not np.isfinite(feats).all()):
        raise UsageError(f"{path}: array 'features' must be finite floats (K, {d}), got {feats.dtype} {feats.shape}; "
                         f"{hint}")
    return Reference(FeatureStats.from_mean_cov(n, mu.astype(np.float64), sigma.astype(np.float64)), prov, feats,
                     str(path))


def is_grey(images) -> bool:
    """Whether images (N, H, W, C) are grey: one channel, or three equal ones (``sample --rgb`` writes grey images
    so). Every feature network sees such images the same either way."""
    if images.shape[-1] == 1:
        return True
    return images.shape[-1] == 3 and bool((images[..., 0] == images[..., 1]).all()
                                          and (images[..., 0] == images[..., 2]).all())


def grey_channel(images):
    """(images, stored_rgb): grey images stored with three equal channels (``sample --rgb``) as their one channel,
    anything else as it is. ``fid`` and ``fid-ref`` read every input through it, so the grey files and their
    ``--rgb`` copies give the same features bit for bit (the same batches, the same network input) and a reference
    records them as (H, W, 1) either way; every feature network sees a grey image the same in both forms."""
    if images.shape[-1] == 3 and is_grey(images):
        return np.ascontiguousarray(images[..., :1]), True
    return images, False


def check_images(ref: Reference, extractor, image_shape, what: str = "samples", stored_rgb: bool = False) -> None:
    """Refuse images (H, W, C) that the reference was not made from: another size or channel count than its
    ``image_shape``, or, for a reference that does not record it, not the feature network's own input (8x8 grey
    for digits, 28x28 grey for mnist). An FD between images of different kinds is a number, not an answer.
    ``image_shape`` is that of the images as :func:`grey_channel` gives them; ``stored_rgb``: they were grey
    stored with 3 equal channels (the message says so)."""
    shape = tuple(int(v) for v in image_shape)
    want = ref.provenance.get("image_shape")
    if want is None:
        native = getattr(extractor, "native_shape", None)
        if native is None or shape == tuple(native):
            return
        want, made = native, f"the {extractor.name!r} feature network's input"
    else:
        made = "the images the reference was made from"
    if shape != tuple(want):
        h, w, c = shape
        stored = "; grey, stored as 3 equal channels" if stored_rgb else ""
        raise UsageError(f"{what}: {h}x{w}x{c} images (H x W x C{stored}), but {ref.path} expects "
                         f"{'x'.join(map(str, want))} "
                         f"({made}); compare images of the reference's size and channels, or make a reference from "
                         "images like these with `diffusion-es fid-ref`")


def check_features(ref: Reference, extractor) -> None:
    """Refuse to compare features from ``extractor`` against ``ref`` made with a different network."""
    want = ref.provenance["features"]
    have = _feature_info(extractor)
    if want["name"] != have["name"]:
        raise UsageError(f"{ref.path}: reference was made with the {want['name']!r} feature network, not "
                         f"{have['name']!r}; use --features {want['name']} or make a new reference with "
                         f"`diffusion-es fid-ref --features {have['name']}`")
    if want["weights_sha256"] != have["weights_sha256"] or want["dim"] != have["dim"]:
        raise UsageError(f"{ref.path}: reference was made with other {want['name']!r} weights (sha256 "
                         f"{want['weights_sha256'][:12]}..., these are {have['weights_sha256'][:12]}...); pass the "
                         f"weights it was made with (--feature-weights PATH, or none for the shipped ones), or "
                         f"recreate it with `diffusion-es fid-ref` and these weights")
    if want.get("preprocess") != have["preprocess"]:
        raise UsageError(f"{ref.path}: reference used different preprocessing ({want.get('preprocess')!r}); "
                         "recreate it with `diffusion-es fid-ref`")
