"""Every conversion between parameterisations, in one place.

Spaces:

* VP: ``x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε`` (DDPM / ADM / diffusers networks take ``(x_t, t)``).
* rectified flow (SD3, Flux): ``x_t = (1 - t) x_0 + t ε``, t in [0, 1].
* sigma space (EDM / k-diffusion), the denoiser frame of both: ``x = x_0 + σ ε`` with ``x = x_t / a`` for a process
  point ``x_t = a x_0 + b ε`` and ``σ = b / a`` (VP: ``σ = sqrt((1 - ᾱ) / ᾱ)``; flow: ``σ = t / (1 - t)``,
  ``t = σ / (1 + σ)``).

**σ = ∞** (ᾱ = 0 of a zero-terminal-SNR VP schedule, t = 1 of rectified flow): ``x = x_t / a`` is undefined (a = 0).
The convention everywhere in this package: at σ = ∞ the denoiser-frame state *is* the process state, ``x = x_t``
(= ε exactly, the input is pure noise), both ways (:func:`vp_to_sigma_space`, :func:`sigma_to_vp_space`,
:func:`flow_to_sigma_space`, :func:`sigma_to_flow_space` pass it through); a denoiser called at σ = ∞ receives that
state and returns x̂_0, and the implied ε there is the state itself (:func:`implied_eps`). ES uses λ = 1 at σ = ∞
(:mod:`.scaling`). An ε-prediction network cannot give x̂_0 at σ = ∞ (x̂_0 = (x_t − ε̂)/0); it is refused there.

Predictions a network can make are small objects (:class:`Prediction`: ε, x_0, v, flow velocity), each giving
the x̂_0 and ε̂ it implies, its inverse, its training target and its (c_skip, c_out) scalings in a few lines; the
samplers, adapters, training and measurement all go through them.

A *denoiser* is the common currency of the samplers: ``D(x, σ) ≈ E[x_0 | x]`` in sigma space, float64 in and
out. :class:`VPDenoiser` turns a VP network into one; :class:`DenoiserEpsNet` turns a denoiser back into an
ε-network on integer timesteps. Learned-variance networks (ADM: 2C output channels, ε then the variance
interpolation value) keep their variance output as ``extras["var_values"]``.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

__all__ = [
    "Prediction",
    "EpsPrediction",
    "X0Prediction",
    "VPrediction",
    "FlowPrediction",
    "PreconditionedPrediction",
    "FLOW",
    "PREDICTION_TYPES",
    "PREDICTION_ALIASES",
    "get_prediction",
    "vp_coefficients",
    "sigma_vp_coefficients",
    "PREDICTIONS",
    "sigma_to_alpha_bar",
    "alpha_bar_to_sigma",
    "vp_to_sigma_space",
    "sigma_to_vp_space",
    "flow_t_to_sigma",
    "sigma_to_flow_t",
    "flow_to_sigma_space",
    "sigma_to_flow_space",
    "process_coefficients",
    "PROCESSES",
    "implied_eps",
    "noised",
    "eps_from_x0",
    "x0_from_eps",
    "v_from_eps_x0",
    "eps_x0_from_v",
    "Denoiser",
    "FnDenoiser",
    "VPDenoiser",
    "check_clip_x0",
    "exact_sqrt",
    "real_number",
    "FlowDenoiser",
    "DenoiserEpsNet",
    "as_denoiser",
    "sigma_batch",
]

# ---- scalar relations (floats, numpy arrays or tensors) ----------------------------------------------------
def exact_sqrt(v):
    """Square root of a float, numpy array or tensor, correctly rounded in all three, so a level computed as a Python
    float and the same level as a tensor give the same bytes.

    * Python's float ``** 0.5`` is not correctly rounded (the last bit differs for about 0.1 % of values);
      ``math.sqrt`` and ``numpy.sqrt`` are.
    * torch's CPU ``sqrt`` is not, and how often it is off depends on the CPU (builds with MKL take the root from
      MKL's vector maths, which picks its code by processor): on an Intel Xeon with torch 2.13 it missed the correctly
      rounded root in the last bit for about 0.7 % of float64 values, ``sqrt(0.5)`` among them, whichever kernel
      torch was told to use (``ATEN_CPU_CAPABILITY``); on the AMD EPYC boxes every exactness test here passed.
      A CPU tensor without autograd is therefore rooted by numpy. Tensors on other devices (CUDA's ``sqrt`` is
      correctly rounded), half precision and tensors that need a gradient keep torch's.
    """
    if isinstance(v, torch.Tensor):
        if v.device.type != "cpu" or v.requires_grad or v.dtype not in (torch.float32, torch.float64):
            return v.sqrt()
        a = v.numpy()
        with np.errstate(invalid="ignore"):  # a negative value gives NaN, as torch's does, without a warning
            return torch.from_numpy(np.asarray(np.sqrt(a), dtype=a.dtype))
    return np.sqrt(v) if isinstance(v, np.ndarray) else math.sqrt(v)


def sigma_to_alpha_bar(sigma):
    """ᾱ = 1 / (1 + σ²)."""
    return 1.0 / (1.0 + sigma * sigma)


def alpha_bar_to_sigma(alpha_bar):
    """σ = sqrt((1 − ᾱ) / ᾱ); ᾱ = 0 (zero terminal SNR) gives σ = ∞."""
    if isinstance(alpha_bar, torch.Tensor):
        return exact_sqrt((1.0 - alpha_bar) / alpha_bar)
    if not isinstance(alpha_bar, np.ndarray):
        return math.inf if alpha_bar == 0 else math.sqrt((1.0 - alpha_bar) / alpha_bar)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def _is_inf(v):
    """Where ``v`` (float, numpy array or tensor) is +∞."""
    if isinstance(v, torch.Tensor):
        return torch.isinf(v)
    return np.isinf(v) if isinstance(v, np.ndarray) else math.isinf(v)


def _pass_at(mask, x, y):
    """``y`` with ``x`` wherever ``mask`` holds (the σ = ∞ pass-through); ``mask`` a bool or broadcastable tensor."""
    if isinstance(mask, (bool, np.bool_)):
        return x if mask else y
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not bool(mask.any()):
        return y
    return torch.where(mask.to(x.device), x, y)


def vp_to_sigma_space(x_t, alpha_bar):
    """x = x_t / sqrt(ᾱ); ᾱ = 0 (σ = ∞) passes x_t through (module docstring)."""
    if isinstance(alpha_bar, float):  # one level for the whole batch (every step of a plain sampler)
        return x_t if alpha_bar == 0 else x_t / math.sqrt(alpha_bar)
    zero = alpha_bar == 0
    if isinstance(zero, (bool, np.bool_)) and zero:
        return x_t
    with np.errstate(divide="ignore", invalid="ignore"):
        return _pass_at(zero, x_t, x_t / exact_sqrt(alpha_bar))


def sigma_to_vp_space(x, sigma):
    """x_t = x / sqrt(1 + σ²) = sqrt(ᾱ) x; σ = ∞ passes x through."""
    if isinstance(sigma, float):  # one level for the whole batch
        return x if math.isinf(sigma) else x * math.sqrt(sigma_to_alpha_bar(sigma))
    inf = _is_inf(sigma)
    if isinstance(inf, (bool, np.bool_)) and inf:
        return x
    return _pass_at(inf, x, x * exact_sqrt(sigma_to_alpha_bar(sigma)))


def flow_t_to_sigma(t):
    """σ = t / (1 − t) of a rectified-flow time t in [0, 1]; t = 1 gives σ = ∞."""
    if isinstance(t, torch.Tensor):
        return t / (1.0 - t)
    if isinstance(t, np.ndarray):
        with np.errstate(divide="ignore"):
            return t / (1.0 - t)
    return math.inf if t == 1 else t / (1.0 - t)


def sigma_to_flow_t(sigma):
    """t = σ / (1 + σ); σ = ∞ gives t = 1."""
    inf = _is_inf(sigma)
    if isinstance(inf, (bool, np.bool_)):
        return 1.0 if inf else sigma / (1.0 + sigma)
    if isinstance(sigma, torch.Tensor):
        return torch.where(inf, torch.ones_like(sigma), sigma / (1.0 + sigma))
    with np.errstate(invalid="ignore"):
        return np.where(inf, 1.0, sigma / (1.0 + sigma))


def flow_to_sigma_space(x_t, t):
    """x = x_t / (1 − t) for a float t; t = 1 (σ = ∞) passes x_t through."""
    return x_t if t == 1 else x_t / (1.0 - t)


def sigma_to_flow_space(x, sigma):
    """x_t = x / (1 + σ) = (1 − t) x for a float σ; σ = ∞ passes x through."""
    return x if math.isinf(sigma) else x / (1.0 + sigma)


PROCESSES = ("vp", "flow")


def process_coefficients(process: str, sigma):
    """(a, b) of the process point ``x_t = a x_0 + b ε`` at noise level σ (floats or tensors): VP
    ``(1/sqrt(1 + σ²), σ/sqrt(1 + σ²))``, flow ``(1/(1 + σ), σ/(1 + σ))``; σ = ∞ gives (0, 1) in both."""
    if process == "vp":
        inf = _is_inf(sigma)
        if isinstance(inf, (bool, np.bool_)):
            return (0.0, 1.0) if inf else sigma_vp_coefficients(sigma)
        a, b = sigma_vp_coefficients(sigma)
        return torch.where(inf, torch.zeros_like(a), a), torch.where(inf, torch.ones_like(b), b)
    if process == "flow":
        t = sigma_to_flow_t(sigma)
        return 1.0 - t, t
    raise ValueError(f"unknown process {process!r}: use one of {', '.join(PROCESSES)}")


def implied_eps(x, D, sigma):
    """The ε a denoiser output implies, ``(x − D) / σ``; at σ = ∞ the state itself (``x`` is then pure noise)."""
    inf = _is_inf(sigma)
    if isinstance(inf, (bool, np.bool_)):
        return x if inf else (x - D) / sigma
    return _pass_at(inf, x, (x - D) / sigma)


def noised(x0, eps, sigma):
    """The denoiser-frame input ``x_0 + σ ε`` of data ``x0`` and noise ``eps``; at σ = ∞ the noise itself."""
    inf = _is_inf(sigma)
    if isinstance(inf, (bool, np.bool_)):
        return eps if inf else x0 + sigma * eps
    return _pass_at(inf, eps, x0 + torch.where(inf, torch.zeros_like(sigma), sigma) * eps)


# ---- predictions: what a network outputs, and everything that follows from it ---------------------------
# A network is evaluated at a point x_t = a·x_0 + b·ε of its process (VP: a = sqrt(ᾱ), b = sqrt(1 − ᾱ); rectified
# flow: a = 1 − t, b = t). In the denoiser frame x = x_t / a = x_0 + σ ε with σ = b / a, every prediction gives
# D(x, σ) = c_skip·x + c_out·F (F the network output); ES rescales the ε it implies (:mod:`.scaling`).
class Prediction:
    """One parameterisation. ``a``, ``b`` are floats or broadcastable tensors; every method is a few lines."""

    name = ""

    def x0_eps(self, out, x_t, a, b):  # pragma: no cover - abstract
        """(x̂_0, ε̂) implied by the output ``out`` at ``x_t``."""
        raise NotImplementedError

    def from_eps(self, eps, x_t, a, b):  # pragma: no cover - abstract
        """The output that implies ``eps`` at ``x_t`` (inverse of the ε of :meth:`x0_eps`)."""
        raise NotImplementedError

    def target(self, x0, eps, a, b):  # pragma: no cover - abstract
        """The training target for data ``x0`` noised with ``eps``."""
        raise NotImplementedError

    def scalings(self, sigma, a, b):  # pragma: no cover - abstract
        """(c_skip, c_out) of ``D = c_skip·x + c_out·out`` in the denoiser frame (the network sees ``a·x``)."""
        raise NotImplementedError

    def denoised(self, x, x_t, out, sigma, a, b):
        """D(x, σ): the x̂_0 the samplers use."""
        return self.x0_eps(out, x_t, a, b)[0]

    def __repr__(self):
        return f"<prediction {self.name}>"


class EpsPrediction(Prediction):
    """ε-prediction (DDPM, ADM, SD 1.x): x̂_0 = (x_t − b·ε̂)/a."""

    name = "eps"

    def x0_eps(self, out, x_t, a, b):
        return (x_t - b * out) / a, out

    def from_eps(self, eps, x_t, a, b):
        return eps

    def target(self, x0, eps, a, b):
        return eps

    def scalings(self, sigma, a, b):
        return 1.0, -sigma

    def denoised(self, x, x_t, out, sigma, a, b):
        return x - sigma * out


class X0Prediction(Prediction):
    """x_0-prediction (diffusers "sample"): ε̂ = (x_t − a·x̂_0)/b."""

    name = "x0"

    def x0_eps(self, out, x_t, a, b):
        return out, (x_t - a * out) / b

    def from_eps(self, eps, x_t, a, b):
        return (x_t - b * eps) / a

    def target(self, x0, eps, a, b):
        return x0

    def scalings(self, sigma, a, b):
        return 0.0, 1.0

    def denoised(self, x, x_t, out, sigma, a, b):
        return out


class VPrediction(Prediction):
    """v-prediction (Salimans & Ho; SD 2.x) of a VP process (a² + b² = 1): v = a·ε − b·x_0, so
    ε = a·v + b·x_t and x_0 = a·x_t − b·v."""

    name = "v"

    def x0_eps(self, out, x_t, a, b):
        return a * x_t - b * out, a * out + b * x_t

    def from_eps(self, eps, x_t, a, b):
        return (eps - b * x_t) / a

    def target(self, x0, eps, a, b):
        return a * eps - b * x0

    def scalings(self, sigma, a, b):
        return a * a, -b


class FlowPrediction(Prediction):
    """Velocity of rectified flow (SD3, Flux): x_t = (1 − t)·x_0 + t·ε (a = 1 − t, b = t), u = ε − x_0, so
    x_0 = x_t − b·u and ε = x_t + a·u."""

    name = "flow"

    def x0_eps(self, out, x_t, a, b):
        return x_t - b * out, x_t + a * out

    def from_eps(self, eps, x_t, a, b):
        return (eps - x_t) / a

    def target(self, x0, eps, a, b):
        return eps - x0

    def scalings(self, sigma, a, b):
        return a, -b


class PreconditionedPrediction(Prediction):
    """A network output F inside a preconditioning ``x̂_0 = c_skip·x_t + c_out·F`` (EDM's, as in diffusers' EDM
    schedulers, which work in sigma space: a = 1, b = σ). ``c_skip``, ``c_out``: floats or broadcastable tensors
    of the noise level the network was evaluated at. ε̂ = (x_t − a·x̂_0)/b and F = (x̂_0 − c_skip·x_t)/c_out."""

    name = "preconditioned"

    def __init__(self, c_skip, c_out):
        self.c_skip, self.c_out = c_skip, c_out

    def x0_eps(self, out, x_t, a, b):
        x0 = self.c_skip * x_t + self.c_out * out
        return x0, (x_t - a * x0) / b

    def from_eps(self, eps, x_t, a, b):
        return ((x_t - b * eps) / a - self.c_skip * x_t) / self.c_out

    def target(self, x0, eps, a, b):
        return (x0 - self.c_skip * (a * x0 + b * eps)) / self.c_out

    def scalings(self, sigma, a, b):
        return self.c_skip * a, self.c_out


PREDICTION_TYPES = {p.name: p for p in (EpsPrediction(), X0Prediction(), VPrediction(), FlowPrediction())}
FLOW = PREDICTION_TYPES["flow"]
PREDICTIONS = ("eps", "x0", "v")   # the VP parameterisations (a checkpoint's "prediction")
# the names the field uses -> ours
PREDICTION_ALIASES = {
    "eps": "eps", "epsilon": "eps",
    "x0": "x0", "sample": "x0", "x_0": "x0", "start_x": "x0",
    "v": "v", "v_prediction": "v",
    "flow": "flow", "flow_prediction": "flow", "velocity": "flow",
}


def get_prediction(name) -> Prediction:
    """The prediction object for a name the field uses (``epsilon``, ``sample``, ``v_prediction``, ``flow`` ...)."""
    if isinstance(name, Prediction):
        return name
    key = PREDICTION_ALIASES.get(name)
    if key is None:
        raise ValueError(f"unknown prediction type {name!r}: use one of eps (epsilon), x0 (sample), v "
                         f"(v_prediction) or flow")
    return PREDICTION_TYPES[key]


def sigma_vp_coefficients(sigma):
    """(a, b) = (1/sqrt(1 + σ²), σ/sqrt(1 + σ²)) of the VP point at noise level σ, without the cancellation of
    sqrt(1 − ᾱ) at small σ."""
    r = exact_sqrt(1.0 + sigma * sigma)
    return 1.0 / r, sigma / r


def vp_coefficients(alpha_bar):
    """(a, b) = (sqrt(ᾱ), sqrt(1 − ᾱ)) of a VP point (floats or tensors)."""
    return exact_sqrt(alpha_bar), exact_sqrt(1.0 - alpha_bar)


# ---- VP-space conversions (ab = ᾱ_t, broadcastable), through the prediction objects --------------------------
def x0_from_eps(x_t, eps, ab):
    return PREDICTION_TYPES["eps"].x0_eps(eps, x_t, *vp_coefficients(ab))[0]


def eps_from_x0(x_t, x0, ab):
    return PREDICTION_TYPES["x0"].x0_eps(x0, x_t, *vp_coefficients(ab))[1]


def v_from_eps_x0(eps, x0, ab):
    return PREDICTION_TYPES["v"].target(x0, eps, *vp_coefficients(ab))


def eps_x0_from_v(x_t, v, ab):
    """(ε, x_0) from a v-prediction: ε = sqrt(ᾱ) v + sqrt(1-ᾱ) x_t, x_0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v."""
    x0, eps = PREDICTION_TYPES["v"].x0_eps(v, x_t, *vp_coefficients(ab))
    return eps, x0


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

    def velocity_full(self, x_t: torch.Tensor, t: float, step_sigma=None, **kwargs):
        """The rectified-flow view ``(v, extras)`` at the flow point ``x_t`` and time ``t`` (a float in [0, 1]),
        what the flow samplers call: ``v = ε̂ − x̂_0`` with ``x̂_0 = D(x_t/(1 − t), t/(1 − t))`` (t = 1: the σ = ∞
        convention). :class:`FlowDenoiser` returns its network's velocity itself."""
        sigma = flow_t_to_sigma(float(t))
        x = flow_to_sigma_space(x_t.to(torch.float64), float(t))
        D, extras = self.forward_full(x, sigma, step_sigma=step_sigma, **kwargs)
        return FLOW.target(D, implied_eps(x, D, sigma), None, None), extras


