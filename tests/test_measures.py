"""The experiments' measures: one feature extraction per sample set, held-out primary metric, the extras."""

import numpy as np
import pytest
import torch

from diffusion_es.data import load_dataset
from diffusion_es.experiments.measures import Features, build_measures, nearest_train_distance


class CountingMetric:
    def __init__(self):
        self.calls = 0

    def features(self, x):
        self.calls += 1
        return x.reshape(len(x), -1).sum(dim=1, keepdim=True).numpy()


def test_features_are_extracted_once_per_sample_set_and_never_reused_for_another():
    m = CountingMetric()
    f = Features(m)
    x = torch.ones(4, 1, 2, 2)
    a, b = f(x), f(x)
    assert a is b and m.calls == 1
    y = torch.zeros(4, 1, 2, 2)           # another tensor (even one that could reuse x's memory later)
    assert f(y)[0, 0] == 0 and m.calls == 2
    y.add_(1.0)                            # modified in place: its features are recomputed
    assert f(y)[0, 0] == 4 and m.calls == 3


def test_nearest_train_distance_is_chunked_and_exact():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 1, 3, 3, generator=g)
    x = torch.randn(7, 1, 3, 3, generator=g)
    want = torch.cdist(x.reshape(7, -1).double(), train.reshape(50, -1).double()).min(dim=1).values.mean()
    assert nearest_train_distance(train, block=3)(x) == pytest.approx(float(want), rel=1e-12)
    assert nearest_train_distance(train)(train[:5]) == 0.0  # a training image is at distance 0 from itself


def test_digits_measures_are_held_out_primary_with_precision_recall_kid_and_copying():
    ds = load_dataset("digits")
    metric, extra = build_measures("digits", ds, "heldout", None, None, (1, 8, 8), n_real_pr=200)
    assert metric.name == "FD-digits vs heldout"
    assert set(extra) == {"fd_train", "precision", "recall", "kid_x1000", "nn_dist_train"}
    x = ds.heldout[:200].to(torch.float64)  # held-out images as "samples": the measures of real data
    fd, fd_train = metric(x), extra["fd_train"](x)
    assert 0 < fd and 0 < fd_train
    p, r = extra["precision"](x), extra["recall"](x)
    assert 0.5 < p <= 1 and 0.5 < r <= 1
    assert np.isfinite(extra["kid_x1000"](x))
    assert extra["nn_dist_train"](x) > 0  # held-out images are not training images
    # training images copied: distance 0 to the training set, FD vs train far below FD vs held-out
    t = ds.train[:200].to(torch.float64)
    assert extra["nn_dist_train"](t) == 0.0 and extra["fd_train"](t) < metric(t)
