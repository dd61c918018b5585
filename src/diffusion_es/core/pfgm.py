"""PFGM++ (Xu et al., ICML 2023) and the EDM preconditioning it trains with, in the denoiser frame.

**The kernel.** Data in N dimensions is augmented with D extra dimensions; a data point y is perturbed with
``p_r(x | y) ∝ (‖x − y‖² + r²)^{−(N+D)/2}``, ``r = σ·√D``. That density is exactly a multivariate Student-t with
ν = D degrees of freedom and scale σ, i.e. a Gaussian scale mixture::

    x = y + σ·√w·z,   z ~ N(0, I_N),   w ~ InvGamma(D/2, D/2)  (w = D / χ²_D)

so ``R²/r² = ‖x − y‖²/(σ² D) = χ²_N / χ²_D ~ Beta'(N/2, D/2)`` — the paper's radius R = r·sqrt(b/(1 − b)),
b ~ Beta(N/2, D/2), with a uniform direction. D = ∞ is w = 1: the Gaussian kernel of EDM. Every draw here is
``z`` (the same unit Gaussian the rest of the library draws) times a per-sample scale ``√w``; for D = ∞ the scale
is not applied at all, so that path is byte-identical to EDM's.

**Randomness.** The mixing variable of sample ``seed`` comes from its own stream
``numpy.random.default_rng([PFGM_STREAM, seed])`` (:func:`seed_scales`), never from the batch it is drawn in, so a
PFGM++ sample still depends only on its seed (its Gaussian part is the seed's usual first draw, see
:class:`~diffusion_es.samplers.common.SeedNoise`). Training draws its scales from the training noise generator
(:func:`generator_scales`), so resuming a run continues the same stream.

**Sampling.** PFGM++ with the r = σ√D alignment samples with EDM's ODE ``dx/dσ = (x − D(x, σ))/σ`` unchanged;
only the prior at σ_max differs (the kernel around 0, :func:`prior`). Epsilon Scaling is the same wrapper
``D' = x − (x − D)/λ``. EDM's stochastic churn adds Gaussian noise, the wrong kernel for finite D, and is refused
for such models.

**Preconditioning** (Karras et al. 2022, used by PFGM++ for every D): ``D(x, σ) = c_skip x + c_out F(c_in x,
c_noise)`` with ``c_skip = σ_d²/(σ² + σ_d²)``, ``c_out = σ σ_d/sqrt(σ² + σ_d²)``, ``c_in = 1/sqrt(σ² + σ_d²)``,
``c_noise = ln(σ)/4`` (the network sees ``time_scale·c_noise``); training draws ``ln σ ~ N(P_mean, P_std²)`` and
weights the squared error of D by ``(σ² + σ_d²)/(σ σ_d)²`` — which is the plain squared error of F against its
target (:class:`~diffusion_es.core.param.PreconditionedPrediction`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .param import Denoiser, PreconditionedPrediction, _bcast, exact_sqrt, sigma_batch

__all__ = ["PFGM_STREAM", "check_D", "mixing_w", "seed_scales", "generator_scales", "perturb", "prior",
           "EDMSchedule", "EDMDenoiser", "edm_scalings", "d_label"]

# key of the per-seed stream of the mixing variable (part of the noise protocol: changing it changes every sample)
PFGM_STREAM = 0x50464D2B2B  # "PFM++"


def check_D(D) -> float:
    """D as a float: a positive number, or ∞ (None also means ∞: the Gaussian kernel of EDM)."""
    if D is None:
        return math.inf
    try:
        D = float(D)
    except (TypeError, ValueError):
        raise ValueError(f"PFGM++ D must be a positive number or inf, got {D!r}") from None
    if math.isnan(D) or D <= 0:
        raise ValueError(f"PFGM++ D must be a positive number or inf, got {D!r}")
    return D


def d_label(D) -> str:
    """'inf' or the number (an integer D without '.0')."""
    D = check_D(D)
    return "inf" if math.isinf(D) else (str(int(D)) if D == int(D) else repr(D))


def mixing_w(D: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` draws of w ~ InvGamma(D/2, D/2) (= D/χ²_D, float64); D = ∞ gives ones without drawing."""
    D = check_D(D)
    if math.isinf(D):
        return np.ones(int(n))
    return (0.5 * D) / rng.standard_gamma(0.5 * D, size=int(n))


def seed_scales(seeds: Sequence[int], D) -> np.ndarray:
    """√w for each seed, from the seed's own stream (independent of the batch)."""
    D = check_D(D)
    if math.isinf(D):
        return np.ones(len(seeds))
    return np.array([math.sqrt(mixing_w(D, np.random.default_rng([PFGM_STREAM, int(s)]), 1)[0]) for s in seeds])


