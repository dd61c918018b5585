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
    """``D(x, σ)`` in sigma space. Subclasses implement :meth:`forward_full`, returning ``(D, extras)``.

    ``sigma`` is a float (the same noise level for the whole batch, what samplers pass) or a (B,) tensor.
    ``step_sigma`` (keyword, default None) names the σ of the sampling step an evaluation belongs to when it
    differs from ``sigma`` (EDM's churn evaluates at σ̂ = σ(1 + γ)); only Epsilon Scaling reads it, to key λ.
    Every denoiser accepts and otherwise ignores it.
    """

    def forward_full(self, x: torch.Tensor, sigma, step_sigma=None, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma, step_sigma=None, **kwargs) -> torch.Tensor:
        return self.forward_full(x, sigma, step_sigma=step_sigma, **kwargs)[0]


class FnDenoiser(Denoiser):
    """Wrap a plain function ``fn(x, sigma_batch) -> D`` (e.g. an analytic oracle) as a :class:`Denoiser`."""

    def __init__(self, fn: Callable, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        super().__init__()
        self.fn = fn
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
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
        """The network's own dtype: a ``dtype`` attribute, else its first parameter's or buffer's, else float64."""
        dt = getattr(self.net, "dtype", None)
        if isinstance(dt, torch.dtype):
            return dt
        if isinstance(self.net, nn.Module):
            for p in self.net.parameters():
                return p.dtype
            for b in self.net.buffers():
                if b.is_floating_point():
                    return b.dtype
        return torch.float64

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
        dtype = self._net_dtype()
        if isinstance(sigma, (float, int)):  # one noise level for the batch: scalar arithmetic, one lookup
            s = float(sigma)
            t = torch.full((x.shape[0],), float(self.schedule.sigma_to_t(s)), dtype=dtype, device=x.device)
            ab = 1.0 / (1.0 + s * s)
            x_t = x * ab**0.5
        else:
            s = sigma_batch(sigma, x)
            t = torch.from_numpy(self.schedule.sigma_to_t(s.detach().cpu().numpy())).to(x.device, dtype)
            s = _bcast(s, x)
            ab = 1.0 / (1.0 + s**2)
            x_t = x * ab.sqrt()
        out = self.net(x_t.to(dtype), t, **kwargs).to(torch.float64)
        extras = {}
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"learned-variance network must output {2 * x.shape[1]} channels, got {out.shape[1]}")
            out, extras["var_values"] = out.split(x.shape[1], dim=1)
        elif out.shape != x.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} does not match input {tuple(x.shape)}")
        if self.prediction == "eps":
            D = x - s * out
        elif self.prediction == "x0":
            D = out
        else:
            D = eps_x0_from_v(x_t, out, ab)[1]
        return D, extras


class DenoiserEpsNet(nn.Module):
    """The other way round: a denoiser seen as an ε-network on VP inputs ``(x_t, t)`` (integer or float t)."""

    dtype = torch.float64  # VPDenoiser keeps float64 around it

    def __init__(self, denoiser: Denoiser, schedule: VPSchedule):
        super().__init__()
        self.denoiser = as_denoiser(denoiser)
        self.schedule = schedule

    def forward(self, x_t, t, **kwargs):
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        # σ(t) log-linear between table entries: the exact inverse of VPDenoiser's σ -> t map
        sig = torch.from_numpy(self.schedule.t_to_sigma(t.detach().cpu().numpy())).to(x_t.device)
        ab = _bcast(1.0 / (1.0 + sig**2), x_t)
        xt64 = x_t.to(torch.float64)
        D = self.denoiser(xt64 / ab.sqrt(), sig, **kwargs)
        return eps_from_x0(xt64, D, ab).to(x_t.dtype)
