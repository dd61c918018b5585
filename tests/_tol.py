"""Tolerances for comparing two computations of the same quantity that differ only in rounding.

One correctly rounded floating-point operation has relative error at most u = eps/2 (eps = ``finfo(dtype).eps``,
the spacing of the numbers just above 1). Two computations of one quantity whose values are at most ``scale`` in
size, and which perform ``n`` roundings between them that can come out differently (both sides counted), differ
by at most about n·u·scale; ``tol`` returns n·eps·scale, which leaves a factor 2 for second-order terms.

How to count n (say which in a comment where ``tol`` is used):

* an elementwise operation (+, -, ·, /, sqrt, a cast to a narrower dtype): 1 per operation per side;
* a sum of m terms in an order the kernel is free to choose (BLAS blocking, the thread count, the batch size):
  m, with ``scale`` the sum of the magnitudes of the terms (the classic γ_m = m·u bound);
* a value that passes through further computation after it was rounded: multiply by that computation's
  condition (for x0 = (x - √(1-ᾱ)·ε)/√ᾱ that is 1/√ᾱ).

Never fit n to the difference one machine shows: a reduction may be summed in another order on another CPU or
with another thread count (CI runs the suite with 1 and 2 threads for this reason).
"""

from __future__ import annotations

import numpy as np
import torch

F32, F64 = torch.float32, torch.float64


def eps(dtype) -> float:
    """Machine epsilon of a torch or numpy floating dtype (2**-23 for float32, 2**-52 for float64)."""
    if isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def tol(dtype, scale: float = 1.0, n: float = 1) -> float:
    """Absolute tolerance n·eps(dtype)·scale: n roundings (both sides counted) on values of size ``scale``."""
    return float(n) * eps(dtype) * float(scale)


def mag(*xs) -> float:
    """The largest absolute value over tensors / arrays / numbers (the ``scale`` of a comparison)."""
    out = 0.0
    for x in xs:
        if isinstance(x, torch.Tensor):
            x = x.detach().double().abs().max().item() if x.numel() else 0.0
        else:
            x = float(np.max(np.abs(np.asarray(x, dtype=np.float64)))) if np.size(x) else 0.0
        out = max(out, x)
    return out


def loop_tol(dtype, scale: float, steps: int, per_step: int = 8, growth: float = 16, cond: float = 1.0) -> float:
    """Two implementations of one sampling loop (a wrapper against the loop written out by hand, ours against
    diffusers'): up to ``per_step`` roundings per step and side that can come out differently, on values of size
    ``scale`` grown by the step's condition ``cond`` (1/√ᾱ where x0 is predicted from x_t), each carried through
    the later steps and network calls, allowed to grow ``growth``-fold there. Use it in float64: 2·8·steps·16
    roundings is ~1e-13·steps relative, many orders below any effect of Epsilon Scaling the tests check."""
    return tol(dtype, scale * cond, 2 * per_step * steps * growth)


def cumprod_rtol(betas, dtype=F32) -> float:
    """Relative bound between ᾱ = Π(1 - β) as diffusers builds it (in ``dtype``: float32) and the exact product:
    per factor β's own rounding (u·β, relative to 1 - β: u·β/(1-β)), 1 - β rounded (u) and the running product
    rounded (u), i.e. Σ (2 + β/(1-β)) roundings, each counted at eps = 2u (room for β's arithmetic before its
    cast, e.g. a float32 linspace, and second-order terms)."""
    b = np.asarray(betas, dtype=np.float64)
    return tol(dtype, 1.0, float(np.sum(2 + b / (1 - b))))


def net_tol(dtype, scale: float, fan_in_sum: int = 2**14, growth: float = 16) -> float:
    """Two implementations of one network (ours and its diffusers export: other kernels, other summation orders):
    every reduction along the deepest path may sum in another order, so n = Σ of their lengths (``fan_in_sum``:
    ≤ 2**14 for the test UNets, ~20 layers of ≤ 3·3·64 terms), on values of size ``scale``, allowed to grow
    ``growth``-fold through the later layers. Use it in float64 (~6e-11 relative); in float32 it would be ~3e-2."""
    return tol(dtype, scale, fan_in_sum * growth)
