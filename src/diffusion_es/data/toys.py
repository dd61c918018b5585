"""2-D toy distributions for fast tests and pictures, seeded, roughly within [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["TOYS", "make_toy"]

TOYS = ("8gaussians", "moons", "spiral")


def make_toy(name: str, n: int = 8192, seed: int = 0) -> torch.Tensor:
    """``n`` points (n, 2) float32 of a toy distribution, drawn with ``numpy.random.default_rng(seed)``.

    * ``8gaussians``: 8 isotropic Gaussians (std 0.05) on a circle of radius 0.8.
    * ``moons``: two interleaved half circles with Gaussian noise (std 0.05), scaled into [-1, 1].
    * ``spiral``: an Archimedean spiral (1.5 turns) with Gaussian noise (std 0.03).
    """
    if n < 1:
        raise UsageError(f"toy data needs n >= 1 points, got {n}")
    rng = np.random.default_rng(seed)
    if name == "8gaussians":
        k = rng.integers(0, 8, n)
        ang = 2 * np.pi * k / 8
        x = 0.8 * np.stack([np.cos(ang), np.sin(ang)], 1) + 0.05 * rng.standard_normal((n, 2))
    elif name == "moons":
        upper = rng.random(n) < 0.5
        s = np.pi * rng.random(n)
        x = np.where(upper[:, None], np.stack([np.cos(s), np.sin(s)], 1),
                     np.stack([1 - np.cos(s), 0.5 - np.sin(s)], 1))
        x = (x - np.array([0.5, 0.25])) / np.array([1.6, 1.0])
        x = x + 0.05 * rng.standard_normal((n, 2))
    elif name == "spiral":
        u = np.sqrt(rng.random(n))
        ang = 3 * np.pi * u
        x = 0.9 * u[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1) + 0.03 * rng.standard_normal((n, 2))
    else:
        raise UsageError(f"unknown toy {name!r}: use one of {', '.join(TOYS)} (e.g. --data toy:moons)")
    return torch.from_numpy(x.astype(np.float32))
