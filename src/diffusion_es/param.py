"""Every conversion between parameterisations, in one place.

Spaces:

* VP: ``x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε`` (DDPM / ADM / diffusers networks take ``(x_t, t)``).
* sigma space (EDM / k-diffusion): ``x = x_0 + σ ε`` with ``x = x_t / sqrt(ᾱ)`` and ``σ = sqrt((1 - ᾱ) / ᾱ)``.

Predictions a network can make: ε (``eps``), x_0 (``x0``) or v (``v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0``).

A *denoiser* is the common currency of the samplers: ``D(x, σ) ≈ E[x_0 | x]`` in sigma space, float64 in and
out. :class:`VPDenoiser` turns a VP network into one; :class:`DenoiserEpsNet` turns a denoiser back into an
ε-network on integer timesteps. Learned-variance networks (ADM: 2C output channels, ε then the variance
interpolation value) keep their variance output as ``extras["var_values"]``.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .schedules import VPSchedule

__all__ = [
    "PREDICTIONS",
    "sigma_to_alpha_bar",
    "alpha_bar_to_sigma",
    "vp_to_sigma_space",
    "sigma_to_vp_space",
    "eps_from_x0",
    "x0_from_eps",
    "v_from_eps_x0",
    "eps_x0_from_v",
    "Denoiser",
    "FnDenoiser",
    "VPDenoiser",
    "DenoiserEpsNet",
    "as_denoiser",
    "sigma_batch",
]

PREDICTIONS = ("eps", "x0", "v")


# ---- scalar relations ------------------------------------------------------------------------------------
def sigma_to_alpha_bar(sigma):
    return 1.0 / (1.0 + sigma**2)


def alpha_bar_to_sigma(alpha_bar):
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


def vp_to_sigma_space(x_t, alpha_bar):
    """x = x_t / sqrt(ᾱ)."""
    return x_t / alpha_bar**0.5


def sigma_to_vp_space(x, sigma):
    """x_t = x / sqrt(1 + σ²) = sqrt(ᾱ) x."""
    return x / (1.0 + sigma**2) ** 0.5


# ---- VP-space prediction conversions (ab = ᾱ_t, broadcastable) -------------------------------------------
def x0_from_eps(x_t, eps, ab):
    return (x_t - (1.0 - ab) ** 0.5 * eps) / ab**0.5


def eps_from_x0(x_t, x0, ab):
    return (x_t - ab**0.5 * x0) / (1.0 - ab) ** 0.5


def v_from_eps_x0(eps, x0, ab):
    return ab**0.5 * eps - (1.0 - ab) ** 0.5 * x0


def eps_x0_from_v(x_t, v, ab):
    """(ε, x_0) from a v-prediction: ε = sqrt(ᾱ) v + sqrt(1-ᾱ) x_t, x_0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v."""
    return ab**0.5 * v + (1.0 - ab) ** 0.5 * x_t, ab**0.5 * x_t - (1.0 - ab) ** 0.5 * v


def sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as a float64 tensor of shape (B,) on x's device, from a float, 0-d or (B,) tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.reshape(-1, *([1] * (x.ndim - 1)))


# ---- denoisers -------------------------------------------------------------------------------------------
class Denoiser(nn.Module):
    """``D(x, σ)`` in sigma space. Subclasses implement :meth:`forward_full`, returning ``(D, extras)``."""

    def forward_full(self, x: torch.Tensor, sigma, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        return self.forward_full(x, sigma, **kwargs)[0]


class FnDenoiser(Denoiser):
    """Wrap a plain function ``fn(x, sigma_batch) -> D`` (e.g. an analytic oracle) as a :class:`Denoiser`."""

    def __init__(self, fn: Callable, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        super().__init__()
        self.fn = fn
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def forward_full(self, x, sigma, **kwargs):
        return self.fn(x, sigma_batch(sigma, x), **kwargs), {}


def as_denoiser(model) -> Denoiser:
    return model if isinstance(model, Denoiser) else FnDenoiser(model)


class VPDenoiser(Denoiser):
    """A VP network ``net(x_t, t, **kw)`` (ε-, x0- or v-prediction; optionally 2C channels with learned variance)
    seen as a sigma-space denoiser.

    ``σ`` is mapped to the network's timestep by log-linear interpolation in the schedule's sigma table
    (sigmas of the table map to their integer timestep exactly). The network runs in its own dtype; everything
    around it is float64.
    """

    def __init__(self, net: Callable, schedule: VPSchedule, prediction: str = "eps",
                 learned_variance: bool = False):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}: use one of {', '.join(PREDICTIONS)}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.learned_variance = learned_variance
        self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max

    def _net_dtype(self):
        if isinstance(self.net, nn.Module):
            for p in self.net.parameters():
                return p.dtype
        return torch.float32

    def forward_full(self, x, sigma, **kwargs):
        s = sigma_batch(sigma, x)
        t = torch.from_numpy(self.schedule.sigma_to_t(s.detach().cpu().numpy())).to(x.device)
        ab = _bcast(1.0 / (1.0 + s**2), x)
        x_t = x * ab.sqrt()
        dtype = self._net_dtype()
        out = self.net(x_t.to(dtype), t.to(dtype), **kwargs).to(torch.float64)
        extras = {}
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"learned-variance network must output {2 * x.shape[1]} channels, got {out.shape[1]}")
            out, extras["var_values"] = out.split(x.shape[1], dim=1)
        elif out.shape != x.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} does not match input {tuple(x.shape)}")
        if self.prediction == "eps":
            D = x - _bcast(s, x) * out
        elif self.prediction == "x0":
            D = out
        else:
            D = eps_x0_from_v(x_t, out, ab)[1]
        return D, extras


class DenoiserEpsNet(nn.Module):
    """The other way round: a denoiser seen as an ε-network on VP inputs ``(x_t, t)`` (integer or float t)."""

    def __init__(self, denoiser: Denoiser, schedule: VPSchedule):
        super().__init__()
        self.denoiser = as_denoiser(denoiser)
        self.schedule = schedule

    def forward(self, x_t, t, **kwargs):
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        idx = t.detach().cpu().numpy().astype(np.float64)
        ab_np = np.interp(idx, np.arange(self.schedule.T), self.schedule.alphas_cumprod)
        ab = _bcast(torch.from_numpy(ab_np).to(x_t.device), x_t)
        xt64 = x_t.to(torch.float64)
        sigma = ((1.0 - ab) / ab).sqrt().reshape(-1)
        D = self.denoiser(xt64 / ab.sqrt(), sigma, **kwargs)
        return eps_from_x0(xt64, D, ab).to(x_t.dtype)
