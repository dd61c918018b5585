"""Epsilon Scaling inside 🤗 diffusers pipelines.

Two routes, both undoable and both keyed on the noise level (never on a call counter):

* :func:`apply_epsilon_scaling` (scheduler side, the usual one): wraps the scheduler's ``step`` (an instance
  attribute) so the prediction the pipeline hands to the scheduler, i.e. *after* classifier-free guidance, is
  rewritten with ε → ε/λ before the scheduler sees it. The pipeline, the network and the scheduler's maths stay
  untouched; ``inspect.signature(scheduler.step)`` still shows ``eta``, ``generator`` etc.
* :func:`scale_model_output` (model side): wraps a UNet / transformer's ``forward`` so its own prediction is
  rewritten (before guidance; for hand-written loops). Learned-variance outputs (2C channels) keep their
  variance channels.

What "ε" is: every supported scheduler reads the prediction at a point ``x_t = a·x_0 + b·ε`` of its process, and
the prediction is turned into ε with that (a, b), divided by λ and turned back
(:func:`diffusion_es.core.scaling.scale_prediction`, through :mod:`diffusion_es.core.param`'s prediction objects):

* VP schedulers (DDPM, DDIM, PNDM) hand ``x_t`` to ``step`` and take ᾱ from ``alphas_cumprod[t]``
  (a = sqrt(ᾱ), b = sqrt(1 − ᾱ));
* the DPM-Solver family (DPM-Solver(++) multistep and singlestep, UniPC, DEIS) also works on ``x_t`` but takes ᾱ
  from its own ``sigmas[step_index]`` (ᾱ = 1/(1+σ²)); with ``use_flow_sigmas=True`` its sigmas are rectified-flow
  times t (a = 1 − t, b = t) and ``prediction_type="flow_prediction"`` is the velocity;
* σ-space schedulers (Euler, Euler ancestral, Heun, LMS, KDPM2, KDPM2 ancestral) keep
  ``x = x_t·sqrt(1+σ²) = x_0 + σ ε`` and give the network the scaled input ``x_t``, so the ε of a σ-space step
  is the same ε as in VP space (KDPM2's second evaluation is at its interpolated σ);
* flow-matching schedulers (FlowMatchEuler, FlowMatchHeun: SD3, Flux, Sana, Wan) hand the flow point
  ``x_t = (1 − t) x_0 + t ε`` to ``step`` with t = ``sigmas[step_index]`` and a velocity ``v = ε − x_0``;
* EDM schedulers (EDMEuler, EDMDPMSolverMultistep) work in σ space on ``x`` with EDM's preconditioning: their
  ``precondition_outputs`` gives ``x̂_0 = c_skip·x + c_out·F`` (:class:`~diffusion_es.core.param.PreconditionedPrediction`).

**σ = ∞** (module :mod:`diffusion_es.core.scaling`): λ = 1 wherever the process is at pure noise, so that step is
the unpatched one. diffusers writes that point in three ways, all recognised: ᾱ = 0 exactly (DDPM / DDIM with
``rescale_betas_zero_snr=True``), its stand-in ᾱ = 2⁻²⁴ (Euler, Euler ancestral and DPM-Solver multistep with
``rescale_betas_zero_snr=True``: every σ at or above the σ of the last training timestep is σ = ∞), and t = 1 or
its stand-ins: UniPC's t = 1 − 1e-6 (every t within ``FLOW_T_STANDIN`` of 1 is t = 1), and the top of DPM-Solver
(multistep, singlestep) and DEIS grids with ``use_flow_sigmas=True``, which start at the shifted 1 − 1/T (t = 0.99967,
σ_flow ≈ 3000 at shift 3) to avoid log(0) while the pipeline hands them pure noise; there λ would change x̂₀ by
σ(1 − 1/λ)·ε, so that one step would outweigh all others.

λ comes from :class:`diffusion_es.core.scaling.BoundLambda`, bound lazily to the scheduler's grid (one σ per distinct
timestep of the current ``set_timesteps``; re-bound whenever ``scheduler.timesteps`` is replaced). A call is keyed on
the σ at which the network was evaluated: Heun's second evaluation at σ_{i+1} gets λ_{i+1}, KDPM2's at its
interpolated σ between σ_{i+1} and σ_i gets λ_{i+1} (the step whose interval holds it), and a multistep solver's
output at t_i gets λ_i.

Schedulers not listed are refused with the reason and the supported one to switch to; a VP scheduler built from a
flow-matching scheduler's config (``DDIMScheduler.from_config(flow_pipe.scheduler.config)``, which diffusers
accepts and which samples a flow model wrongly) is refused too.
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..core.param import (PreconditionedPrediction, alpha_bar_to_sigma, flow_t_to_sigma, get_prediction,
                          sigma_to_alpha_bar, vp_coefficients)
from ..errors import require_optional
from ..core.scaling import BoundLambda, LambdaSchedule, as_numpy_1d, as_schedule, scale_prediction

__all__ = [
    "apply_epsilon_scaling",
    "scale_model_output",
    "EpsilonScalingHandle",
    "CallRecord",
    "SUPPORTED_SCHEDULERS",
    "FLOW_T_STANDIN",
    "require_diffusers",
]

# scheduler families (matched on the class and its bases, so subclasses work too)
_VP_ALPHAS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler")
_VP_SIGMAS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler")
_SIGMA_SPACE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
_EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
_FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
SUPPORTED_SCHEDULERS = _VP_ALPHAS + _VP_SIGMAS + _SIGMA_SPACE + _EDM + _FLOW
_FAMILIES = (("vp_alphas", _VP_ALPHAS), ("vp_sigmas", _VP_SIGMAS), ("sigma_space", _SIGMA_SPACE), ("edm", _EDM),
             ("flow", _FLOW))
# a flow time this close to 1 is t = 1 (σ = ∞): UniPC with use_flow_sigmas starts at 1 − 1e-6 to avoid log(0)
FLOW_T_STANDIN = 1e-5
# schedulers whose use_flow_sigmas grid starts at flow_shift(1 − 1/T) (np.linspace(1, 1/T, n + 1), flipped): that
# top is their stand-in for t = 1
_FLOW_TOP_BELOW_ONE = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler")
# settings of FlowMatchEulerDiscreteScheduler that no VP scheduler has: a VP scheduler whose config carries one of
# them was made from a flow model's scheduler config
_FLOW_CONFIG_KEYS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
                     "max_image_seq_len", "invert_sigmas", "stochastic_sampling")
# and the other way round: settings of a VP β table that no flow-matching scheduler has
_VP_CONFIG_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample", "set_alpha_to_one",
                   "rescale_betas_zero_snr", "prediction_type")


def require_diffusers():
    """Import diffusers or fail with the extra to install."""
    return require_optional("diffusers", "diffusers")


def _foreign_keys(scheduler, keys) -> list:
    """Those of ``keys`` that ``scheduler.config`` carries but its class does not take: ``from_config`` of another
    family's config keeps them."""
    own = set(inspect.signature(type(scheduler).__init__).parameters)
    return [k for k in keys if k in scheduler.config and k not in own]


