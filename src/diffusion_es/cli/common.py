"""Small helpers shared by the subcommands: JSON output, seed ranges, parsing of lambda options."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import UsageError


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=float)
    sys.stdout.write("\n")


def parse_int_list(text, what: str) -> list:
    """'10,20,50' -> [10, 20, 50], with a one-line error naming the option."""
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} {text!r}: give comma-separated whole numbers, e.g. 10,20,50") from None


MAX_SEEDS = 10_000_000  # samples one invocation may ask for (a typo like 0-99999999999 is refused, not allocated)


def parse_seeds(text: str) -> list:
    """'0-1999' -> [0..1999]; '3,5,7' -> [3, 5, 7]; '0-9,20' -> both. Ranges include both ends."""
    from ..samplers.common import MAX_SEED

    parts = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            a, dash, b = part.partition("-")  # seeds are >= 0, so a '-' always means a range
            lo, hi = (int(a), int(b)) if dash else (int(part), int(part))
            if hi < lo or lo < 0:
                raise ValueError
            parts.append((lo, hi))
    except ValueError:
        raise UsageError(f"bad --seeds {text!r}: use a range like 0-1999, a list like 1,2,3, or both (0-9,20)") from None
    if not parts:
        raise UsageError("--seeds is empty: give at least one seed, e.g. --seeds 0-99")
    if max(hi for _, hi in parts) > MAX_SEED:
        raise UsageError(f"--seeds {text!r}: seeds must lie in 0..{MAX_SEED} (2^63 - 1)")
    count = sum(hi - lo + 1 for lo, hi in parts)
    if count > MAX_SEEDS:
        raise UsageError(f"--seeds {text!r} asks for {count:,} samples; at most {MAX_SEEDS:,} per run "
                         "(split the work into several runs)")
    seeds = [s for lo, hi in parts for s in range(lo, hi + 1)]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed: each seed must appear once")
    return seeds


def add_threads_arg(p, default: int = 0) -> None:
    """``--threads N``; :func:`diffusion_es.cli.main` applies it (torch.set_num_threads) before the command runs."""
    p.add_argument("--threads", type=nonneg_int, default=default,
                   help=f"torch CPU threads (default {default}; 0: torch's default; 1 is often fastest for small "
                        "models on a busy shared CPU)")


# ---- options shared by sample / measure / calibrate / repro ------------------------------------------------
def add_model_args(p) -> None:
    from ..models.checkpoint import SHIPPED

    p.add_argument("--model", default="default", metavar="PATH|NAME",
                   help="checkpoint folder (config.json + model.safetensors), a diffusers UNet folder, or a shipped "
                        f"model: {', '.join(SHIPPED)} ('default' is the digits model; 'digits-flow' the rectified-flow "
                        "digits model, sampled with flow_euler / flow_heun)")


def load_model_arg(path):
    """The model behind ``--model``, as (LoadedModel-like object with .schedule/.data_shape, denoiser)."""
    from ..models import load_model

    m = load_model(path)
    return m, m.denoiser()


# ---- typed option values, checked at parse time ----------------------------------------------------------
def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError(f"{text!r}: NaN is not a value ({what})")
    return v


def finite_float(text: str) -> float:
    v = _number(text, "a finite number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number")
    return v


def nonneg_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number >= 0")
    return v


def positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number > 0")
    return v


def nonneg_or_inf(text: str) -> float:
    v = _number(text, "a number >= 0 or inf")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number >= 0 (or inf)")
    return v


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return v


def nonneg_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 0")
    return v


# ---- samplers: options read from the registry ------------------------------------------------------------
# how each registry option is typed on the command line (its flag comes from the registry)
_OPTION_TYPES = {"eta": nonneg_float, "S_churn": nonneg_float, "S_tmin": nonneg_float, "S_tmax": nonneg_or_inf,
                 "S_noise": positive_float}


def add_sampler_args(p, steps_default: int = 20, sampler_default: str = "ddim") -> None:
    """``--sampler``, ``--steps``, ``--spacing`` and one flag per sampler option of the registry."""
    from ..core.schedules import SPACINGS
    from ..samplers import SAMPLERS, VARIANCES

    p.add_argument("--sampler", choices=list(SAMPLERS), default=sampler_default,
                   help=f"sampler (default {sampler_default}): " + "; ".join(
                       f"{n}: {s.title}" for n, s in SAMPLERS.items()))
    p.add_argument("--steps", type=positive_int, default=steps_default,
                   help=f"sampling steps (default {steps_default}; Heun: 2N-1 network evaluations)")
    p.add_argument("--spacing", choices=SPACINGS, default="adm",
                   help="timestep respacing for ddpm/ddim (default adm)")
    p.add_argument("--shift", type=positive_float, default=None,
                   help="flow_euler/flow_heun: SD3 time shift s of the grid, t' = s·t/(1+(s-1)·t) "
                        "(default: the flow model's own)")
    seen = set()
    for spec in SAMPLERS.values():
        for o in spec.options:
            if not o.flag or o.flag in seen:
                continue
            seen.add(o.flag)
            users = "/".join(n for n, s in SAMPLERS.items() if any(q.flag == o.flag for q in s.options))
            if o.name == "clip":
                p.add_argument(o.flag, action="store_true", default=None,
                               help=f"{users}: do not clip the x0 estimate to [-1, 1]")
            elif o.name == "variance":
                p.add_argument(o.flag, choices=VARIANCES, default=None, help=f"{users}: {o.help}")
            else:
                p.add_argument(o.flag, type=_OPTION_TYPES[o.name], default=None,
                               help=f"{users}: {o.help} (default {o.default})")


def schedule_arg(args, model):
    """The model's schedule with ``--shift`` applied (flow models only; one line otherwise)."""
    shift = getattr(args, "shift", None)
    if shift is None:
        return model.schedule
    from ..core.schedules import FlowSchedule

    if not isinstance(model.schedule, FlowSchedule):
        raise UsageError("--shift is the time shift of rectified-flow models; this model is a VP model")
    return model.schedule.with_shift(shift)


