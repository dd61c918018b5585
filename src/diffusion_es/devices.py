"""Torch devices named by the user: checked once, with one line that says what this machine has instead."""

from __future__ import annotations

import re

import torch

__all__ = ["check_device"]

_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(?::(\d+))?")


def check_device(device, hint: str = "device='cpu'") -> torch.device:
    """``device`` (a string such as ``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xpu``, or a ``torch.device``) as a
    ``torch.device`` this machine has; otherwise a ValueError naming what is missing (``hint``: how the caller
    spells the fallback, e.g. ``--device cpu``)."""
    if isinstance(device, torch.device):
        kind, index = device.type, device.index
    else:
        m = _DEVICE.fullmatch(str(device).strip())
        if not m:
            raise ValueError(f"{device!r} is not a torch device: use cpu, cuda, cuda:N, mps or xpu")
        kind, index = m.group(1), None if m.group(2) is None else int(m.group(2))
    if kind == "cpu":
        if index not in (None, 0):
            raise ValueError(f"{device!r}: there is one cpu device; use cpu")
    elif kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{device!r}: CUDA is not available in this torch; use {hint}")
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{device!r}: MPS is not available here; use {hint}")
    elif kind == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise ValueError(f"{device!r}: XPU is not available here; use {hint}")
    else:
        raise ValueError(f"{device!r} is not a device diffusion-es samples on: use cpu, cuda, cuda:N, mps or xpu")
    return torch.device(kind) if index is None else torch.device(kind, index)