def _family(scheduler) -> str:
    names = {c.__name__ for c in type(scheduler).__mro__}
    cfg = scheduler.config
    for fam, members in _FAMILIES:
        if names & set(members):
            flow_grid = fam == "vp_sigmas" and cfg.get("use_flow_sigmas", False)  # DPM-Solver & co. made for flow
            carried = _foreign_keys(scheduler, _FLOW_CONFIG_KEYS)
            if fam not in ("flow", "edm") and not flow_grid and carried:
                raise ValueError(f"{type(scheduler).__name__} was built from a flow-matching scheduler's config (it "
                                 f"carries {', '.join(carried)}): it samples a flow-matching model wrongly; use "
                                 f"FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config) (or "
                                 f"FlowMatchHeunDiscreteScheduler, or {type(scheduler).__name__} with "
                                 f"use_flow_sigmas=True, prediction_type='flow_prediction')")
            carried = _foreign_keys(scheduler, _VP_CONFIG_KEYS)
            of_flow = cfg.get("use_flow_sigmas", False) or cfg.get("prediction_type") == "flow_prediction"
            if fam == "flow" and carried and not of_flow:  # (a DPM-Solver flow config, e.g. Sana's, is a flow one)
                raise ValueError(f"{type(scheduler).__name__} was built from a VP scheduler's config (it carries "
                                 f"{', '.join(carried)}): it reads the network's output as a velocity, which an ε / v "
                                 f"/ x0 model's is not; use a VP scheduler, e.g. DDIMScheduler.from_config("
                                 f"pipe.scheduler.config)")
            return fam
    name = type(scheduler).__name__
    if name.startswith(("FlowMatch", "Flow")) or "shift" in scheduler.config:
        hint = ("for a flow-matching model switch with pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config("
                "pipe.scheduler.config) (or FlowMatchHeunDiscreteScheduler, or DPMSolverMultistepScheduler / "
                "UniPCMultistepScheduler with use_flow_sigmas=True, prediction_type='flow_prediction')")
    else:
        hint = ("for a VP (ε / v / x0) model switch with pipe.scheduler = DDIMScheduler.from_config("
                "pipe.scheduler.config) (or another of them)")
    raise ValueError(f"Epsilon Scaling does not support {name}; supported schedulers: "
                     f"{', '.join(SUPPORTED_SCHEDULERS)}; {hint}")


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


