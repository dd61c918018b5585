"""The one check of the random generators the metrics take: the subset and bootstrap draws (KID, FD∞, bootstrap
intervals) use numpy's ``Generator`` / ``RandomState``; the sliced-Wasserstein directions use a ``torch.Generator``.
Neither is seeded behind the caller's back, and the wrong kind is named in one line (it used to be an
AttributeError from deep inside)."""

from __future__ import annotations

import numpy as np


def numpy_generator(generator, what: str):
    """``generator`` if it is a numpy ``Generator`` or ``RandomState``; a clear error otherwise."""
    if generator is None:
        raise ValueError(f"{what}: pass generator=np.random.default_rng(seed) so the draws are reproducible")
    if not isinstance(generator, (np.random.Generator, np.random.RandomState)):
        raise TypeError(f"{what}: generator must be a numpy Generator (np.random.default_rng(seed)) or RandomState, "
                        f"got {type(generator).__module__}.{type(generator).__name__}")
    return generator


def torch_generator(generator, what: str):
    """``generator`` if it is a ``torch.Generator``; a clear error otherwise."""
    import torch  # here, so the numpy-only metrics (KID) do not import torch

    if generator is None:
        raise ValueError(f"{what}: pass generator=torch.Generator().manual_seed(seed) so the draws are reproducible")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{what}: generator must be a torch.Generator (torch.Generator().manual_seed(seed)), got "
                        f"{type(generator).__module__}.{type(generator).__name__}")
    return generator
