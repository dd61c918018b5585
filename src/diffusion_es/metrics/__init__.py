"""Sample-quality metrics: Fréchet distance on streaming statistics, feature networks (digit/MNIST classifiers,
Inception-v3 from a local file), precision/recall, MMD and sliced Wasserstein for 2-D toys, and reference
statistics with provenance; KID, FD∞, bootstrap intervals and the sample/reference variance decomposition of FD
(docs/metrics.md)."""

from .bootstrap import BootstrapResult, bootstrap_fd, bootstrap_fd_difference
from .fd_infinity import FDInfinityResult, fd_infinity
from .features import FEATURES, extract, extract_stats, get_extractor, weights_hash
from .frechet import FeatureStats, frechet_distance
from .kid import KIDResult, kid
from .prdc import precision_recall
from .reference import Reference, check_features, load_reference, save_reference
from .toy import mmd2_unbiased, sliced_wasserstein
from .variance import VarianceDecomposition, fd_variance_decomposition

__all__ = ["FeatureStats", "frechet_distance", "FEATURES", "get_extractor", "extract", "extract_stats",
           "weights_hash", "precision_recall", "Reference", "load_reference", "save_reference", "check_features",
           "mmd2_unbiased", "sliced_wasserstein", "kid", "KIDResult", "fd_infinity", "FDInfinityResult", "bootstrap_fd",
           "bootstrap_fd_difference", "BootstrapResult", "fd_variance_decomposition", "VarianceDecomposition"]