class FnDenoiser(Denoiser):
    """Wrap a plain function ``fn(x, sigma_batch) -> D`` (e.g. an analytic oracle) as a :class:`Denoiser`."""

    def __init__(self, fn: Callable, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        super().__init__()
        self.fn = fn
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
        return self.fn(x, sigma_batch(sigma, x), **kwargs), {}


# names a network's time argument goes by (ADM's and our own ``t``, diffusers' ``timestep``); a function whose
# second argument is called one of these is a network net(x_t, t), not a denoiser D(x, σ)
_TIME_ARGUMENTS = ("t", "ts", "time", "times", "timestep", "timesteps")


def _time_argument(model) -> Optional[str]:
    """The name of ``model``'s second positional argument if it is a time argument (:data:`_TIME_ARGUMENTS`),
    else None (also where the signature cannot be read)."""
    fn = model.forward if isinstance(model, nn.Module) else model
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or an extension type without a signature
        return None
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[1] if len(positional) > 1 and positional[1].lower() in _TIME_ARGUMENTS else None


def as_denoiser(model) -> Denoiser:
    """``model`` as a :class:`Denoiser`: a Denoiser itself, else a function ``fn(x, sigma) -> D`` wrapped in
    :class:`FnDenoiser`. A network called as ``net(x_t, t)`` (its second argument named ``t``, ``timestep``, …) is
    refused: read as a denoiser, its ε (or v) would be taken for x̂_0 and sampling would run to wrong samples
    without an error. Wrap it in :class:`VPDenoiser` (or :class:`FlowDenoiser`); a function that does take σ under
    such a name goes through ``FnDenoiser(fn)`` explicitly."""
    if isinstance(model, Denoiser):
        return model
    if not callable(model):
        hint = " (a loaded model: pass model.denoiser())" if callable(getattr(model, "denoiser", None)) else ""
        raise TypeError(f"expected a denoiser D(x, σ) (a Denoiser or a function), got {type(model).__name__}{hint}")
    arg = _time_argument(model)
    if arg is not None:
        name = type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", "the function")
        raise TypeError(f"{name} is called as net(x_t, {arg}): a network, not a denoiser D(x, σ); wrap it, e.g. "
                        f"VPDenoiser(net, VPSchedule.linear(), prediction='eps') for a VP network or "
                        f"FlowDenoiser(net) for a rectified-flow one (diffusion_es.core.param; a diffusers UNet: "
                        f"diffusion_es.models.diffusers_unet.load_diffusers_unet), or FnDenoiser(fn) if its "
                        f"'{arg}' is σ")
    return FnDenoiser(model)


def _first_tensor(module: nn.Module, kind: str, keep=None):
    """The first tensor of ``module.parameters()`` (``kind="_parameters"``) or ``module.buffers()`` (``"_buffers"``)
    that ``keep`` accepts, in their order (modules depth first, each module's own tensors first), found by walking
    the modules by hand: asked at every network call, torch's generic generators cost about four times as much."""
    stack = [module]
    while stack:
        m = stack.pop()
        for t in getattr(m, kind).values():
            if t is not None and (keep is None or keep(t)):
                return t
        stack.extend(c for c in reversed(m._modules.values()) if c is not None)
    return None


def real_number(v, what: str) -> float:
    """One real number (a Python, numpy or 0-d torch number; not a bool, a string or a vector) as a float; anything
    else is refused in one line naming ``what``."""
    if isinstance(v, torch.Tensor) and v.ndim == 0 and not v.dtype.is_complex and v.dtype != torch.bool:
        return float(v)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        shape = f" of shape {tuple(v.shape)}" if hasattr(v, "shape") else ""
        raise ValueError(f"{what} must be one real number, got {type(v).__name__}{shape}: {v!r}"[:300])
    return float(v)


def check_clip_x0(v, name: str = "clip_x0") -> Optional[float]:
    """A clipping bound of x̂_0: None (no clipping) or a finite number > 0 (``name``: what the caller called it)."""
    if v is None:
        return None
    f = real_number(v, name)
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a finite number > 0 (x̂_0 clipped to [-{name}, {name}]) or None (no "
                         f"clipping), got {v!r}")
    return f


def network_output(out) -> torch.Tensor:
    """A network's prediction as a tensor: the tensor itself, the first entry of a tuple or list (diffusers'
    ``return_dict=False``), or ``.sample`` of a diffusers output object (``UNet2DOutput``); anything else is
    refused in one line."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"the network returned {type(out).__name__}, not a tensor: it must return its prediction as a "
                    f"tensor (or a tuple, or an object with .sample, whose first entry / .sample is that tensor)")


def check_net_dtype(dtype) -> Optional[torch.dtype]:
    """The ``dtype`` option of the network wrappers: None (the network's own) or a floating torch dtype."""
    if dtype is None:
        return None
    dt = dtype
    if isinstance(dt, str):
        dt = getattr(torch, dt, None) if dt in ("float16", "bfloat16", "float32", "float64") else None
    if not (isinstance(dt, torch.dtype) and dt.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (torch.float32, 'float16', ...) or None (the "
                         f"network's own), got {dtype!r}")
    return dt


class VPDenoiser(Denoiser):
    """A VP network ``net(x_t, t, **kw)`` (ε-, x0- or v-prediction; optionally 2C channels with learned variance)
    seen as a sigma-space denoiser.

    ``σ`` is mapped to the network's timestep by log-linear interpolation in the schedule's sigma table
    (sigmas of the table map to their integer timestep exactly). The network runs in its own dtype; everything
    around it is float64.

    ``clip_x0``: the x̂_0 clipping the model is sampled with, [-clip_x0, clip_x0] (1.0: data in [-1, 1], ADM's and
    diffusers' default), or None (none: a latent model, a diffusers scheduler with ``clip_sample=False``). The VP
    samplers read it when their ``clip`` option is left at None.

    ``dtype``: the dtype the network takes its input in. None (default): its own, i.e. a ``dtype`` attribute,
    else a Module's first parameter's, else float64. Give it for a plain function around a network
    (``lambda x, t: unet(x, t).sample`` has no parameters to read: ``dtype=torch.float32``). The network may return
    a tensor, a tuple or a diffusers output object (:func:`network_output`).
    """

    def __init__(self, net: Callable, schedule, prediction: str = "eps", learned_variance: bool = False,
                 clip_x0: Optional[float] = 1.0, dtype=None):
        super().__init__()
        self.net_dtype = check_net_dtype(dtype)
        pred = get_prediction(prediction)
        if pred.name not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r} for a VP network: use one of "
                             f"{', '.join(PREDICTIONS)}")
        if not all(hasattr(schedule, a) for a in ("sigma_min", "sigma_max", "sigma_to_t")):
            raise TypeError(f"VPDenoiser needs the VP schedule the network was trained with (a VPSchedule, e.g. "
                            f"VPSchedule.linear()), got {type(schedule).__name__}")
        self.net = net
        self.schedule = schedule
        self.pred = pred
        self.prediction = pred.name
        self.learned_variance = learned_variance
        self.clip_x0 = check_clip_x0(clip_x0)
        self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max

    def _net_dtype(self):
        """The ``dtype`` given, else the network's own: a ``dtype`` attribute, else its first parameter's or
        buffer's, else float64."""
        given = self.__dict__.get("net_dtype")
        if given is not None:
            return given
        net = self.net
        if not isinstance(net, nn.Module):
            dt = getattr(net, "dtype", None)
            return dt if isinstance(dt, torch.dtype) else torch.float64
        # an instance or class attribute, or a property (diffusers' ModelMixin); not getattr(net, "dtype", None)
        # first: a Module without one formats an AttributeError in nn.Module.__getattr__ at every network call
        dt = net.__dict__.get("dtype")
        if dt is None and hasattr(type(net), "dtype"):
            dt = getattr(net, "dtype", None)  # a property that raises AttributeError counts as absent
        if isinstance(dt, torch.dtype):
            return dt
        for kind, keep in (("_parameters", None), ("_buffers", torch.is_floating_point)):
            t = _first_tensor(net, kind, keep)
            if t is not None:
                return t.dtype
        return torch.float64

    def _t_dtype(self, dtype):
        """The dtype the time input is handed over in: the network's, but never below float32. bfloat16 holds
        integers only up to 256 exactly (t = 999 became 1000, outside a 1000-step table) and float16 none above
        2048; diffusers' pipelines also hand a half-precision UNet float32 / int64 timesteps."""
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _t_of(self, s: float) -> float:
        """``schedule.sigma_to_t(s)`` for one σ, remembered: a sampler asks for the same few σ in every batch."""
        memo = self.__dict__.get("_t_memo")
        if memo is None or memo[0] is not self.schedule or len(memo[1]) > 4096:
            memo = self.__dict__["_t_memo"] = (self.schedule, {})
        t = memo[1].get(s)
        if t is None:
            t = memo[1][s] = float(self.schedule.sigma_to_t(s))
        return t

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
        dtype = self._net_dtype()
        t_dtype = self._t_dtype(dtype)
        if isinstance(sigma, (float, int)):  # one noise level for the batch: scalar arithmetic, one lookup
            s = float(sigma)
            t = torch.full((x.shape[0],), self._t_of(s), dtype=t_dtype, device=x.device)
            ab = sigma_to_alpha_bar(s)
            x_t = sigma_to_vp_space(x, s)
        else:
            s = sigma_batch(sigma, x)
            t = torch.from_numpy(self.schedule.sigma_to_t(s.detach().cpu().numpy())).to(x.device, t_dtype)
            s = _bcast(s, x)
            ab = sigma_to_alpha_bar(s)
            x_t = sigma_to_vp_space(x, s)
        if self.pred.name == "eps" and (math.isinf(s) if isinstance(s, float) else bool(torch.isinf(s).any())):
            raise ValueError("an ε-prediction network cannot give x̂_0 at σ = ∞ (ᾱ = 0, zero terminal SNR): "
                             "x̂_0 = (x_t − ε̂)/0; use a v- or x0-prediction model there, or a schedule with ᾱ_T > 0")
        out = network_output(self.net(x_t.to(dtype), t, **kwargs)).to(torch.float64)
        extras = {}
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"learned-variance network must output {2 * x.shape[1]} channels, got {out.shape[1]}")
            out, extras["var_values"] = out.split(x.shape[1], dim=1)
        elif out.shape != x.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} does not match input {tuple(x.shape)}")
        return self.pred.denoised(x, x_t, out, s, *vp_coefficients(ab)), extras


