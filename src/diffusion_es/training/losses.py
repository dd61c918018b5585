"""Losses of diffusion training: the simple loss on any prediction's target (through
:mod:`diffusion_es.core.param`'s prediction objects), ADM's variational term for learned variance, DDPM-IP, and
rectified flow (:func:`flow_loss`).

Objective (ADM / improved DDPM): with x_t = √ᾱ_t x_0 + √(1−ᾱ_t)(ε + γξ) and t ~ U{0..T−1},
``L = mean‖f_θ(x_t, t) − target‖² + vlb_weight · T · L_t`` where the target is ε, x_0 or
v = √ᾱ ε − √(1−ᾱ) x_0, and L_t (bits per dimension, only with learned variance) is the KL between the true
posterior q(x_{t−1}|x_t, x_0) and p_θ(x_{t−1}|x_t) with the model's mean frozen (stop-gradient) and its learned
log-variance, or at t = 0 the discretized Gaussian negative log-likelihood of x_0.

Rectified flow / conditional flow matching (Liu et al. 2023; Lipman et al. 2023; SD3): with t ~ U(0, 1) and
x_t = (1 − t) x_0 + t (ε + γξ), ``L = mean‖v_θ(x_t, T·t) − (ε − x_0)‖²`` (the velocity target of
:class:`~diffusion_es.core.param.FlowPrediction`; the network sees the time as ``T·t``, diffusers' convention).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.param import FLOW, get_prediction, vp_coefficients
from ..core.pfgm import edm_scalings, perturb
from ..core.schedules import VPSchedule

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "diffusion_tables", "diffusion_loss", "flow_loss",
           "edm_loss"]


# ---- the variational bound, from the formulas ---------------------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log1mexp(x):
    """log(1 − e^x) for x < 0, accurate everywhere (Mächler's switch at −log 2)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, half_width: float):
    """log P(x) for data on a grid in [−1, 1] with bins of half-width ``half_width`` (1/255 for 8-bit images),
    under N(mean, e^{2·log_scale}); the outermost bins extend to ±∞. Elementwise, in nats.

    Computed in log space without clamping: log(Φ(b) − Φ(a)) = log Φ(b) + log(1 − Φ(a)/Φ(b)), using the
    mirror image Φ(−a) − Φ(−b) when both ends lie in the upper tail."""
    inv = torch.exp(-log_scale)
    upper = (x - mean + half_width) * inv
    lower = (x - mean - half_width) * inv
    edge = half_width / 2
    lower = torch.where(x < -1 + edge, torch.full_like(lower, -math.inf), lower)
    upper = torch.where(x > 1 - edge, torch.full_like(upper, math.inf), upper)
    flip = lower > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + _log1mexp(torch.clamp(log_a - log_b, max=-1e-300 if x.dtype == torch.float64 else -1e-38))


def diffusion_tables(schedule: VPSchedule, device) -> dict:
    """Per-timestep float64 coefficients (as float32 tensors on ``device``) of the full T-step chain."""
    chain = schedule.respaced(np.arange(schedule.T))
    a, b = vp_coefficients(chain.alphas_cumprod)
    t = {
        "sqrt_ab": a, "sqrt_1mab": b, "coef1": chain.posterior_mean_coef1, "coef2": chain.posterior_mean_coef2,
        "post_logvar": chain.posterior_log_variance_clipped, "log_beta": np.log(chain.betas),
    }
    return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in t.items()}


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def diffusion_loss(net, x0, t, eps, tables, prediction="eps", learned_variance=False, vlb_weight=0.001,
                   levels=256, xi=None, ip_gamma=0.0):
    """The training loss for one batch (t: int64 (B,), eps and xi: like x0). Returns (loss, {"mse", "vb"})."""
    sa, s1 = _bc(tables["sqrt_ab"][t], x0), _bc(tables["sqrt_1mab"][t], x0)
    noise_in = eps if (xi is None or ip_gamma == 0) else eps + ip_gamma * xi
    x_t = sa * x0 + s1 * noise_in
    out = net(x_t, t.to(torch.float32))
    c = x0.shape[1]
    pred = out[:, :c] if learned_variance else out
    param = get_prediction(prediction)
    target = param.target(x0, eps, sa, s1)
    mse = ((pred - target) ** 2).mean()
    terms = {"mse": mse.detach()}
    if not learned_variance:
        return mse, terms
    # the variational term: mean frozen, variance learned (ADM's "learned range")
    x0_hat = param.x0_eps(pred.detach(), x_t, sa, s1)[0]
    c1, c2 = _bc(tables["coef1"][t], x0), _bc(tables["coef2"][t], x0)
    model_mean = c1 * x0_hat + c2 * x_t
    frac = (out[:, c:] + 1) / 2
    lo, hi = _bc(tables["post_logvar"][t], x0), _bc(tables["log_beta"][t], x0)
    model_logvar = frac * hi + (1 - frac) * lo
    true_mean = c1 * x0 + c2 * x_t
    kl = normal_kl(true_mean, lo, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    half = 1.0 / (levels - 1) if levels and levels > 1 else 1.0 / 255
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar, half).flatten(1).mean(1) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    T = tables["sqrt_ab"].shape[0]
    loss = mse + vlb_weight * T * vb.mean()
    terms["vb"] = vb.mean().detach()
    return loss, terms


def flow_loss(net, x0, t, eps, time_scale: float = 1000.0, xi=None, ip_gamma=0.0):
    """The rectified-flow loss for one batch (t: float (B,) in [0, 1], eps and xi: like x0). Returns
    (loss, {"mse"})."""
    a, b = _bc(1.0 - t, x0), _bc(t, x0)
    noise_in = eps if (xi is None or ip_gamma == 0) else eps + ip_gamma * xi
    x_t = a * x0 + b * noise_in
    out = net(x_t, t * time_scale)
    mse = ((out - FLOW.target(x0, eps, a, b)) ** 2).mean()
    return mse, {"mse": mse.detach()}


def edm_loss(net, x0, sigma, z, scale, schedule):
    """The EDM / PFGM++ loss for one batch: ``sigma`` (B,) noise levels, ``z`` unit Gaussian like x0, ``scale`` the
    PFGM++ √w per example (None: D = ∞, EDM's Gaussian kernel), ``schedule`` an
    :class:`~diffusion_es.core.pfgm.EDMSchedule`. Returns (loss, {"mse"}); the network's input is
    ``c_in·(x0 + σ√w z)`` and its time ``time_scale·ln(σ)/4``."""
    s = _bc(sigma, x0)
    x = perturb(x0, s.reshape(-1), z, scale)
    c_skip, c_out, c_in, c_noise = edm_scalings(s, schedule.sigma_data)
    out = net(c_in * x, (schedule.time_scale * c_noise).reshape(-1))
    target = (x0 - c_skip * x) / c_out  # PreconditionedPrediction's target: F with c_skip·x + c_out·F = x0
    mse = ((out - target) ** 2).mean()
    return mse, {"mse": mse.detach()}