def sampler_kwargs(args) -> dict:
    """The chosen sampler's options from the flags; a flag of another sampler is refused with one line."""
    from ..samplers import SAMPLERS, get_sampler

    spec = get_sampler(args.sampler)
    mine = {o.flag for o in spec.options}
    opts = {}
    for other in SAMPLERS.values():
        for o in other.options:
            if not o.flag:
                continue
            v = getattr(args, o.flag.lstrip("-").replace("-", "_"), None)
            if v is None:
                continue
            if o.flag not in mine:
                raise UsageError(f"{o.flag} applies to {'/'.join(n for n, s in SAMPLERS.items() if o in s.options)}, "
                                 f"not to --sampler {args.sampler}")
            opts[o.name] = (not v) if o.name == "clip" else v
    return spec.resolve(opts)


def add_es_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--es", type=positive_float, metavar="B", help="Epsilon Scaling with uniform λ = B")
    g.add_argument("--es-linear", metavar="K,B", help="Epsilon Scaling with λ_t = K·t + B (t = 0 is the last step)")
    g.add_argument("--es-schedule", metavar="FILE.json", help="Epsilon Scaling schedule from a JSON file "
                                                             "(e.g. written by `diffusion-es calibrate`)")


def es_from_args(args):
    """The λ schedule the ES options ask for, or None."""
    from ..core.scaling import Linear, Uniform, load_schedule

    try:
        if getattr(args, "es", None) is not None:
            return Uniform(args.es)
        if getattr(args, "es_linear", None):
            try:
                k, b = (float(v) for v in args.es_linear.split(","))
            except ValueError:
                raise UsageError(f"--es-linear {args.es_linear!r}: give two numbers K,B, e.g. 0.0025,1.0") from None
            return Linear(k, b)
        if getattr(args, "es_schedule", None):
            return load_schedule(args.es_schedule)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return None


def progress_bar(total: int, desc: str, unit: str = "sample"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
