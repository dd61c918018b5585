"""Analytic oracles: data distributions whose ideal denoiser ``D(x, σ) = E[x_0 | x_0 + σ ε = x]`` is closed-form.

They are exact stand-ins for a perfectly trained network, so a sampler driven by one must converge to the true
data distribution as its step count grows, and Epsilon Scaling's effect on them can be computed by hand.

* :class:`GaussianDenoiser`: data ``x_0 ~ N(μ, s² I)``; ``D(x, σ) = μ + (x − μ) s² / (s² + σ²)``.
* :class:`GaussianMixtureDenoiser`: data ``x_0 ~ Σ_k w_k N(μ_k, s_k² I)`` (isotropic components); with
  responsibilities ``r_k(x, σ) ∝ w_k N(x; μ_k, (s_k² + σ²) I)`` the posterior mean is
  ``D(x, σ) = Σ_k r_k (μ_k + (x − μ_k) s_k² / (s_k² + σ²))``.

* :class:`PFGMGaussianDenoiser`: data ``y ~ N(μ, s² I_N)`` under the PFGM++ kernel with D augmented dimensions
  (a Student-t with ν = D, :mod:`.pfgm`: ``x = y + σ√w z``, ``w ~ InvGamma(D/2, D/2)``). Given w the posterior
  mean is Gaussian's, so ``E[y | x] = μ + (x − μ)·E[s²/(s² + σ² w) | x]``, a 1-D integral over w with
  ``p(w | x) ∝ p(w)·N(x; μ, (s² + σ² w) I)`` (float64 trapezoid over ln w; :meth:`~PFGMGaussianDenoiser.shrink_quad`
  computes the same by scipy quadrature). D = ∞ is :class:`GaussianDenoiser`.

All are :class:`~diffusion_es.param.Denoiser` subclasses (float64 in and out, any batch shape ``(B, *shape)``)
and draw true data with ``sample(n, generator)``. They also give the exact noisy marginal at any σ
(``marginal_std`` / ``cdf`` for 1-D mixtures), which is what the tests use as ground truth.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .param import Denoiser, sigma_batch

__all__ = ["GaussianDenoiser", "GaussianMixtureDenoiser", "PFGMGaussianDenoiser"]

Shape = Union[int, Sequence[int]]


def _shape(shape: Shape) -> tuple:
    shp = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    if not shp or any(d < 1 for d in shp):
        raise ValueError(f"shape must be a positive int or a tuple of positive ints, got {shape!r}")
    return shp


def _generator(generator: Optional[Union[torch.Generator, int]]) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    if generator is not None:
        g.manual_seed(int(generator))
    else:
        g.seed()
    return g


class GaussianDenoiser(Denoiser):
    """Ideal denoiser of ``N(mean, std² I)`` data of a given ``shape`` (one sample's shape, no batch dim).

    ``mean`` is a float or an array broadcastable to ``shape``; ``std`` > 0 is a float.
    """

    def __init__(self, shape: Shape = 1, mean=0.0, std: float = 1.0):
        super().__init__()
        self.shape = _shape(shape)
        std = float(std)
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"std must be finite and > 0, got {std}")
        m = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        if not torch.isfinite(m).all():
            raise ValueError("mean must be finite")
        self.mean = torch.broadcast_to(m, self.shape).clone()
        self.std = std

    def forward_full(self, x: torch.Tensor, sigma, **kwargs):
        s = sigma_batch(sigma, x).reshape(-1, *([1] * (x.ndim - 1)))
        mu = self.mean.to(x.device, x.dtype)
        v = self.std**2
        return mu + (x - mu) * (v / (v + s**2)), {}

    def marginal_std(self, sigma: float) -> float:
        """Standard deviation of ``x = x_0 + σ ε`` per coordinate: ``sqrt(s² + σ²)``."""
        return math.sqrt(self.std**2 + float(sigma) ** 2)

    def sample(self, n: int, generator: Optional[Union[torch.Generator, int]] = None) -> torch.Tensor:
        """``n`` true data samples, float64 ``(n, *shape)``."""
        g = _generator(generator)
        z = torch.randn((int(n), *self.shape), generator=g, dtype=torch.float64)
        return self.mean + self.std * z

    def extra_repr(self) -> str:
        return f"shape={self.shape}, std={self.std}"


class GaussianMixtureDenoiser(Denoiser):
    """Ideal denoiser of an isotropic Gaussian mixture ``Σ_k w_k N(μ_k, s_k² I)`` in ``d = prod(shape)`` dims.

    ``means``: ``(K, *shape)`` (or ``(K,)`` for 1-D data); ``stds``: a float or K floats; ``weights``: K
    non-negative numbers (normalised), default uniform.
    """

    def __init__(self, means, stds: Union[float, Sequence[float]] = 1.0, weights: Optional[Sequence[float]] = None):
        super().__init__()
        mu = np.asarray(means, dtype=np.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim < 2 or mu.shape[0] < 1 or not np.all(np.isfinite(mu)):
            raise ValueError("means must be a finite array of shape (K, *shape) with K >= 1")
        K = mu.shape[0]
        sd = np.broadcast_to(np.asarray(stds, dtype=np.float64), (K,)).copy()
        if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
            raise ValueError("component stds must be finite and > 0")
        w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (K,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {K} finite non-negative numbers with a positive sum")
        self.shape = tuple(mu.shape[1:])
        self.means = torch.from_numpy(mu)                      # (K, *shape)
        self.stds = torch.from_numpy(sd)                       # (K,)
        self.weights = torch.from_numpy(w / w.sum())           # (K,)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def responsibilities(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x, σ)``, shape (B, K)."""
        s = sigma_batch(sigma, x)
        return torch.softmax(self._log_joint(x, s), dim=1)

    def _log_joint(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        B, d = x.shape[0], self.means[0].numel()
        xf = x.reshape(B, 1, d)
        mu = self.means.to(x.device, x.dtype).reshape(1, -1, d)
        var = self.stds.to(x.device, x.dtype)[None, :] ** 2 + s[:, None] ** 2       # (B, K)
        sq = ((xf - mu) ** 2).sum(dim=2)                                           # (B, K)
        logw = torch.log(self.weights.to(x.device, x.dtype))[None, :]
        return logw - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)

    def forward_full(self, x: torch.Tensor, sigma, **kwargs):
        s = sigma_batch(sigma, x)
        B, d = x.shape[0], self.means[0].numel()
        r = torch.softmax(self._log_joint(x, s), dim=1)                            # (B, K)
        v = self.stds.to(x.device, x.dtype)[None, :] ** 2
        shrink = v / (v + s[:, None] ** 2)                                          # (B, K)
        xf = x.reshape(B, 1, d)
        mu = self.means.to(x.device, x.dtype).reshape(1, -1, d)
        post = mu + (xf - mu) * shrink[:, :, None]                                  # (B, K, d)
        D = (r[:, :, None] * post).sum(dim=1)
        return D.reshape(x.shape), {}

    def sample(self, n: int, generator: Optional[Union[torch.Generator, int]] = None) -> torch.Tensor:
        """``n`` true data samples, float64 ``(n, *shape)``."""
        g = _generator(generator)
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=g)
        z = torch.randn((int(n), *self.shape), generator=g, dtype=torch.float64)
        return self.means[k] + self.stds[k].reshape(-1, *([1] * len(self.shape))) * z

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the data distribution, shape ``shape``."""
        return (self.weights.reshape(-1, *([1] * len(self.shape))) * self.means).sum(0)

    def cdf(self, x, sigma: float = 0.0) -> np.ndarray:
        """CDF of the noisy marginal at σ (1-D mixtures only), for numpy or float input."""
        if self.means[0].numel() != 1:
            raise ValueError("cdf is defined for 1-D mixtures only")
        from scipy.special import ndtr

        x = np.asarray(x, dtype=np.float64)[..., None]
        mu = self.means.reshape(-1).numpy()
        sd = np.sqrt(self.stds.numpy() ** 2 + float(sigma) ** 2)
        return (self.weights.numpy() * ndtr((x - mu) / sd)).sum(-1)

    def ppf(self, q, sigma: float = 0.0) -> np.ndarray:
        """Inverse of :meth:`cdf` (1-D mixtures only), by bisection to float64 precision."""
        q = np.asarray(q, dtype=np.float64)
        mu = self.means.reshape(-1).numpy()
        sd = float(np.sqrt(self.stds.numpy().max() ** 2 + float(sigma) ** 2))
        lo = np.full(q.shape, mu.min() - 40 * sd)
        hi = np.full(q.shape, mu.max() + 40 * sd)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid, sigma) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo <= 1e-15 * np.maximum(1.0, np.abs(mid))):
                break
        return 0.5 * (lo + hi)

    def extra_repr(self) -> str:
        return f"K={self.n_components}, shape={self.shape}"


class PFGMGaussianDenoiser(GaussianDenoiser):
    """Ideal denoiser of ``N(mean, std² I)`` data under the PFGM++ kernel with ``D`` augmented dimensions
    (module docstring); D = ∞ gives :class:`GaussianDenoiser`'s closed form. The integral over u = ln w runs on a
    fixed float64 grid (step 0.02 on [−25, 25]), exact to float64 rounding while the posterior of ln w is wider
    than about 0.1, i.e. for D up to 400 (larger finite D is refused: use D = ∞)."""

    U = np.linspace(-25.0, 25.0, 2501)

    def __init__(self, shape: Shape = 1, mean=0.0, std: float = 1.0, D: float = math.inf):
        super().__init__(shape, mean, std)
        from .pfgm import check_D

        self.D = check_D(D)
        if math.isfinite(self.D) and self.D > 400:
            raise ValueError(f"PFGMGaussianDenoiser integrates over w on a grid good for D <= 400, got D = {self.D}; "
                             "use D = inf for the Gaussian limit")

    def _logpost(self, u, r2, sigma):
        """log p(u | x) up to a constant, u = ln w (any broadcastable numpy arrays)."""
        a, n, v = 0.5 * self.D, float(np.prod(self.shape)), self.std**2
        tot = v + sigma * sigma * np.exp(u)
        return -a * u - a * np.exp(-u) - 0.5 * n * np.log(tot) - 0.5 * r2 / tot

    def shrink(self, r2: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """``E[s²/(s² + σ² w) | x]`` for ``‖x − μ‖² = r2`` at σ (float64 arrays of one shape)."""
        r2, sigma = np.broadcast_arrays(np.asarray(r2, np.float64), np.asarray(sigma, np.float64))
        v = self.std**2
        if math.isinf(self.D):
            return v / (v + sigma**2)
        a, n = 0.5 * self.D, float(np.prod(self.shape))
        u, w = self.U[None, :], np.exp(self.U)[None, :]
        log_prior = -a * u - a / w  # log InvGamma(w; a, a) + ln w (the Jacobian of u = ln w), up to a constant
        out = np.empty(r2.shape)
        flat_r2, flat_s, flat_out = r2.reshape(-1), sigma.reshape(-1), out.reshape(-1)
        for i in range(0, flat_r2.size, 256):
            rr, ss = flat_r2[i:i + 256, None], flat_s[i:i + 256, None]
            g = v / (v + ss * ss * w)  # s²/(s² + σ²w): the Gaussian shrink given w
            lp = log_prior + 0.5 * n * np.log(g) - 0.5 * rr * g / v
            wgt = np.exp(lp - lp.max(axis=1, keepdims=True))
            flat_out[i:i + 256] = (wgt * g).sum(1) / wgt.sum(1)  # trapezoid: the ends weigh e^-40 at most
        return out

    def shrink_quad(self, r2: float, sigma: float) -> float:
        """The same as :meth:`shrink` for one point, by ``scipy.integrate.quad`` over u = ln w (an independent
        check of the grid)."""
        from scipy.integrate import quad

        v = self.std**2
        if math.isinf(self.D):
            return v / (v + sigma**2)
        peak = self.U[np.argmax(self._logpost(self.U, r2, sigma))]
        top = self._logpost(peak, r2, sigma)
        f = lambda u: math.exp(self._logpost(u, r2, sigma) - top)  # noqa: E731
        g = lambda u: f(u) * v / (v + sigma * sigma * math.exp(u))  # noqa: E731
        pts = [peak - 1.0, peak, peak + 1.0]
        num = quad(g, -25.0, 25.0, points=pts, limit=500, epsabs=0, epsrel=1e-13)[0]
        den = quad(f, -25.0, 25.0, points=pts, limit=500, epsabs=0, epsrel=1e-13)[0]
        return num / den

    def forward_full(self, x: torch.Tensor, sigma, **kwargs):
        if math.isinf(self.D):
            return super().forward_full(x, sigma, **kwargs)
        s = sigma_batch(sigma, x)
        mu = self.mean.to(x.device, x.dtype)
        r2 = ((x - mu) ** 2).reshape(x.shape[0], -1).sum(1)
        k = torch.from_numpy(self.shrink(r2.detach().cpu().numpy(), s.detach().cpu().numpy())).to(x.device, x.dtype)
        return mu + (x - mu) * k.reshape(-1, *([1] * (x.ndim - 1))), {}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, std={self.std}, D={self.D}"
