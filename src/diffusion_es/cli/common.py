"""Small helpers shared by the subcommands: JSON output, seed ranges, parsing of lambda options."""

from __future__ import annotations

import json
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


def parse_seeds(text: str) -> list:
    """'0-1999' -> [0..1999]; '3,5,7' -> [3, 5, 7]; '0-9,20' -> both. Ranges include both ends."""
    seeds = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            a, dash, b = part.partition("-")  # seeds are >= 0, so a '-' always means a range
            if dash:
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"bad --seeds {text!r}: use a range like 0-1999, a list like 1,2,3, or both (0-9,20)") from None
    if not seeds:
        raise UsageError("--seeds is empty: give at least one seed, e.g. --seeds 0-99")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed: each seed must appear once")
    return seeds


def add_threads_arg(p, default: int = 0) -> None:
    """``--threads N``; :func:`diffusion_es.cli.main` applies it (torch.set_num_threads) before the command runs."""
    p.add_argument("--threads", type=int, default=default,
                   help=f"torch CPU threads (default {default}; 0: torch's default; 1 is often fastest for small "
                        "models on a busy shared CPU)")


# ---- options shared by sample / measure / calibrate / repro ------------------------------------------------
def add_model_args(p) -> None:
    p.add_argument("--model", default="default", metavar="PATH|default",
                   help="checkpoint folder (config.json + model.safetensors), a diffusers UNet folder, or "
                        "'default' (the shipped digits model)")


def load_model_arg(path):
    """The model behind ``--model``, as (LoadedModel-like object with .schedule/.data_shape, denoiser)."""
    from ..models import load_model

    m = load_model(path)
    return m, m.denoiser()


def add_sampler_args(p, steps_default: int = 20) -> None:
    from ..samplers import SAMPLERS, VARIANCES

    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="sampler (default ddim)")
    p.add_argument("--steps", type=int, default=steps_default, help=f"sampling steps (default {steps_default})")
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="ddpm: variance (default: learned for learned-variance models, else small)")
    p.add_argument("--eta", type=float, default=0.0, help="ddim: eta (default 0, deterministic)")
    p.add_argument("--no-clip", action="store_true", help="ddpm/ddim: do not clip x0 to [-1, 1]")
    p.add_argument("--churn", type=float, default=0.0, help="euler/heun: EDM S_churn (default 0)")
    p.add_argument("--s-noise", type=float, default=1.0, help="euler/heun: EDM S_noise (default 1)")
    p.add_argument("--s-tmin", type=float, default=0.0, help="euler/heun: EDM S_tmin (default 0)")
    p.add_argument("--s-tmax", type=float, default=float("inf"), help="euler/heun: EDM S_tmax (default inf)")


def sampler_kwargs(args) -> dict:
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.sampler == "ddpm":
        return {"variance": args.variance, "clip": not args.no_clip}
    if args.sampler == "ddim":
        return {"eta": args.eta, "clip": not args.no_clip}
    return {"S_churn": args.churn, "S_noise": args.s_noise, "S_tmin": args.s_tmin, "S_tmax": args.s_tmax}


def add_es_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--es", type=float, metavar="B", help="Epsilon Scaling with uniform λ = B")
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
