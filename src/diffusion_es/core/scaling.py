"""Epsilon Scaling (Ning et al., ICLR 2024): λ schedules and the one wrapper that applies them.

ES divides the network's noise prediction by λ at every sampling step and leaves the sampler unchanged. In
denoiser form, with ``x = x_0 + σ ε``::

    D'(x, σ) = x - (x - D(x, σ)) / λ          (ε' = ε / λ)

Schedules (``λ`` may be below 1; it must be finite and > 0):

* :class:`Uniform` ``λ = b`` (the paper's default);
* :class:`Linear` ``λ_t = k·t + b`` with ``t`` the index in the sampling grid and ``t = 0`` the LAST step, so
  λ is largest at the noisiest step (the paper's convention);
* :class:`PerStep` an explicit list, first entry = first (noisiest) sampling step;
* :class:`SigmaKeyed` any callable ``σ -> λ`` (not JSON-serialisable).

A schedule is *bound* to a sampling grid (the σ of each network evaluation step, descending). Lookups are keyed
on σ, never on a call counter: a network evaluation at σ belongs to the step ``i`` whose interval
``[σ_i, σ_{i-1})`` contains σ. So Heun's correction at ``σ_{i+1}`` gets ``λ_{i+1}``. A stochastic (churned)
evaluation at ``σ̂_i = σ_i (1 + γ)`` can lie above ``σ_{i-1}`` on fine grids, so σ alone cannot tell its step:
the EDM sampler passes ``step_sigma = σ_i`` with it, and λ is keyed on that.

**The σ = ∞ rule.** At σ = ∞ (the first step of a zero-terminal-SNR VP schedule, ᾱ = 0, or t = 1 of rectified
flow) the input *is* the noise: ε is exact there and exposure bias cannot have entered yet, while the x̂_0 implied by
a rescaled ε would be ∞ · 0. So λ = 1 at σ = ∞, always (the value a schedule gives that step is not used); every
finite σ gets its schedule's λ. Grids may start at σ = ∞.

The one λ formula is :func:`scale_denoised` (denoiser form) and :func:`scale_prediction` (the same ε → ε/λ in a
network's own prediction coordinates, through :mod:`.param`'s prediction objects); the core wrapper
:class:`EpsilonScaled` and every adapter use them. λ is never rounded to a half-precision network dtype: the
arithmetic runs in float32 at least (float64 where the inputs are).
"""

from __future__ import annotations

import copy
import json
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .param import (Denoiser, as_denoiser, flow_t_to_sigma, get_prediction, real_number, sigma_batch,
                    vp_coefficients)

__all__ = [
    "LambdaSchedule",
    "Uniform",
    "Linear",
    "PerStep",
    "SigmaKeyed",
    "BoundLambda",
    "EpsilonScaled",
    "epsilon_scaled",
    "as_schedule",
    "scale_denoised",
    "scale_prediction",
    "as_numpy_1d",
    "schedule_from_dict",
    "load_schedule",
    "read_schedule",
    "save_schedule",
    "schedule_mismatch",
    "adapt_schedule",
    "check_made_for",
    "ADAPT_MODES",
]


# σ within this relative distance of a grid σ counts as that grid σ (float32 round-off of a σ handed to a network
# by k-diffusion-style samplers is ~6e-8; real grids never have two sigmas this close)
SIGMA_RTOL = 1e-6


