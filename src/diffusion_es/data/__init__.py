"""Datasets, all normalised to [-1, 1]."""

from .digits import load_digits

__all__ = ["load_digits"]