@dataclass(frozen=True)
class _Level:
    """The noise level of one network evaluation: the scheduler's own value (σ, or t for flow), the denoiser-frame
    σ it is keyed on (∞ at the σ = ∞ point) and the process coefficients (a, b) of ``x_t = a·x_0 + b·ε``."""

    raw: float
    sigma: float
    a: float
    b: float


class _SchedulerView:
    """Reads a scheduler's grid and the noise level of one call, without changing its state."""

    def __init__(self, scheduler, schedule: LambdaSchedule, prediction_type: Optional[str] = None):
        self.scheduler = scheduler
        self.family = _family(scheduler)
        cfg = scheduler.config
        name = prediction_type or cfg.get("prediction_type", "flow_prediction" if self.family == "flow" else "epsilon")
        self.prediction = get_prediction(name).name
        cls = type(scheduler).__name__
        flow_sigmas = bool(cfg.get("use_flow_sigmas", False))
        self.process = "flow" if self.family == "flow" or (self.family == "vp_sigmas" and flow_sigmas) else "vp"
        if self.family == "flow":
            if cfg.get("invert_sigmas", False):
                raise ValueError(f"{cls} with invert_sigmas=True (Mochi's reversed time) is not supported by Epsilon "
                                 f"Scaling: its sigmas are 1 − t, not the flow time t")
            if self.prediction != "flow":
                raise ValueError(f"{cls} reads a velocity (flow prediction); prediction type {name!r} is not one")
        elif self.family == "edm":
            if self.prediction not in ("eps", "v"):
                raise ValueError(f"{cls} with prediction type {name!r}: EDM preconditioning supports epsilon and "
                                 f"v_prediction")
        elif self.process == "flow":  # DPM-Solver family with use_flow_sigmas
            if self.prediction == "v":
                raise ValueError(f"{cls} with use_flow_sigmas=True and prediction type {name!r}: v-prediction is "
                                 f"defined for VP processes; a flow-matching model predicts the flow "
                                 f"(prediction_type='flow_prediction')")
        elif self.prediction == "flow":
            raise ValueError(f"Epsilon Scaling does not support prediction type {name!r} with {cls} on a VP grid: a "
                             f"flow-matching model needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, "
                             f"FlowMatchHeunDiscreteScheduler, or {cls} with use_flow_sigmas=True)"
                             if self.family == "vp_sigmas" else
                             f"Epsilon Scaling does not support prediction type {name!r} with {cls}: a flow-matching "
                             f"model needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler, "
                             f"FlowMatchHeunDiscreteScheduler, or DPM-Solver / UniPC with use_flow_sigmas=True)")
        # σ = ∞ of a zero-terminal-SNR VP schedule: ᾱ = 0, or diffusers' stand-in 2^-24 for the last timestep
        self.inf_from = math.inf
        self.top_below_one = bool({c.__name__ for c in type(scheduler).__mro__} & set(_FLOW_TOP_BELOW_ONE))
        if self.process == "vp" and cfg.get("rescale_betas_zero_snr", False) and hasattr(scheduler, "alphas_cumprod"):
            self.inf_from = float(alpha_bar_to_sigma(float(scheduler.alphas_cumprod[-1].to(torch.float64))))
        self.schedule = schedule
        self._ts_ref = None
        self.bound: Optional[BoundLambda] = None
        self._cache = {}

    # ---- noise levels -----------------------------------------------------------------------------------
    def flow_inf_from(self) -> float:
        """The flow time at or above which t counts as 1 (σ = ∞): within FLOW_T_STANDIN of 1, and for DPM-Solver /
        DEIS flow grids their top, flow_shift(1 − 1/T), read from the config now (set_timesteps(mu=...) with dynamic
        shifting rewrites config.flow_shift)."""
        t_inf = 1.0 - FLOW_T_STANDIN
        if self.top_below_one:
            cfg = self.scheduler.config
            top = 1.0 - 1.0 / int(cfg.get("num_train_timesteps", 1000))
            shift = float(getattr(cfg, "flow_shift", cfg.get("flow_shift", 1.0)))  # (mu sets the attribute only)
            t_inf = min(t_inf, shift * top / (1 + (shift - 1) * top) * (1 - 1e-6))
        return t_inf

    def level(self, raw: float) -> _Level:
        """The scheduler's own noise value (σ; t for a flow process) as a :class:`_Level`."""
        if self.process == "flow":
            t = 1.0 if raw >= self.flow_inf_from() else float(raw)
            return _Level(raw, flow_t_to_sigma(t), 1.0 - t, t)
        if raw >= self.inf_from * (1 - 1e-6):
            return _Level(raw, math.inf, 0.0, 1.0)
        if self.family == "edm":
            return _Level(raw, raw, 1.0, raw)
        a, b = vp_coefficients(sigma_to_alpha_bar(raw))
        return _Level(raw, raw, a, b)

    def _level_of_alpha_bar(self, ab: float) -> _Level:
        sig = float(alpha_bar_to_sigma(ab))
        if sig >= self.inf_from * (1 - 1e-6):
            return _Level(sig, math.inf, 0.0, 1.0)
        a, b = vp_coefficients(ab)
        return _Level(sig, sig, a, b)

    # ---- the grid -------------------------------------------------------------------------------------
    def _grid(self) -> np.ndarray:
        s = self.scheduler
        ts = s.timesteps
        if ts is None:
            raise ValueError("the scheduler has no timesteps yet: call set_timesteps first")
        ts = torch.as_tensor(ts)
        if self.family == "vp_alphas":
            ab = s.alphas_cumprod.to("cpu", torch.float64)[ts.to("cpu").long()].numpy()
            raw = alpha_bar_to_sigma(ab)
        else:  # Heun, KDPM2 and FlowMatchHeun: [σ0, σ1, σ1, ..., σ_{n-1}, σ_{n-1}] for their 2n − 1 timesteps
            raw = s.sigmas.to("cpu", torch.float64).numpy()[: len(ts)]
        sig = np.array([self.level(float(r)).sigma for r in raw]) if self.family != "vp_alphas" else np.where(
            raw >= self.inf_from * (1 - 1e-6), np.inf, raw)
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
            if begin is not None:
                return int(begin)
            try:
                idx = s.index_for_timestep(timestep)
            except (IndexError, RuntimeError):
                raise ValueError(f"cannot tell which step of {type(s).__name__} a network call at timestep "
                                 f"{float(torch.as_tensor(timestep)):.6g} belongs to (not one of scheduler.timesteps); "
                                 f"call scheduler.set_begin_index(0) before sampling, or use apply_epsilon_scaling "
                                 f"(the scheduler side)") from None
        return int(idx)

    def call_level(self, timestep) -> _Level:
        """The noise level the network was evaluated at for this call (scalar timestep)."""
        s = self.scheduler
        if self.family == "vp_alphas":
            return self._level_of_alpha_bar(float(s.alphas_cumprod[int(timestep)].to(torch.float64)))
        i = self._step_index(timestep)
        table = s.sigmas
        if hasattr(s, "sigmas_interpol") and not s.state_in_first_order:  # KDPM2's evaluation at its midpoint
            table = s.sigmas_interpol
            i = i - 1 if "KDPM2AncestralDiscreteScheduler" in {c.__name__ for c in type(s).__mro__} else i
        return self.level(float(table[i].to(torch.float64)))

    def lookup(self, timestep):
        """(λ, level) for one call with a scalar timestep."""
        bound = self.ensure_bound()
        lev = self.call_level(timestep)
        lam = self._cache.get(lev.sigma)
        if lam is None:
            lam = self._cache[lev.sigma] = float(bound(lev.sigma)[0])
        return lam, lev

    def lookup_batch(self, timesteps):
        """(λ, σ, a, b) arrays for per-sample timesteps (VP schedulers with integer timesteps only)."""
        if self.family != "vp_alphas":
            raise ValueError(f"per-sample timesteps are only supported with {', '.join(_VP_ALPHAS)}")
        bound = self.ensure_bound()
        t = torch.as_tensor(timesteps).reshape(-1).to("cpu").long()
        ab = self.scheduler.alphas_cumprod.to("cpu", torch.float64)[t].numpy()
        levels = [self._level_of_alpha_bar(float(v)) for v in ab]
        sig = np.array([lv.sigma for lv in levels])
        return bound(sig), sig, np.array([lv.a for lv in levels]), np.array([lv.b for lv in levels])

    def rewrite(self, out, x, lam, lev, network_input: bool = False):
        """The prediction ``out`` made at this level, rewritten with ε → ε/λ (the one λ formula).

        ``x``: what the scheduler's ``step`` gets as ``sample`` (the step route), or, with ``network_input=True``,
        what the network got (the model route). The two differ where a scheduler scales the network's input: the
        σ-space family gives the network ``x_t = x / sqrt(1 + σ²)`` and the EDM family ``c_in·x``."""
        pred = self.prediction
        x_t = x
        if self.family == "edm":
            s = self.scheduler
            one = torch.ones((), dtype=torch.float64)
            c_skip = float(s.precondition_outputs(one, 0 * one, lev.raw))
            c_out = float(s.precondition_outputs(0 * one, one, lev.raw))
            pred = PreconditionedPrediction(c_skip, c_out)
            if network_input:  # EDM's x̂_0 = c_skip·x + c_out·F is written for the unscaled x = x_in / c_in
                x_t = x.to(torch.float64) / float(s.precondition_inputs(one, lev.raw))
        elif self.family == "sigma_space" and pred != "eps" and not network_input:
            x_t = x.to(torch.float64) * lev.a  # the network's (scaled) input
        return scale_prediction(out, x_t, lam, None, pred, a=lev.a, b=lev.b)