class DenoiserEpsNet(nn.Module):
    """The other way round: a denoiser seen as an ε-network on VP inputs ``(x_t, t)`` (integer or float t)."""

    dtype = torch.float64  # VPDenoiser keeps float64 around it

    def __init__(self, denoiser: Denoiser, schedule):
        super().__init__()
        self.denoiser = as_denoiser(denoiser)
        self.schedule = schedule

    def forward(self, x_t, t, **kwargs):
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        # σ(t) log-linear between table entries: the exact inverse of VPDenoiser's σ -> t map
        sig = torch.from_numpy(self.schedule.t_to_sigma(t.detach().cpu().numpy())).to(x_t.device)
        ab = _bcast(sigma_to_alpha_bar(sig), x_t)
        xt64 = x_t.to(torch.float64)
        D = self.denoiser(vp_to_sigma_space(xt64, ab), sig, **kwargs)
        return _pass_at(ab == 0, xt64, eps_from_x0(xt64, D, ab)).to(x_t.dtype)  # σ = ∞: ε is the input itself


class FlowDenoiser(Denoiser):
    """A rectified-flow velocity network ``net(x_t, τ, **kw) -> v`` (``x_t = (1 − t) x_0 + t ε``, ``v = ε − x_0``,
    ``τ = t · time_scale``: 1000 for SD3-style transformers and our own models) seen as a sigma-space denoiser.

    ``σ ↔ t = σ / (1 + σ)``, ``x_t = x / (1 + σ)``, ``D = x_t − t·v`` (:class:`FlowPrediction`); σ = ∞ is t = 1
    with ``x_t = x`` (module docstring), where ``D = x_t − v`` is finite. :meth:`velocity_full` gives the flow
    samplers the network's velocity itself (no round trip), so they can follow diffusers' FlowMatch schedulers
    bit for bit. The network runs in its own dtype and, on the denoiser route, everything around it in float64.
    ``schedule``: the :class:`~diffusion_es.core.schedules.FlowSchedule` it was trained for (its grid, shift);
    without one the samplers use ``FlowSchedule()`` (T = 1000, no shift). ``dtype``: as for :class:`VPDenoiser`.
    """

    def __init__(self, net: Callable, schedule=None, time_scale: float = 1000.0, dtype=None):
        super().__init__()
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be finite and > 0, got {time_scale}")
        if schedule is not None and not all(hasattr(schedule, a) for a in ("sigma_min", "sigma_max", "grid")):
            raise TypeError(f"FlowDenoiser's schedule must be a FlowSchedule (e.g. FlowSchedule(shift=3.0)) or None "
                            f"(FlowSchedule()), got {type(schedule).__name__}")
        self.net_dtype = check_net_dtype(dtype)
        self.net, self.schedule, self.time_scale = net, schedule, float(time_scale)
        self.pred, self.prediction = FLOW, "flow"
        if schedule is not None:
            self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max

    _net_dtype = VPDenoiser._net_dtype
    _t_dtype = VPDenoiser._t_dtype

    def _velocity(self, x_t, t, kwargs):
        """The network's output at (x_t, t), in the network's dtype; t a float or a (B,) float64 tensor."""
        dtype = self._net_dtype()
        tau = (torch.full((x_t.shape[0],), float(t) * self.time_scale, dtype=torch.float64, device=x_t.device)
               if isinstance(t, float) else t * self.time_scale)
        out = network_output(self.net(x_t.to(dtype), tau.to(self._t_dtype(dtype)), **kwargs))
        if out.shape != x_t.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} does not match input {tuple(x_t.shape)}")
        return out

    def velocity_full(self, x_t, t, step_sigma=None, **kwargs):
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"flow time t must lie in [0, 1], got {t}")
        return self._velocity(x_t, t, kwargs), {}

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
        if isinstance(sigma, (float, int)):
            t = sigma_to_flow_t(float(sigma))
            x_t = sigma_to_flow_space(x, float(sigma))
        else:
            s = _bcast(sigma_batch(sigma, x), x)
            t = sigma_to_flow_t(s)
            x_t = _pass_at(torch.isinf(s), x, x / (1.0 + s))
        v = self._velocity(x_t, t if isinstance(t, float) else t.reshape(-1), kwargs).to(torch.float64)
        return self.pred.denoised(x, x_t, v, sigma, 1.0 - t, t), {}
