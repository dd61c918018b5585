"""Reference statistics files (``.npz``) that say where they came from.

Arrays in the file (readable with ``np.load(path, allow_pickle=False)``):

* ``mu`` (D,) and ``sigma`` (D, D): float64 mean and unbiased covariance (the names ADM/pytorch-fid use);
* ``n``: number of images; the streaming sums are rebuilt from (n, mu, sigma) when loading;
* ``provenance``: a JSON string: ``format`` ("diffusion-es-reference"), ``format_version``, ``dataset``,
  ``split``, ``count``, ``features`` {``name``, ``weights_sha256``, ``dim``, ``preprocess``} and the
  ``diffusion_es_version`` that wrote it;
* ``features`` (optional, float32 (K, D)): the features of the first K images, for precision/recall.

Loading checks the format and its version; comparing against a reference made with another feature network
(name or weight hash differ) is refused with :class:`~diffusion_es.errors.UsageError`. Files without our
provenance (e.g. ADM's ``VIRTUAL_*.npz``) are refused too: their feature network cannot be verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .frechet import FeatureStats

__all__ = ["FORMAT", "FORMAT_VERSION", "Reference", "save_reference", "load_reference", "check_features"]

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


def save_reference(path, stats: FeatureStats, extractor, dataset: str, split: str, features=None) -> dict:
    from ..version import __version__
    from ..io import atomic_path

    if stats.dim != extractor.dim:
        raise ValueError(f"statistics have dimension {stats.dim}, the feature network {extractor.dim}")
    prov = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": str(dataset), "split": str(split),
            "count": int(stats.n), "features": _feature_info(extractor), "diffusion_es_version": __version__}
    arrays = {"mu": stats.mean, "sigma": stats.cov, "n": np.array(stats.n, dtype=np.int64),
              "provenance": np.array(json.dumps(prov))}
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=np.float32)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return prov


def load_reference(path) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"reference {path} does not exist; make one with `diffusion-es fid-ref --data digits "
                         f"--split heldout --out {path.name}`")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"{path}: not a readable .npz file ({e.__class__.__name__})") from None
    if "provenance" not in arrays:
        raise UsageError(f"{path}: no provenance (dataset, feature network and its hash), so the feature network "
                         "cannot be checked; make a reference with `diffusion-es fid-ref`")
    try:
        prov = json.loads(str(arrays["provenance"]))
    except json.JSONDecodeError:
        raise UsageError(f"{path}: provenance is not valid JSON") from None
    if prov.get("format") != FORMAT:
        raise UsageError(f"{path}: format {prov.get('format')!r} is not {FORMAT!r}")
    if prov.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path}: reference format version {prov.get('format_version')} is not supported "
                         f"(this diffusion-es reads version {FORMAT_VERSION}); recreate it with `diffusion-es fid-ref`")
    for key in ("mu", "sigma", "n"):
        if key not in arrays:
            raise UsageError(f"{path}: missing array {key!r}")
    mu, sigma, n = arrays["mu"], arrays["sigma"], int(arrays["n"])
    d = prov.get("features", {}).get("dim")
    if mu.shape != (d,) or sigma.shape != (d, d) or n != prov.get("count"):
        raise UsageError(f"{path}: arrays do not match the provenance (mu {mu.shape}, sigma {sigma.shape}, n {n}, "
                         f"provenance dim {d}, count {prov.get('count')})")
    feats = arrays.get("features")
    return Reference(FeatureStats.from_mean_cov(n, mu, sigma), prov, feats, str(path))


def check_features(ref: Reference, extractor) -> None:
    """Refuse to compare features from ``extractor`` against ``ref`` made with a different network."""
    want = ref.provenance["features"]
    have = _feature_info(extractor)
    if want["name"] != have["name"]:
        raise UsageError(f"{ref.path}: reference was made with the {want['name']!r} feature network, not "
                         f"{have['name']!r}; use --features {want['name']} or make a new reference with "
                         f"`diffusion-es fid-ref --features {have['name']}`")
    if want["weights_sha256"] != have["weights_sha256"] or want["dim"] != have["dim"]:
        raise UsageError(f"{ref.path}: reference was made with different {want['name']!r} weights (sha256 "
                         f"{want['weights_sha256'][:12]}..., now {have['weights_sha256'][:12]}...); recreate it with "
                         "`diffusion-es fid-ref` using the current network")
    if want.get("preprocess") != have["preprocess"]:
        raise UsageError(f"{ref.path}: reference used different preprocessing ({want.get('preprocess')!r}); "
                         "recreate it with `diffusion-es fid-ref`")
