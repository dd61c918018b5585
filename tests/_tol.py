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

A float32 network between the two computations has no useful bound: its reordered sums cancel massively (for
the digit CNN, Higham's bound through the |W|-network is ~4 on features of size ~33, the real differences
~1e-7). Such comparisons run the network in float64 (where the same bound is ~1e-8, see ``reorder_bound``), or
compare at the network's input and require the same output for the same input in one process.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_es.metrics.features import get_extractor as _GET_EXTRACTOR  # bound before any test patches it

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


def trace_sqrt_tol(s1, s2) -> float:
    """Float64 rounding of tr((S1 S2)^{1/2}), the Fréchet distance's root term, for covariances S1, S2: a backward
    stable eigensolver (or Schur square root) gets each eigenvalue w of S1^{1/2} S2 S1^{1/2} to within
    δ = d·eps·‖S1‖‖S2‖, and the square root turns that into δ/(2√w), at most √δ near w = 0."""
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    d = s1.shape[0]
    delta = tol(F64, np.linalg.norm(s1, 2) * np.linalg.norm(s2, 2), d)
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    r = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    m = r @ s2 @ r
    w = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)
    with np.errstate(divide="ignore"):
        per = np.where(w > 0, delta / (2 * np.sqrt(w)), np.inf)
    return float(np.sum(np.minimum(np.sqrt(delta), per)))


def fd_rounding_tol(s1, s2) -> float:
    """Float64 rounding of a Fréchet distance |μ1 - μ2|² + tr S1 + tr S2 - 2 tr((S1 S2)^{1/2}) of these
    covariances: twice the root term's (``trace_sqrt_tol``), plus the traces' sums."""
    d = np.asarray(s1).shape[0]
    return 2 * trace_sqrt_tol(s1, s2) + tol(F64, np.trace(s1) + np.trace(s2), 2 * d)


# ---- feature networks (diffusion_es.metrics) -------------------------------------------------------------------
def float64_extractor(name="digits", **kwargs):
    """A digit-classifier extractor with its network in float64 (its float32 input cast exactly): features of one
    image then differ only by the order BLAS sums in (batch size, thread count), bounded by ``reorder_bound``."""
    ex = _GET_EXTRACTOR(name, **kwargs)
    ex.model.double()
    ex.model.body.register_forward_pre_hook(lambda m, args: (args[0].double(),))
    return ex


@torch.no_grad()
def reorder_bound(model, x):
    """Per feature, the largest difference two summation orders can make (Higham's γ_n bound): n·eps·Σ|w·a|,
    with Σ|w·a| the network run on |x| with |W|, |b| (ReLU and max-pool keep it an upper bound) and n the terms
    summed along the way."""
    a, n = x.abs().double(), 0
    for mod in model.body:
        if isinstance(mod, nn.Conv2d):
            a = F.conv2d(a, mod.weight.abs().double(), mod.bias.abs().double(), padding=mod.padding)
            n += mod.weight[0].numel()
        elif isinstance(mod, nn.MaxPool2d):
            a = mod(a)
        else:
            assert isinstance(mod, (nn.ReLU, nn.Identity)), mod  # a >= 0 passes through
    a = F.linear(a.flatten(1), model.fc.weight.abs().double(), model.fc.bias.abs().double())
    n += model.fc.in_features
    return tol(F64, float(a.max()), n)


def stats_tols(df: float, feats, cov):
    """Tolerances (mean, covariance, Fréchet distance) between float64 statistics of features that differ by at
    most ``df`` each: the mean by df and its own sum; the covariance Σ f fᵀ/n - μμᵀ to first order in df and its
    own sums; the distance by |Δμ|² + ‖ΔC‖_1 (Powers-Størmer, ‖ΔC‖_1 <= d^1.5 max|ΔC|) and its own rounding."""
    f = np.asarray(feats, np.float64)
    big, n, d = float(np.abs(f).max()), f.shape[0], f.shape[1]
    mean_tol = df + tol(F64, big, n)
    cov_tol = 4 * big * df + tol(F64, big**2, 4 * n)
    return mean_tol, cov_tol, d * mean_tol**2 + d**1.5 * cov_tol + fd_rounding_tol(cov, cov)
