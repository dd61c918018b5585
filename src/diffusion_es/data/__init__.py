"""Datasets, all normalised to [-1, 1]: scikit-learn digits (default), 2-D toys, MNIST from user files, and any
ADM-style ``.npz`` / PNG folder. :func:`load_dataset` dispatches on a spec string."""

from .datasets import Dataset, load_dataset
from .digits import load_digits
from .toys import TOYS, make_toy

__all__ = ["load_digits", "load_dataset", "Dataset", "make_toy", "TOYS"]
