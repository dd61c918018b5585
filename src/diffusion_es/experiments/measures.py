"""The sample-quality measures of the experiments, built once per run from a model's data.

The primary metric is the Fréchet distance against data the model never saw (the held-out split; MNIST: the
10k test images), on the dataset's classifier features. Beside it, on the same samples:

* ``fd_train``: the same FD against the training split (rewards copying; secondary);
* ``precision`` / ``recall`` (Kynkäänniemi et al.) against a fixed subset of the held-out features, k = 3: a
  fidelity-for-diversity trade shows as precision up, recall down;
* ``kid_x1000``: the unbiased Kernel Inception Distance (cubic kernel) on the same features against the same
  held-out subset, × 1000 (FD is biased upward at small sample counts; KID is not);
* ``nn_dist_train``: mean pixel distance of a sample to its nearest training image (falls when samples copy).

Feature extraction is shared: every measure of one set of samples reads the same features (:class:`Features`).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["Features", "build_measures", "nearest_train_distance"]


class Features:
    """The feature network of an FD metric, with the features of the last sample batch remembered (every measure
    of the same samples reuses them)."""

    def __init__(self, metric):
        self._extract = metric.features  # the network's own method, bound before any caching wrapper replaces it
        self._x, self._version, self._feats = None, None, None

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        # the same tensor object, unmodified (holding it keeps its memory from being reused by another tensor)
        if x is not self._x or x._version != self._version:
            self._x, self._version, self._feats = x, x._version, self._extract(x)
        return self._feats


def nearest_train_distance(train: torch.Tensor, block: int = 256) -> Callable[[torch.Tensor], float]:
    """``x -> mean over samples of the pixel L2 distance to the nearest training image`` (chunked: a 60k-image
    training set never needs a samples × train matrix in memory)."""
    flat = train.reshape(len(train), -1).to(torch.float64)

    def dist(x: torch.Tensor) -> float:
        xs = x.reshape(len(x), -1).to(torch.float64).cpu()
        best = [torch.cdist(xs[i:i + block], flat).min(dim=1).values for i in range(0, len(xs), block)]
        return float(torch.cat(best).mean())

    return dist


def build_measures(data: str, ds, ref: str, features: Optional[str], inception: Optional[str], shape,
                   n_real_pr: int, seed: int = 0):
    """(primary metric, {name: extra measure}) for samples of a model trained on ``data``."""
    from ..metrics.kid import kid
    from ..metrics.prdc import precision_recall
    from ..metrics.quality import FDMetric, build_metric

    metric = build_metric(data, ref, features, inception, shape=shape)
    extra = {}
    if isinstance(metric, FDMetric):
        feats = Features(metric)
        metric.features = feats  # the primary metric reads the shared features too
        if ref != "train" and not str(ref).endswith(".npz"):
            train_metric = build_metric(data, "train", features, inception, shape=shape)
            extra["fd_train"] = lambda x: float(train_metric.from_features(feats(x)))
        if ds.heldout is not None and len(ds.heldout) > 3:
            g = torch.Generator().manual_seed(seed + 777)
            idx = torch.randperm(len(ds.heldout), generator=g)[:min(len(ds.heldout), n_real_pr)]
            real = FDMetric.features(metric, ds.heldout[idx])  # the real images: not through the sample cache
            last = {}

            def pr(x):
                f = feats(x)
                if last.get("feats") is not f:
                    last.update(feats=f, value=precision_recall(real, f, k=3))
                return last["value"]

            extra["precision"] = lambda x: float(pr(x)["precision"])
            extra["recall"] = lambda x: float(pr(x)["recall"])
            # KID (unbiased; the full estimate, against the same held-out subset), x 1000 for readable numbers
            extra["kid_x1000"] = lambda x: 1000.0 * kid(feats(x), real, n_subsets=0).full
    elif ref != "train" and ds.heldout is not None:
        extra["fd_train"] = build_metric(data, "train", features, inception, shape=shape)
    if len(ds.shape) == 3:
        extra["nn_dist_train"] = nearest_train_distance(ds.train)
    return metric, extra
