"""What the adapters share: a module wrapper that exposes the wrapped network's attributes.

The λ formula itself (denoiser form and prediction form) lives in :mod:`diffusion_es.core.scaling`, the
prediction conversions in :mod:`diffusion_es.core.param`; the adapters only find σ and the prediction type.
"""

from __future__ import annotations

import torch

__all__ = ["WrapsInner"]


class WrapsInner(torch.nn.Module):
    """A wrapper module whose unknown attributes come from the wrapped network ``self.inner`` (σ range,
    resolution, label dim, ...), after its own parameters, buffers and submodules."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner" or "inner" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["inner"], name)
