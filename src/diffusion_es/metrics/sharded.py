"""Metrics over several processes (torchrun): feature statistics reduced by their sums, never by gathering
features, so every rank ends with the value a single process computes. Single-process runs pass straight through."""

from __future__ import annotations

import numpy as np

from ..distributed import Context, span
from .frechet import FeatureStats, frechet_distance

__all__ = ["all_reduce_stats", "extract_stats", "ShardedMetric"]


def all_reduce_stats(ctx: Context, stats: FeatureStats) -> FeatureStats:
    """:class:`FeatureStats` summed over ranks (n, sum, sum_outer)."""
    if not ctx.is_distributed:
        return stats
    d = stats.dim
    flat = ctx.all_reduce_sum(np.concatenate([[float(stats.n)], stats.sum, stats.sum_outer.ravel()]))
    out = FeatureStats(d)
    out.n = int(round(flat[0]))
    out.sum = flat[1:1 + d].copy()
    out.sum_outer = flat[1 + d:].reshape(d, d).copy()
    return out


def extract_stats(ctx: Context, extractor, images: np.ndarray, keep_features: int = 0, desc: str = "features"):
    """:func:`diffusion_es.metrics.features.extract_stats` with the images split over ranks in whole feature
    batches (so every feature vector is computed exactly as in one process), the statistics all-reduced and the
    first ``keep_features`` features (for precision/recall) collected in order. Same result on every rank."""
    from .features import extract_stats as _extract

    if not ctx.is_distributed:
        return _extract(extractor, images, keep_features=keep_features, desc=desc)
    lo, hi = span(len(images), ctx.world_size, ctx.rank, align=extractor.batch_size)
    stats, kept = _extract(extractor, images[lo:hi], keep_features=max(0, keep_features - lo),
                           progress=ctx.is_main, desc=desc)
    stats = all_reduce_stats(ctx, stats)
    parts = [k for k in ctx.exchange(kept if lo < keep_features else None) if k is not None]
    return stats, (np.concatenate(parts)[:keep_features] if parts else None)


class ShardedMetric:
    """A sample-quality metric fed with this rank's part of the samples; returns the value of the whole set.

    An :class:`~diffusion_es.metrics.quality.FDMetric` reduces feature statistics (sums) across ranks; any other
    metric gathers the samples. Every rank returns rank 0's value, so all ranks take the same decisions."""

    def __init__(self, ctx: Context, metric):
        self.ctx, self.metric = ctx, metric
        self.name = getattr(metric, "name", "metric")

    def __call__(self, x_local) -> float:
        import torch

        ctx = self.ctx
        if not ctx.is_distributed:
            return float(self.metric(x_local))
        if hasattr(self.metric, "features") and hasattr(self.metric, "ref_stats"):
            feats = self.metric.features(x_local)
            stats = all_reduce_stats(ctx, FeatureStats(feats.shape[1]).update(feats))
            value = float(frechet_distance(stats, self.metric.ref_stats))
        else:
            parts = ctx.exchange(x_local.cpu().numpy())
            value = float(self.metric(torch.from_numpy(np.concatenate(parts))))
        return float(ctx.broadcast(value))
