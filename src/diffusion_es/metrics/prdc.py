"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019): a k-nearest-neighbour estimate of each
distribution's manifold in feature space.

Each feature vector r of a set R gets a ball whose radius is the distance to its k-th nearest neighbour in R
(itself excluded). The manifold of R is the union of those balls. Then

* precision = fraction of generated samples that fall inside the manifold of the real set,
* recall    = fraction of real samples that fall inside the manifold of the generated set

("inside" includes the boundary: distance <= radius). k = 3 is the paper's default. Distances are Euclidean in
float64, computed in row blocks so memory stays O(block · N). The estimate depends on the set sizes; compare
numbers made with equal sizes (the paper used 50k vs 50k).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]


def _t(x) -> torch.Tensor:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {a.shape}")
    return torch.from_numpy(a)


def _blocks(n: int, block: int):
    for i in range(0, n, block):
        yield slice(i, min(n, i + block))


def knn_radii(feats, k: int = 3, block: int = 1024) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    x = _t(feats)
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs at least k+1={k + 1} feature vectors, have {len(x)}")
    out = torch.empty(len(x), dtype=torch.float64)
    for s in _blocks(len(x), block):
        d = torch.cdist(x[s], x)
        d[torch.arange(s.stop - s.start), torch.arange(s.start, s.stop)] = float("inf")  # exclude self only
        out[s] = torch.kthvalue(d, k, dim=1).values
    return out.numpy()


def manifold_coverage(manifold_feats, radii, query_feats, block: int = 1024) -> float:
    """Fraction of query rows within distance radii[j] of some manifold row j."""
    m, q = _t(manifold_feats), _t(query_feats)
    r = torch.from_numpy(np.asarray(radii, dtype=np.float64))
    inside = 0
    for s in _blocks(len(q), block):
        d = torch.cdist(q[s], m)
        inside += int((d <= r[None, :]).any(dim=1).sum())
    return inside / len(q)


def precision_recall(real_feats, fake_feats, k: int = 3, block: int = 1024) -> dict:
    """``{"precision", "recall", "k", "n_real", "n_fake"}`` for two feature sets (N, D) and (M, D)."""
    real, fake = _t(real_feats), _t(fake_feats)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    precision = manifold_coverage(real, knn_radii(real, k, block), fake, block)
    recall = manifold_coverage(fake, knn_radii(fake, k, block), real, block)
    return {"precision": precision, "recall": recall, "k": int(k), "n_real": len(real), "n_fake": len(fake)}
