"""Epsilon Scaling inside 🤗 diffusers pipelines.

Two routes, both undoable and both keyed on the noise level (never on a call counter):

* :func:`apply_epsilon_scaling` (scheduler side, the usual one): wraps the scheduler's ``step`` (an instance
  attribute) so the prediction the pipeline hands to the scheduler, i.e. *after* classifier-free guidance, is
  rewritten with ε → ε/λ before the scheduler sees it. The pipeline, the network and the scheduler's maths stay
  untouched; ``inspect.signature(scheduler.step)`` still shows ``eta``, ``generator`` etc.
* :func:`scale_model_output` (model side): wraps a UNet / transformer's ``forward`` so its own prediction is
  rewritten (before guidance; for hand-written loops). Learned-variance outputs (2C channels) keep their
  variance channels.

What "ε" is: every supported scheduler reads the prediction at a point ``x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε`` of the
VP process. VP schedulers (DDPM, DDIM, PNDM) hand ``x_t`` to ``step`` and take ᾱ from ``alphas_cumprod[t]``;
the DPM-Solver family (DPM-Solver(++) multistep and singlestep, UniPC, DEIS) also work on ``x_t`` but take ᾱ from
their own ``sigmas[step_index]`` (ᾱ = 1/(1+σ²)); σ-space schedulers (Euler, Euler ancestral, Heun, LMS) keep
``x = x_t·sqrt(1+σ²) = x_0 + σ ε`` and give the network the scaled input ``x_t``, so the ε of a σ-space step is
the same ε as in VP space. v- and x0-predictions are turned into ε with that ᾱ, scaled and turned back
(:func:`diffusion_es.adapters._common.scale_prediction`).

λ comes from :class:`diffusion_es.core.scaling.BoundLambda`, bound lazily to the scheduler's grid (one σ per distinct
timestep of the current ``set_timesteps``; re-bound whenever ``scheduler.timesteps`` is replaced). A call is keyed on
the σ at which the network was evaluated: Heun's second evaluation at σ_{i+1} gets λ_{i+1}, and a multistep
solver's output at t_i gets λ_i.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..core.param import alpha_bar_to_sigma, get_prediction, sigma_to_alpha_bar, vp_coefficients
from ..errors import require_optional
from ..core.scaling import BoundLambda, LambdaSchedule, as_numpy_1d, as_schedule, scale_prediction

__all__ = [
    "apply_epsilon_scaling",
    "scale_model_output",
    "EpsilonScalingHandle",
    "CallRecord",
    "SUPPORTED_SCHEDULERS",
    "require_diffusers",
]

# scheduler families (matched on the class and its bases, so subclasses work too)
_VP_ALPHAS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler")
_VP_SIGMAS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler")
_SIGMA_SPACE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                "LMSDiscreteScheduler")
SUPPORTED_SCHEDULERS = _VP_ALPHAS + _VP_SIGMAS + _SIGMA_SPACE


def require_diffusers():
    """Import diffusers or fail with the extra to install."""
    return require_optional("diffusers", "diffusers")


def _family(scheduler) -> str:
    names = {c.__name__ for c in type(scheduler).__mro__}
    if names & set(_VP_ALPHAS):
        return "vp_alphas"
    if names & set(_VP_SIGMAS):
        return "vp_sigmas"
    if names & set(_SIGMA_SPACE):
        return "sigma_space"
    raise ValueError(f"Epsilon Scaling does not support {type(scheduler).__name__}; supported schedulers: "
                     f"{', '.join(SUPPORTED_SCHEDULERS)}. Switch with "
                     f"pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config) (or another of them)")


def _scalar_timestep(timestep):
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            raise ValueError("empty timestep tensor")
        flat = timestep.reshape(-1)
        if timestep.numel() > 1 and not bool((flat == flat[0]).all()):
            return None  # one timestep per sample
        return flat[0]
    return timestep


@dataclass(frozen=True)
class CallRecord:
    """One lookup: which route, the timestep it was called with, the σ it was keyed on and the λ it used."""

    route: str  # "step" or "model"
    timestep: float
    sigma: float
    lam: float


class _SchedulerView:
    """Reads a scheduler's grid and the σ / ᾱ of one call, without changing its state."""

    def __init__(self, scheduler, schedule: LambdaSchedule, prediction_type: Optional[str] = None):
        self.scheduler = scheduler
        self.family = _family(scheduler)
        cfg = scheduler.config
        if cfg.get("use_flow_sigmas", False):
            raise ValueError("Epsilon Scaling does not support flow-matching sigmas (use_flow_sigmas=True)")
        name = prediction_type or cfg.get("prediction_type", "epsilon")
        self.prediction = get_prediction(name).name
        if self.prediction == "flow":
            raise ValueError(f"Epsilon Scaling does not support prediction type {name!r} with "
                             f"{type(scheduler).__name__}: a flow-matching model needs a flow-matching scheduler")
        self.schedule = schedule
        self._ts_ref = None
        self.bound: Optional[BoundLambda] = None
        self._cache = {}

    # ---- the grid -------------------------------------------------------------------------------------
    def _grid(self) -> np.ndarray:
        s = self.scheduler
        ts = s.timesteps
        if ts is None:
            raise ValueError("the scheduler has no timesteps yet: call set_timesteps first")
        ts = torch.as_tensor(ts)
        if self.family == "vp_alphas":
            ab = s.alphas_cumprod.to("cpu", torch.float64)[ts.to("cpu").long()].numpy()
            sig = alpha_bar_to_sigma(ab)
        else:
            sig = s.sigmas.to("cpu", torch.float64).numpy()[: len(ts)]
        # Heun repeats every inner σ (two evaluations per interval), PNDM its first timestep: one σ per step
        keep = np.concatenate([[True], sig[1:] != sig[:-1]]) if len(sig) else np.zeros(0, bool)
        return sig[keep]

    def ensure_bound(self) -> BoundLambda:
        ts = self.scheduler.timesteps
        if self.bound is None or ts is not self._ts_ref:
            try:
                self.bound = self.schedule.bind(self._grid())
            except ValueError as e:
                raise ValueError(f"cannot bind the λ schedule to {type(self.scheduler).__name__}'s timesteps: {e}") from None
            self._ts_ref, self._cache = ts, {}
        return self.bound

    # ---- one call ---------------------------------------------------------------------------------------
    def _step_index(self, timestep) -> int:
        s = self.scheduler
        idx = getattr(s, "step_index", None)
        if idx is None:
            begin = getattr(s, "begin_index", None)
            idx = begin if begin is not None else s.index_for_timestep(timestep)
        return int(idx)

    def sigma_alpha_bar(self, timestep):
        """(σ, ᾱ) of the noise level the network was evaluated at for this call (scalar timestep)."""
        s = self.scheduler
        if self.family == "vp_alphas":
            ab = float(s.alphas_cumprod[int(timestep)].to(torch.float64))
            return float(alpha_bar_to_sigma(ab)), ab
        sigma = float(s.sigmas[self._step_index(timestep)].to(torch.float64))
        return sigma, sigma_to_alpha_bar(sigma)

    def lookup(self, timestep):
        """(λ, σ, ᾱ) for one call with a scalar timestep."""
        bound = self.ensure_bound()
        sigma, ab = self.sigma_alpha_bar(timestep)
        lam = self._cache.get(sigma)
        if lam is None:
            lam = self._cache[sigma] = float(bound(sigma)[0])
        return lam, sigma, ab

    def lookup_batch(self, timesteps):
        """(λ, σ, ᾱ) arrays for per-sample timesteps (VP schedulers with integer timesteps only)."""
        if self.family != "vp_alphas":
            raise ValueError(f"per-sample timesteps are only supported with {', '.join(_VP_ALPHAS)}")
        bound = self.ensure_bound()
        t = torch.as_tensor(timesteps).reshape(-1).to("cpu").long()
        ab = self.scheduler.alphas_cumprod.to("cpu", torch.float64)[t].numpy()
        sig = alpha_bar_to_sigma(ab)
        return bound(sig), sig, ab


