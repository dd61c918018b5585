"""Sample-quality metrics: Fréchet distance on streaming statistics, feature networks (digit/MNIST classifiers,
Inception-v3 from a local file), precision/recall, MMD and sliced Wasserstein for 2-D toys, and reference
statistics with provenance."""

from .frechet import FeatureStats, frechet_distance
from .features import FEATURES, get_extractor, extract, extract_stats, weights_hash

__all__ = ["FeatureStats", "frechet_distance", "FEATURES", "get_extractor", "extract", "extract_stats",
           "weights_hash"]