class EpsilonScalingHandle:
    """Undo handle for one patch (also a context manager). ``records`` lists :class:`CallRecord` when recording."""

    def __init__(self, target, attr: str, wrapper, view: _SchedulerView, record: bool, pipeline=None):
        self.target, self.attr, self.view = target, attr, view
        self.records = [] if record else None
        self._had_own = attr in target.__dict__
        self._own = target.__dict__.get(attr)
        self._wrapper = wrapper
        self._applied = True
        # the pipeline it was applied through (weakly): replacing pipe.scheduler afterwards detaches the patch
        self._pipeline = None if pipeline is None else weakref.ref(pipeline)

    @property
    def detached(self) -> Optional[str]:
        """Why a patch still in place no longer reaches the pipeline it was applied through (its ``scheduler`` was
        replaced afterwards: ``pipe.scheduler = ...`` runs the new, unpatched one), else None."""
        pipe = None if self._pipeline is None else self._pipeline()
        if not self._applied or pipe is None or getattr(pipe, "scheduler", None) is self.view.scheduler:
            return None
        return (f"the pipeline's scheduler was replaced after Epsilon Scaling was applied (it now runs "
                f"{type(pipe.scheduler).__name__} without ES); apply Epsilon Scaling again, after choosing the "
                f"scheduler")

    @property
    def active(self) -> bool:
        """True while the patch is in place and, where it was applied through a pipeline, that pipeline still runs
        the patched scheduler (:attr:`detached`)."""
        return self._applied and self.detached is None

    @property
    def schedule(self) -> LambdaSchedule:
        return self.view.schedule

    @property
    def bound(self) -> Optional[BoundLambda]:
        """The λ schedule bound to the scheduler's current grid (None before the first call)."""
        return self.view.bound

    def remove(self) -> None:
        """Restore the original ``step`` / ``forward`` exactly. Removing twice is a no-op."""
        if not self._applied:
            return
        current = self.target.__dict__.get(self.attr)
        if current is not self._wrapper:
            raise RuntimeError(f"{type(self.target).__name__}.{self.attr} was replaced after Epsilon Scaling was "
                               f"applied; remove that patch first (patches must be undone in reverse order)")
        if self._had_own:
            setattr(self.target, self.attr, self._own)
        else:
            delattr(self.target, self.attr)
        self._applied = False

    def _log(self, route, timestep, sigma, lam):
        if self.records is not None:
            self.records.append(CallRecord(route, float(as_numpy_1d(timestep)[0]), float(sigma), float(lam)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        state = "removed" if not self._applied else "detached: pipe.scheduler replaced" if self.detached else "active"
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


def _pipeline_of(obj, sched):
    """``obj`` when it is a pipeline holding ``sched`` (what a handle watches for a replaced scheduler), else None."""
    return obj if obj is not sched and getattr(obj, "scheduler", None) is sched else None


def _already_patched(target, attr):
    return getattr(target.__dict__.get(attr), "_es_handle", None) is not None


# the model-side handles of each scheduler: the two routes at once would divide ε by λ twice (λ²)
_MODEL_ROUTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_BOTH_ROUTES = ("would divide ε by λ twice (λ²): use one route (remove the other handle first)")


_STEP_PARAMS = ("model_output", "timestep", "sample")


def _get_arg(args, kwargs, pos, name):
    return args[pos] if len(args) > pos else kwargs[name]


def apply_epsilon_scaling(pipe_or_scheduler, schedule: Union[LambdaSchedule, float], *,
                          record: bool = False) -> EpsilonScalingHandle:
    """Apply Epsilon Scaling to a diffusers pipeline (its ``scheduler``) or a scheduler, in place.

    ``schedule``: a :class:`~diffusion_es.scaling.LambdaSchedule` or a number (uniform λ). Returns a handle;
    ``handle.remove()`` (or leaving ``with apply_epsilon_scaling(...):``) restores the scheduler exactly.
    Apply it after choosing the pipeline's scheduler: ``pipe.scheduler = ...`` afterwards runs the new scheduler
    without ES, and the handle then says so (``handle.active`` False, ``handle.detached`` the reason).
    ``record=True`` logs every λ lookup in ``handle.records``.
    """
    sched = _find_scheduler(pipe_or_scheduler)
    if _already_patched(sched, "step"):
        raise RuntimeError("Epsilon Scaling is already applied to this scheduler; remove the first handle before "
                           "applying another schedule")
    if any(h._applied for h in _MODEL_ROUTES.get(sched, ())):
        raise RuntimeError(f"scale_model_output already scales a model's output for this scheduler; scaling its step "
                           f"too {_BOTH_ROUTES}")
    view = _SchedulerView(sched, _as_schedule(schedule))
    orig = sched.step
    handle = None

    @functools.wraps(orig)
    def step(*args, **kwargs):
        timestep = _get_arg(args, kwargs, 1, "timestep")
        bound = view.ensure_bound()
        if bound.identity:  # λ = 1 everywhere: the original call, untouched
            return orig(*args, **kwargs)
        if kwargs.get("per_token_timesteps") is not None:
            raise ValueError("Epsilon Scaling with per_token_timesteps (a noise level per token) is not supported")
        if view.family == "edm" and float(kwargs.get("s_churn", 0.0) or 0.0) > 0:
            raise ValueError(f"Epsilon Scaling with {type(sched).__name__}'s s_churn > 0 is not supported: it adds "
                             f"churn noise after the network evaluation, at a σ the prediction was not made for")
        lam, lev = view.lookup(_scalar_timestep(timestep))
        handle._log("step", timestep, lev.sigma, lam)
        if lam != 1.0:
            out = _get_arg(args, kwargs, 0, "model_output")
            new = view.rewrite(out, _get_arg(args, kwargs, 2, "sample"), lam, lev)
            if args:
                args = (new,) + tuple(args[1:])
            else:
                kwargs = dict(kwargs, model_output=new)
        return orig(*args, **kwargs)

    step.__signature__ = inspect.signature(orig)
    handle = EpsilonScalingHandle(sched, "step", step, view, record, _pipeline_of(pipe_or_scheduler, sched))
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
    Given a pipeline, the wrapped model refuses to run (one line) once ``pipe.scheduler`` has been replaced: its λ
    and noise levels would come from the old scheduler.
    """
    sched = _find_scheduler(pipe_or_scheduler)
    if _already_patched(model, "forward"):
        raise RuntimeError("Epsilon Scaling is already applied to this model; remove the first handle first")
    if _already_patched(sched, "step"):
        raise RuntimeError(f"apply_epsilon_scaling already scales this scheduler's step; scaling the model's output "
                           f"too {_BOTH_ROUTES}")
    view = _SchedulerView(sched, _as_schedule(schedule), prediction_type)
    orig = model.forward
    handle = None

    @functools.wraps(orig)
    def forward(*args, **kwargs):
        detached = handle.detached
        if detached:  # λ and the noise levels would come from a scheduler the pipeline no longer runs
            raise RuntimeError(f"scale_model_output: {detached} (handle.remove(), then scale_model_output again)")
        result = orig(*args, **kwargs)
        bound = view.ensure_bound()
        if bound.identity:
            return result
        x_t = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = _scalar_timestep(timestep)
        if t is None:
            lam, sigma, a, b = view.lookup_batch(timestep)
            handle._log("model", timestep, float(sigma[0]), float(lam[0]))

            def rewrite(o):
                return scale_prediction(o, x_t, lam, None, view.prediction, a=a, b=b)
        else:
            lam, lev = view.lookup(t)
            handle._log("model", timestep, lev.sigma, lam)

            def rewrite(o):
                return view.rewrite(o, x_t, lam, lev, network_input=True)
        if isinstance(result, torch.Tensor):
            return rewrite(result)
        if isinstance(result, tuple):
            return (rewrite(result[0]),) + tuple(result[1:])
        if hasattr(result, "sample"):
            result.sample = rewrite(result.sample)
            return result
        raise TypeError(f"cannot apply Epsilon Scaling to a model output of type {type(result).__name__}")

    forward.__signature__ = inspect.signature(orig)
    handle = EpsilonScalingHandle(model, "forward", forward, view, record, _pipeline_of(pipe_or_scheduler, sched))
    forward._es_handle = handle
    model.forward = forward
    _MODEL_ROUTES[sched] = [h for h in _MODEL_ROUTES.get(sched, ()) if h._applied] + [handle]
    return handle