class EpsilonScalingHandle:
    """Undo handle for one patch (also a context manager). ``records`` lists :class:`CallRecord` when recording."""

    def __init__(self, target, attr: str, wrapper, view: _SchedulerView, record: bool):
        self.target, self.attr, self.view = target, attr, view
        self.records = [] if record else None
        self._had_own = attr in target.__dict__
        self._own = target.__dict__.get(attr)
        self._wrapper = wrapper
        self.active = True

    @property
    def schedule(self) -> LambdaSchedule:
        return self.view.schedule

    @property
    def bound(self) -> Optional[BoundLambda]:
        """The λ schedule bound to the scheduler's current grid (None before the first call)."""
        return self.view.bound

    def remove(self) -> None:
        """Restore the original ``step`` / ``forward`` exactly. Removing twice is a no-op."""
        if not self.active:
            return
        current = self.target.__dict__.get(self.attr)
        if current is not self._wrapper:
            raise RuntimeError(f"{type(self.target).__name__}.{self.attr} was replaced after Epsilon Scaling was "
                               f"applied; remove that patch first (patches must be undone in reverse order)")
        if self._had_own:
            setattr(self.target, self.attr, self._own)
        else:
            delattr(self.target, self.attr)
        self.active = False

    def _log(self, route, timestep, sigma, lam):
        if self.records is not None:
            self.records.append(CallRecord(route, float(as_numpy_1d(timestep)[0]), float(sigma), float(lam)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        state = "active" if self.active else "removed"
        return f"<EpsilonScalingHandle {type(self.target).__name__}.{self.attr} {self.schedule!r} ({state})>"


def _as_schedule(schedule) -> LambdaSchedule:
    if schedule is None:
        raise TypeError("schedule must be a LambdaSchedule or a number (uniform λ), got None")
    return as_schedule(schedule, "schedule")


def _find_scheduler(obj):
    if hasattr(obj, "step") and hasattr(obj, "set_timesteps"):
        return obj
    sched = getattr(obj, "scheduler", None)
    if sched is not None and hasattr(sched, "step") and hasattr(sched, "set_timesteps"):
        return sched
    raise TypeError(f"expected a diffusers pipeline or scheduler, got {type(obj).__name__}")


def _already_patched(target, attr):
    return getattr(target.__dict__.get(attr), "_es_handle", None) is not None


_STEP_PARAMS = ("model_output", "timestep", "sample")


def _get_arg(args, kwargs, pos, name):
    return args[pos] if len(args) > pos else kwargs[name]


def apply_epsilon_scaling(pipe_or_scheduler, schedule: Union[LambdaSchedule, float], *,
                          record: bool = False) -> EpsilonScalingHandle:
    """Apply Epsilon Scaling to a diffusers pipeline (its ``scheduler``) or a scheduler, in place.

    ``schedule``: a :class:`~diffusion_es.scaling.LambdaSchedule` or a number (uniform λ). Returns a handle;
    ``handle.remove()`` (or leaving ``with apply_epsilon_scaling(...):``) restores the scheduler exactly.
    Apply it after choosing the pipeline's scheduler (``pipe.scheduler = ...`` afterwards replaces the patched
    one). ``record=True`` logs every λ lookup in ``handle.records``.
    """
    sched = _find_scheduler(pipe_or_scheduler)
    if _already_patched(sched, "step"):
        raise RuntimeError("Epsilon Scaling is already applied to this scheduler; remove the first handle before "
                           "applying another schedule")
    view = _SchedulerView(sched, _as_schedule(schedule))
    orig = sched.step
    handle = None

    @functools.wraps(orig)
    def step(*args, **kwargs):
        timestep = _get_arg(args, kwargs, 1, "timestep")
        bound = view.ensure_bound()
        if bound.identity:  # λ = 1 everywhere: the original call, untouched
            return orig(*args, **kwargs)
        lam, sigma, ab = view.lookup(_scalar_timestep(timestep))
        handle._log("step", timestep, sigma, lam)
        if lam != 1.0:
            out = _get_arg(args, kwargs, 0, "model_output")
            sample = _get_arg(args, kwargs, 2, "sample")
            x_t = sample
            if view.prediction != "eps" and view.family == "sigma_space":
                x_t = sample.to(torch.float64) * vp_coefficients(ab)[0]  # the network's (scaled) input
            new = scale_prediction(out, x_t, lam, ab, view.prediction)
            if args:
                args = (new,) + tuple(args[1:])
            else:
                kwargs = dict(kwargs, model_output=new)
        return orig(*args, **kwargs)

    step.__signature__ = inspect.signature(orig)
    handle = EpsilonScalingHandle(sched, "step", step, view, record)
    step._es_handle = handle
    sched.step = step
    return handle


def scale_model_output(model, pipe_or_scheduler, schedule: Union[LambdaSchedule, float], *,
                       prediction_type: Optional[str] = None, record: bool = False) -> EpsilonScalingHandle:
    """Model-side Epsilon Scaling: wrap ``model.forward`` (a diffusers UNet / transformer, or any module called as
    ``model(x_t, t, ...)``) so its prediction is rewritten with ε → ε/λ.

    λ and ᾱ come from ``pipe_or_scheduler`` (its grid and noise levels, exactly as for
    :func:`apply_epsilon_scaling`); the prediction type defaults to the scheduler's. With classifier-free guidance
    this scales every branch *before* guidance, which equals scaling the guided prediction (guidance is linear).
    Learned-variance outputs (2C channels) keep their last C channels. Returns an undo handle.
    """
    sched = _find_scheduler(pipe_or_scheduler)
    if _already_patched(model, "forward"):
        raise RuntimeError("Epsilon Scaling is already applied to this model; remove the first handle first")
    view = _SchedulerView(sched, _as_schedule(schedule), prediction_type)
    orig = model.forward
    handle = None

    @functools.wraps(orig)
    def forward(*args, **kwargs):
        result = orig(*args, **kwargs)
        bound = view.ensure_bound()
        if bound.identity:
            return result
        x_t = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = _scalar_timestep(timestep)
        if t is None:
            lam, sigma, ab = view.lookup_batch(timestep)
            handle._log("model", timestep, float(sigma[0]), float(lam[0]))
        else:
            lam, sigma, ab = view.lookup(t)
            handle._log("model", timestep, sigma, lam)
        if isinstance(result, torch.Tensor):
            return scale_prediction(result, x_t, lam, ab, view.prediction)
        if isinstance(result, tuple):
            return (scale_prediction(result[0], x_t, lam, ab, view.prediction),) + tuple(result[1:])
        if hasattr(result, "sample"):
            result.sample = scale_prediction(result.sample, x_t, lam, ab, view.prediction)
            return result
        raise TypeError(f"cannot apply Epsilon Scaling to a model output of type {type(result).__name__}")

    forward.__signature__ = inspect.signature(orig)
    handle = EpsilonScalingHandle(model, "forward", forward, view, record)
    forward._es_handle = handle
    model.forward = forward
    return handle