def _check_lambda(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise ValueError(f"{what}: λ must be finite and > 0 (values below 1 are allowed), got {float(arr[bad][0])!r}")
    return arr


class LambdaSchedule:
    """Base class. ``values(n)`` gives λ for the n sampling steps in sampling order (first = noisiest)."""

    kind = ""
    # the sampling setting a schedule file says it was made for ({"sampler", "steps"[, "spacing"][, "weights"]}):
    # set by load_schedule, checked by the samplers (check_made_for); None: made for no setting in particular
    made_for: Optional[dict] = None

    def values(self, n: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind(self, sigmas: Sequence[float]) -> "BoundLambda":
        return BoundLambda(self, sigmas)

    def is_identity(self, n: int) -> bool:
        return bool(np.all(self.values(n) == 1.0))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        # floats to 12 significant digits: a grid's 1.13 reads 1.13, not 1.1300000000000001 (to_dict keeps all bits)
        args = ", ".join(f"{k}={float(f'{v:.12g}')!r}" if isinstance(v, float) else f"{k}={v!r}"
                         for k, v in self.to_dict().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class Uniform(LambdaSchedule):
    kind = "uniform"

    def __init__(self, b: float = 1.0):
        self.b = float(_check_lambda([real_number(b, "uniform schedule: λ")], "uniform schedule")[0])

    def values(self, n):
        return np.full(int(n), self.b)

    def to_dict(self):
        return {"kind": self.kind, "b": self.b}


class Linear(LambdaSchedule):
    """``λ_t = k·t + b``; t counts sampling steps from the end (t = 0 is the last step, t = n-1 the first)."""

    kind = "linear"

    def __init__(self, k: float, b: float):
        k, b = real_number(k, "linear schedule: k"), real_number(b, "linear schedule: b")
        if not (math.isfinite(k) and math.isfinite(b)):
            raise ValueError(f"linear schedule: k and b must be finite, got k={k!r}, b={b!r}")
        self.k, self.b = float(k), float(b)
        _check_lambda([b], "linear schedule (value at the last step)")

    def values(self, n):
        t = np.arange(int(n) - 1, -1, -1, dtype=np.float64)  # first step has t = n-1
        return _check_lambda(self.k * t + self.b, f"linear schedule k={self.k}, b={self.b} over {n} steps")

    def to_dict(self):
        return {"kind": self.kind, "k": self.k, "b": self.b}


class PerStep(LambdaSchedule):
    """An explicit λ per sampling step, first entry = first (noisiest) step."""

    kind = "per_step"

    def __init__(self, values: Sequence[float]):
        if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
            raise ValueError(f"per-step schedule: give one λ per sampling step as a flat list or 1-D array, got "
                             f"{type(values).__name__} of {np.ndim(values)} dimension(s)")
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"per-step schedule: the λ values must be numbers, got {list(values)[:5]!r}") from None
        if any(isinstance(v, (bool, np.bool_, str, bytes)) for v in np.asarray(values, dtype=object)):
            raise ValueError("per-step schedule: the λ values must be numbers, not booleans or strings")
        self._values = _check_lambda(arr, "per-step schedule")
        if len(self._values) == 0:
            raise ValueError("per-step schedule: the list of λ values is empty")

    def values(self, n):
        if int(n) != len(self._values):
            raise ValueError(f"per-step schedule has {len(self._values)} values but the sampler runs {n} steps; "
                             f"give exactly one λ per step")
        return self._values.copy()

    def to_dict(self):
        return {"kind": self.kind, "values": [float(v) for v in self._values]}


class SigmaKeyed(LambdaSchedule):
    """``λ = fn(σ)`` for any callable; checked on the sampling grid when bound, and at every other σ it meets."""

    kind = "sigma_keyed"

    def __init__(self, fn: Callable[[float], float]):
        if not callable(fn):
            raise ValueError("SigmaKeyed needs a callable sigma -> lambda")
        self.fn = fn

    def values(self, n):  # only meaningful once bound to a grid
        raise ValueError("a sigma-keyed schedule has no per-step values before it is bound to a sampling grid")

    def is_identity(self, n):
        return False

    def to_dict(self):
        raise ValueError("a sigma-keyed (callable) schedule cannot be written as JSON; use PerStep with its values")

    def __eq__(self, other):
        return isinstance(other, SigmaKeyed) and other.fn is self.fn

    def __repr__(self):
        return f"SigmaKeyed({self.fn!r})"


class BoundLambda:
    """A schedule attached to a sampling grid: ``__call__(σ)`` returns λ for a (B,) tensor of sigmas.

    The grid may start at σ = ∞; λ = 1 there (the σ = ∞ rule, see the module docstring)."""

    def __init__(self, schedule: LambdaSchedule, sigmas: Sequence[float]):
        s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        s = s[s > 0]  # the final σ = 0 of EDM grids is never evaluated
        if len(s) == 0 or np.any(np.isnan(s)) or np.any(np.diff(s) >= 0) or np.isinf(s[1:]).any():
            raise ValueError("a λ schedule must be bound to a strictly decreasing grid of positive sigmas "
                             "(only the first may be ∞)")
        self.schedule, self.sigmas = schedule, s
        finite = np.isfinite(s)
        if isinstance(schedule, SigmaKeyed):
            lams = np.ones(len(s))
            lams[finite] = _check_lambda([schedule.fn(float(v)) for v in s[finite]], "sigma-keyed schedule on the grid")
            self.lams = lams
        else:
            self.lams = np.where(finite, schedule.values(len(s)), 1.0)
        self.identity = (not isinstance(schedule, SigmaKeyed)) and bool(np.all(self.lams == 1.0))

    def index(self, sigma: np.ndarray) -> np.ndarray:
        """Step index for each sigma: the number of grid sigmas strictly above it (relative tolerance SIGMA_RTOL)."""
        above = self.sigmas[None, :] > np.asarray(sigma, dtype=np.float64).reshape(-1, 1) * (1 + SIGMA_RTOL)
        return np.minimum(above.sum(axis=1), len(self.sigmas) - 1)

    def __call__(self, sigma) -> np.ndarray:
        s = np.asarray(sigma, dtype=np.float64).reshape(-1)
        if isinstance(self.schedule, SigmaKeyed):
            return np.array([1.0 if math.isinf(v) else
                             _check_lambda([self.schedule.fn(float(v))], f"sigma-keyed schedule at σ={v:.4g}")[0]
                             for v in s])
        return np.where(np.isinf(s), 1.0, self.lams[self.index(s)])

    def scalar(self, sigma: float) -> float:
        """λ for one σ (the common case: the whole batch shares a noise level)."""
        if isinstance(self.schedule, SigmaKeyed) or math.isinf(sigma):
            return float(self(sigma)[0])
        i = min(int(np.count_nonzero(self.sigmas > float(sigma) * (1 + SIGMA_RTOL))), len(self.sigmas) - 1)
        return float(self.lams[i])


# ---- the one λ formula ------------------------------------------------------------------------------------
def as_numpy_1d(value) -> np.ndarray:
    """A float, 0-d/(B,)/(B,1,..) tensor or array as a float64 numpy vector (no gradient, on the CPU)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _per_sample(v: np.ndarray, n: int, what: str) -> np.ndarray:
    if v.size == 1:
        return np.full(n, float(v[0]))
    if v.size != n:
        raise ValueError(f"{what} has {v.size} entries for a batch of {n}")
    return v


def _work_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 if any input is, else float32 (never a half dtype, which would round λ; MPS has no float64)."""
    if any(t.device.type == "mps" for t in ts):
        return torch.float32
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _lam_tensor(lam_np: np.ndarray, like: torch.Tensor, dtype) -> torch.Tensor:
    return torch.from_numpy(lam_np).to(like.device, dtype).reshape(-1, *([1] * (like.ndim - 1)))


def scale_denoised(x: torch.Tensor, D: torch.Tensor, lam) -> torch.Tensor:
    """``D' = x − (x − D)/λ`` (ε' = ε/λ with x = x_0 + σ ε). ``lam``: a float or one value per sample.

    Where λ = 1 the input ``D`` is returned bit for bit (per sample when λ varies)."""
    if isinstance(lam, (float, int)):
        lam = float(lam)
        if lam == 1.0:
            return D
        if x.dtype == torch.float64 and D.dtype == torch.float64:
            return x - (x - D) / lam
        wd = _work_dtype(x, D)
        xw = x.to(wd)
        return (xw - (xw - D.to(wd)) / lam).to(D.dtype)
    lam_np = _per_sample(as_numpy_1d(lam), x.shape[0], "λ")
    if np.all(lam_np == 1.0):
        return D
    wd = _work_dtype(x, D)
    lam_t = _lam_tensor(lam_np, x, wd)
    xw = x.to(wd)
    out = (xw - (xw - D.to(wd)) / lam_t).to(D.dtype)
    if np.any(lam_np == 1.0):
        out = torch.where(lam_t == 1.0, D, out)
    return out


def scale_prediction(out: torch.Tensor, x_t: torch.Tensor, lam, alpha_bar, prediction="eps", a=None, b=None):
    """Rewrite a network output ``out`` made at ``x_t = a·x_0 + b·ε`` so that the ε it implies is divided by λ.

    ``prediction``: any name :func:`~diffusion_es.core.param.get_prediction` takes. The process coefficients are
    ``(a, b)`` when given (rectified flow: a = 1 − t, b = t), else ``(sqrt(ᾱ), sqrt(1 − ᾱ))`` from ``alpha_bar``
    (only read for x0/v/flow). ``lam``, ``alpha_bar``, ``a``, ``b``: scalars or one value per sample. A
    learned-variance output (2C channels for C input channels) keeps its last C channels. Returns ``out`` itself
    when every λ is 1; samples with λ = 1 keep their prediction bit for bit."""
    pred = get_prediction(prediction)
    if isinstance(lam, float) and pred.name == "eps" and out.shape == x_t.shape:
        return out if lam == 1.0 else out / lam  # the common case, kept cheap: exactly ε / λ
    B, C = x_t.shape[0], x_t.shape[1]
    lam_np = _per_sample(as_numpy_1d(lam), B, "λ")
    if np.all(lam_np == 1.0):
        return out
    if out.shape[0] != B or out.shape[2:] != x_t.shape[2:] or out.shape[1] not in (C, 2 * C):
        raise ValueError(f"cannot apply Epsilon Scaling: the prediction has shape {tuple(out.shape)} but the "
                         f"sample has shape {tuple(x_t.shape)} (expected C or 2C channels for learned variance)")
    p, rest = (out[:, :C], out[:, C:]) if out.shape[1] == 2 * C else (out, None)
    uniform = bool(np.all(lam_np == lam_np[0]))
    if pred.name == "eps" and uniform:
        new = p / float(lam_np[0])  # exactly what a hand-written loop does: eps / lam
    else:
        wd = torch.float32 if p.device.type == "mps" else torch.float64
        lam_t = _lam_tensor(lam_np, p, wd)
        if a is None:
            ab = _lam_tensor(_per_sample(as_numpy_1d(alpha_bar), B, "ᾱ"), p, wd)
            a, b = vp_coefficients(ab)
        else:
            a = _lam_tensor(_per_sample(as_numpy_1d(a), B, "a"), p, wd)
            b = _lam_tensor(_per_sample(as_numpy_1d(b), B, "b"), p, wd)
        x, pw = x_t.to(wd), p.to(wd)
        eps = pred.x0_eps(pw, x, a, b)[1]
        new = pred.from_eps(eps / lam_t, x, a, b).to(p.dtype)
        if not uniform:  # samples with λ = 1 keep their prediction bit for bit
            new = torch.where(_lam_tensor(lam_np, p, wd) == 1.0, p, new)
    return new if rest is None else torch.cat([new, rest], dim=1)


class EpsilonScaled(Denoiser):
    """``D'(x, σ) = x - (x - D(x, σ)) / λ(σ)``; extras (e.g. learned variance) pass through unchanged.

    Where λ = 1 the inner denoiser's output is returned untouched, so λ = 1 is the baseline bit for bit.
    """

    def __init__(self, denoiser, lam: BoundLambda):
        super().__init__()
        self.inner = as_denoiser(denoiser)
        self.lam = lam
        for attr in ("sigma_min", "sigma_max", "pfgm_D", "clip_x0"):
            if hasattr(self.inner, attr):
                setattr(self, attr, getattr(self.inner, attr))

    def forward_full(self, x, sigma, step_sigma=None, **kwargs):
        key = sigma if step_sigma is None else step_sigma
        D, extras = self.inner.forward_full(x, sigma, step_sigma=step_sigma, **kwargs)
        if isinstance(key, (float, int)):
            return scale_denoised(x, D, self.lam.scalar(key)), extras
        return scale_denoised(x, D, self.lam(sigma_batch(key, x).detach().cpu().numpy())), extras

    def velocity_full(self, x_t, t, step_sigma=None, **kwargs):
        """The flow view (:meth:`Denoiser.velocity_full`): the inner velocity rewritten with ε → ε/λ in flow
        coordinates (:func:`scale_prediction`, a = 1 − t, b = t), i.e. ``v' = (ε̂/λ − x_t)/(1 − t)``; where λ = 1
        (σ = ∞ included) the inner velocity is returned untouched."""
        t = float(t)
        v, extras = self.inner.velocity_full(x_t, t, step_sigma=step_sigma, **kwargs)
        lam = self.lam.scalar(flow_t_to_sigma(t) if step_sigma is None else float(step_sigma))
        return scale_prediction(v, x_t, lam, None, "flow", a=1.0 - t, b=t), extras


def as_schedule(es, what: str = "es") -> Union[LambdaSchedule, None]:
    """``None``, a :class:`LambdaSchedule`, or a number (uniform λ) as a schedule (or None)."""
    if es is None or isinstance(es, LambdaSchedule):
        return es
    if isinstance(es, (int, float, np.floating, np.integer)) and not isinstance(es, bool):
        return Uniform(float(es))
    if isinstance(es, (torch.Tensor, np.ndarray)) and es.ndim == 0 and es.dtype not in (torch.bool, np.bool_) \
            and not (isinstance(es, torch.Tensor) and (es.is_complex() or es.requires_grad)):
        return Uniform(float(es))  # a 0-d tensor or array holds one number, as Uniform(...) itself accepts
    raise TypeError(f"{what} must be a LambdaSchedule or a number (uniform λ; schedules: Uniform, Linear, PerStep, SigmaKeyed), "
                    f"got {type(es).__name__}")


def epsilon_scaled(denoiser, schedule: Union[LambdaSchedule, float, None], sigmas) -> Denoiser:
    """Wrap ``denoiser`` with ES for the sampling grid ``sigmas``; ``None`` or an all-ones schedule returns
    the denoiser itself (so the baseline is untouched). A number means a uniform λ."""
    schedule = as_schedule(schedule)
    if schedule is None:
        return as_denoiser(denoiser)
    bound = schedule.bind(sigmas)
    if bound.identity:
        return as_denoiser(denoiser)
    return EpsilonScaled(denoiser, bound)


# ---- JSON ------------------------------------------------------------------------------------------------
_KINDS = {"uniform": Uniform, "linear": Linear, "per_step": PerStep}


def schedule_from_dict(d: dict) -> LambdaSchedule:
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError("a λ schedule must be a JSON object with a 'kind' (uniform, linear or per_step)")
    kind = d["kind"]
    if kind not in _KINDS:
        raise ValueError(f"unknown λ schedule kind {kind!r}: use uniform, linear or per_step")
    try:
        if kind == "uniform":  # JSON numbers, as the classes take them (a string "1.01" is refused, not parsed)
            return Uniform(d["b"])
        if kind == "linear":
            return Linear(d["k"], d["b"])
        return PerStep(d["values"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"λ schedule of kind {kind!r} is missing or has a malformed field: {e}") from None


SCHEDULE_HINT = "write one with `diffusion-es calibrate --out FILE.json` (or diffusion_es.save_schedule)"


def _check_made_for(made_for, path) -> Optional[dict]:
    if made_for is None:
        return None
    ok = (isinstance(made_for, dict) and isinstance(made_for.get("sampler"), str)
          and isinstance(made_for.get("steps"), int) and not isinstance(made_for.get("steps"), bool)
          and made_for["steps"] >= 1 and isinstance(made_for.get("spacing", ""), str)
          and isinstance(made_for.get("weights", ""), str))
    if not ok:
        raise ValueError(f"{path}: 'made_for' must be {{\"sampler\": NAME, \"steps\": N[, \"spacing\": NAME][, "
                         f"\"weights\": HASH]}}, got {json.dumps(made_for)[:80]}")
    return dict(made_for)


def read_schedule(path):
    """``(schedule, made_for)`` from a schedule JSON file (as written by :func:`save_schedule` or
    ``diffusion-es calibrate``). The file holds the schedule itself or an object with a ``"schedule"`` field;
    ``made_for`` (``{"sampler", "steps"[, "spacing"][, "weights"]}``, or None where the file does not say) is the
    sampling setting it was made for (``weights``: the hash of the model calibrated on): see
    :func:`schedule_mismatch` and :func:`adapt_schedule`."""
    from ..io import read_json

    d = read_json(path, "a λ schedule (JSON)", SCHEDULE_HINT)
    made_for = None
    if isinstance(d, dict) and "schedule" in d:
        made_for = _check_made_for(d.get("made_for"), path)
        if made_for is None and "sampler" in d and "steps" in d:  # a calibration result (calibrate --json)
            made_for = _check_made_for({k: d[k] for k in ("sampler", "steps", "spacing") if d.get(k) is not None},
                                       path)
        if d["schedule"] is None and isinstance(d.get("candidate"), dict):
            raise ValueError(f"{path}: this calibration found no λ that beat the baseline beyond the noise (its "
                             f"'schedule' is null: sample without ES); its best candidate, not significant, is "
                             f"{json.dumps(d['candidate'])} under 'candidate'")
        d = d["schedule"]
    try:
        return schedule_from_dict(d), made_for
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_schedule(path) -> LambdaSchedule:
    """The schedule of a schedule JSON file (see :func:`read_schedule`). What the file says it was made for stays
    with it (``schedule.made_for``): :func:`~diffusion_es.samplers.sample` and ``measure_exposure`` refuse it for
    another sampler, number of steps or spacing (:func:`check_made_for`) unless it is adapted
    (:func:`adapt_schedule`)."""
    schedule, made_for = read_schedule(path)
    schedule.made_for = made_for
    return schedule


def save_schedule(path, schedule: LambdaSchedule, sampler: Optional[str] = None, steps: Optional[int] = None,
                  spacing: Optional[str] = None, weights: Optional[str] = None, **meta) -> None:
    """Write ``schedule`` as JSON (atomically). ``sampler`` with ``steps`` (and the VP ``spacing``) record the
    sampling setting it was made for (``made_for``); ``diffusion-es sample --es-schedule`` then refuses it for
    another setting unless told how to adapt it. ``weights`` (with ``sampler``): a hash of the weights of the model
    it was calibrated on (``experiments.common.weights_id``); ``sample`` / ``measure`` refuse it for another model.
    ``meta``: more JSON-able fields stored beside it (e.g. the calibration result; ``steps`` without ``sampler`` is
    kept as such a plain field, as before). ``schedule``: a :class:`LambdaSchedule` or a number (uniform λ)."""
    from ..io import write_json

    schedule = as_schedule(schedule, "schedule")
    if schedule is None:
        raise TypeError("save_schedule needs a λ schedule or a number (uniform λ), got None")
    made_for = None
    if sampler is not None:
        if steps is None or isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
            raise ValueError(f"save_schedule: with sampler, give steps >= 1 (what it was made for), got {steps!r}")
        made_for = {"sampler": str(sampler), "steps": int(steps), **({"spacing": str(spacing)} if spacing else {}),
                    **({"weights": str(weights)} if weights else {})}
    elif steps is not None:
        meta = {"steps": steps, **meta}
    if made_for is None and not meta:
        write_json(path, schedule.to_dict())
        return
    write_json(path, {"schedule": schedule.to_dict(), **({"made_for": made_for} if made_for else {}), **meta})


ADAPT_MODES = ("stretch", "index")


def schedule_mismatch(made_for: Optional[dict], sampler: str, steps: int, spacing: Optional[str] = None) -> str:
    """How the setting ``made_for`` differs from (sampler, steps, spacing): '' when it does not (or is unknown).
    Spacing is compared only where both sides name one."""
    if not made_for:
        return ""
    diffs = []
    if made_for["sampler"] != sampler:
        diffs.append(f"sampler {made_for['sampler']}, not {sampler}")
    if made_for["steps"] != int(steps):
        diffs.append(f"{made_for['steps']} steps, not {int(steps)}")
    if made_for.get("spacing") and spacing and made_for["spacing"] != spacing:
        diffs.append(f"spacing {made_for['spacing']}, not {spacing}")
    return "; ".join(diffs)


def check_made_for(schedule: Optional[LambdaSchedule], sampler: str, steps: int, spacing: Optional[str] = None) -> None:
    """Refuse, in one line, a schedule loaded from a file made for another sampling setting (its ``made_for``;
    :func:`schedule_mismatch`): λ tuned for one sampler and number of steps is not λ for another. A schedule from
    :func:`adapt_schedule`, or one built in code, carries no setting and passes."""
    made_for = getattr(schedule, "made_for", None)
    diff = schedule_mismatch(made_for, sampler, steps, spacing)
    if diff:
        n0 = made_for["steps"]
        raise ValueError(f"es: this λ schedule was made for {made_for['sampler']} with {n0} steps ({diff}); "
                         f"calibrate for this setting, or use it anyway through adapt_schedule(es, {n0}, {int(steps)}, "
                         f"'stretch') (the same λ curve over the run) or 'index' (the same λ per step index)")


def adapt_schedule(schedule: LambdaSchedule, steps_from: int, steps_to: int, how: str) -> LambdaSchedule:
    """A schedule made for ``steps_from`` sampling steps, for a run of ``steps_to`` steps.

    * ``stretch``: the same λ curve over the run's progress (first step to last): a uniform λ stays, a linear one
      keeps its values at the first and the last step (k scaled by (n_from − 1)/(n_to − 1)), per-step values are
      interpolated linearly;
    * ``index``: the same λ per step index t (t = 0 the last step): a linear schedule is extended or cut; a
      per-step schedule cannot be (refused).

    The result is made for no setting in particular (no ``made_for``): it is the schedule to use for the run."""
    adapted = _adapt(schedule, steps_from, steps_to, how)
    if adapted is schedule:
        adapted = copy.copy(schedule)
    adapted.made_for = None
    return adapted


def _adapt(schedule: LambdaSchedule, steps_from: int, steps_to: int, how: str) -> LambdaSchedule:
    if how not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {how!r}")
    n0, n1 = int(steps_from), int(steps_to)
    if isinstance(schedule, Uniform) or n0 == n1:
        return schedule
    if how == "index":
        if isinstance(schedule, PerStep):
            raise ValueError(f"a per-step schedule of {n0} values cannot be used for {n1} steps by index; "
                             "stretch it instead")
        return schedule
    if isinstance(schedule, Linear):
        if n1 == 1 or n0 == 1:  # one step: only λ at t = 0 (= b) is defined
            return Uniform(schedule.b)
        return Linear(schedule.k * (n0 - 1) / (n1 - 1), schedule.b)
    if isinstance(schedule, PerStep):
        v = schedule.values(n0)
        return PerStep(np.interp(np.linspace(0.0, 1.0, n1), np.linspace(0.0, 1.0, n0), v).tolist() if n0 > 1
                       else np.full(n1, v[0]).tolist())
    raise ValueError(f"cannot adapt a {type(schedule).__name__} schedule")