def generator_scales(generator: torch.Generator, n: int, D) -> Optional[torch.Tensor]:
    """√w for ``n`` training examples (float64, shape (n,)), drawn from a numpy stream seeded by one draw of the
    torch ``generator`` (so the generator's state decides them and a resumed run continues the stream). D = ∞:
    None, and the generator is not touched."""
    D = check_D(D)
    if math.isinf(D):
        return None
    key = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.sqrt(mixing_w(D, np.random.default_rng([PFGM_STREAM, key]), n)))


def perturb(x0: torch.Tensor, sigma, z: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x0 + σ·√w·z``: a draw of the PFGM++ kernel around ``x0`` (``scale`` = √w per sample, None for D = ∞);
    ``sigma`` a float or (B,) tensor."""
    noise = z if scale is None else z * _bcast(scale.to(z.device, z.dtype), z)
    s = sigma if isinstance(sigma, (float, int)) else _bcast(torch.as_tensor(sigma, device=z.device), z).to(z.dtype)
    return x0 + s * noise


def prior(z: torch.Tensor, sigma_max: float, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The PFGM++ prior at σ_max (the kernel around 0) from unit Gaussian ``z`` and per-sample √w; D = ∞
    (``scale`` None) is EDM's ``σ_max·z``, the same bytes."""
    if scale is None:
        return z * float(sigma_max)
    return z * _bcast(scale.to(z.device, z.dtype), z) * float(sigma_max)


# ---- EDM preconditioning --------------------------------------------------------------------------------
def edm_scalings(sigma, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM at σ (float or tensor); c_noise = ln(σ)/4."""
    sd2 = sigma_data * sigma_data
    tot = sigma * sigma + sd2
    root = exact_sqrt(tot)
    c_noise = sigma.log() / 4 if isinstance(sigma, torch.Tensor) else math.log(sigma) / 4
    return sd2 / tot, sigma * sigma_data / root, 1.0 / root, c_noise


@dataclass(frozen=True)
class EDMSchedule:
    """The noise range and preconditioning of an EDM-preconditioned model, and its PFGM++ D (∞: EDM's Gaussian).

    The EDM samplers walk Karras' σ grid between ``sigma_min`` and ``sigma_max``; the prior is the PFGM++ kernel
    at σ_max (:func:`prior`). ``time_scale``: the network sees ``time_scale · ln(σ)/4``."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    pfgm_D: float = math.inf
    time_scale: float = 250.0
    P_mean: float = -1.2
    P_std: float = 1.2

    def __post_init__(self):
        object.__setattr__(self, "pfgm_D", check_D(self.pfgm_D))
        for name in ("sigma_min", "sigma_max", "sigma_data", "time_scale", "P_std"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min must be below sigma_max, got {self.sigma_min} >= {self.sigma_max}")
        if not math.isfinite(self.P_mean):
            raise ValueError(f"P_mean must be finite, got {self.P_mean}")

    @property
    def gaussian(self) -> bool:
        return math.isinf(self.pfgm_D)

    def sigma_to_t(self, sigma):
        """The network's time input at σ: ``time_scale · ln(σ)/4``."""
        return self.time_scale * np.log(np.asarray(sigma, dtype=np.float64)) / 4

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pfgm_D"] = None if self.gaussian else self.pfgm_D  # JSON has no ∞
        return d

    def describe(self) -> str:
        return "EDM (Gaussian kernel)" if self.gaussian else f"PFGM++ D = {d_label(self.pfgm_D)}"


class EDMDenoiser(Denoiser):
    """An EDM-preconditioned network ``net(c_in·x, time_scale·c_noise) -> F`` as a sigma-space denoiser
    ``D = c_skip x + c_out F``. The network runs in its own dtype, everything around it in float64.
    ``pfgm_D`` (from the schedule) tells the samplers which prior to start from."""

    def __init__(self, net: Callable, schedule: EDMSchedule):
        super().__init__()
        self.net, self.schedule = net, schedule
        self.prediction = "edm"
        self.sigma_min, self.sigma_max, self.pfgm_D = schedule.sigma_min, schedule.sigma_max, schedule.pfgm_D

    def _net_dtype(self):
        from .param import VPDenoiser

        return VPDenoiser._net_dtype(self)

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
        s = _bcast(sigma_batch(sigma, x), x)
        if bool(torch.isinf(s).any()) or bool((s <= 0).any()):
            raise ValueError("an EDM-preconditioned model is evaluated at 0 < σ < ∞ only")
        c_skip, c_out, c_in, c_noise = edm_scalings(s, self.schedule.sigma_data)
        dtype = self._net_dtype()
        from .param import VPDenoiser, network_output

        out = network_output(self.net((c_in * x).to(dtype), (self.schedule.time_scale * c_noise).reshape(-1).to(
            VPDenoiser._t_dtype(self, dtype)), **kwargs))
        if out.shape != x.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} does not match input {tuple(x.shape)}")
        return PreconditionedPrediction(c_skip, c_out).x0_eps(out.to(torch.float64), x, 1.0, s)[0], {}
