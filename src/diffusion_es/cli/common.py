"""Small helpers shared by the subcommands: JSON output, progress bars, seed ranges, typed option values
(checked at parse time), the model / device / sampler / λ options."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys

from ..errors import UsageError


def print_json(obj) -> None:
    """``--json`` output: strict JSON (:func:`diffusion_es.io.json_text`: NaN as null, ±∞ as "Infinity")."""
    from ..io import json_text

    sys.stdout.write(json_text(obj) + "\n")


def plain_help(doc: str) -> str:
    """A module docstring as ``--help`` text: reStructuredText's double backticks and roles (``:func:`x```) as plain
    `x`, and no references to the project's issue numbers."""
    text = re.sub(r":(?:func|mod|class|meth|attr|data):`~?([^`]+)`", r"`\1`", doc)
    text = text.replace("``", "`")
    return re.sub(r"\s*\(issue \d+\)", "", text)


def parse_int_list(text, what: str) -> list:
    """'10,20,50' -> [10, 20, 50], with a one-line error naming the option (see :func:`int_list`)."""
    try:
        return int_list(-(2**63), 2**63)(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{what} {e}") from None


MAX_SEEDS = 10_000_000  # samples one invocation may ask for (a typo like 0-99999999999 is refused, not allocated)


def parse_seeds(text: str) -> list:
    """'0-1999' -> [0..1999]; '3,5,7' -> [3, 5, 7]; '0-9,20' -> both. Ranges include both ends."""
    from ..samplers.common import SEED_PERIOD

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
    if max(hi for _, hi in parts) >= SEED_PERIOD:
        raise UsageError(f"--seeds {text!r}: seeds must lie in 0..{SEED_PERIOD - 1} ({SEED_BOUND})")
    count = sum(hi - lo + 1 for lo, hi in parts)
    if count > MAX_SEEDS:
        raise UsageError(f"--seeds {text!r} asks for {count:,} samples; at most {MAX_SEEDS:,} per run "
                         "(split the work into several runs)")
    seeds = [s for lo, hi in parts for s in range(lo, hi + 1)]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed: each seed must appear once")
    return seeds


def threads_arg(text: str) -> int:
    """A parse-time type: torch CPU threads, 0 (torch's default) up to this machine's CPU count (more only make
    threads wait for each other; 100,000 crashed the process)."""
    import os

    v = nonneg_int(text)
    n = os.cpu_count() or 1
    if v > n:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {n} CPU(s); give 0 (torch's default) to {n}")
    return v


def add_threads_arg(p, default: int = 0) -> None:
    """``--threads N``; :func:`diffusion_es.cli.main` applies it (torch.set_num_threads) before the command runs."""
    p.add_argument("--threads", type=threads_arg, default=default,
                   help=f"torch CPU threads (default {default}; 0: torch's default; 1 is often fastest for small "
                        "models on a busy shared CPU)")


# ---- options shared by sample / measure / calibrate / repro ------------------------------------------------
def add_model_args(p, flag: str = "--model", default="default", extra: str = "") -> None:
    from ..models.checkpoint import MODEL_FORMS

    p.add_argument(flag, default=default, required=default is None, metavar="PATH|NAME",
                   help=f"{extra}the model: {MODEL_FORMS} (flow models such as digits-flow sample with flow_euler / "
                        "flow_heun)")


BATCH_HELP = ("samples per batch (default: auto, i.e. on the CPU as many as keep the largest output of any operation in "
              "one network call within 16 MiB, at most 500: bigger CPU batches run slower, see docs/benchmarks.md; "
              "500 on other devices)")


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


def int_in(lo: int, hi: int):
    """A parse-time type: a whole number in [lo, hi] (the upper bound refuses typos that would ask for
    absurd amounts of memory or time)."""
    def check(text: str) -> int:
        v = _int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from {lo:,} to {hi:,}")
        return v

    check.__name__ = f"int_in_{lo}_{hi}"
    return check


def float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """A parse-time type: a finite number in the interval (brackets as given by ``*_open``)."""
    def check(text: str) -> float:
        v = finite_float(text)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f"{text!r}: give a number in {'(' if lo_open else '['}{lo:g}, "
                                             f"{hi:g}{')' if hi_open else ']'}")
        return v

    check.__name__ = "float_in"
    return check


def int_list(lo: int = 1, hi: int = 100_000, allow_empty: bool = False):
    """A parse-time type: comma-separated whole numbers, each in [lo, hi] ('10,20,50' -> [10, 20, 50])."""
    def check(text: str) -> list:
        try:
            vals = [int(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 10,20,50") from None
        if not vals and not allow_empty:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one number, e.g. 10,20,50")
        bad = [v for v in vals if not lo <= v <= hi]
        if bad:
            raise argparse.ArgumentTypeError(f"{text!r}: each number must lie in [{lo}, {hi}], got {bad[0]}")
        return vals

    check.__name__ = "int_list"
    return check


def float_pair(text: str) -> tuple:
    """A parse-time type: two finite numbers 'A,B'."""
    parts = str(text).split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give two numbers separated by a comma, no space (a first number "
                                         f"below 0 needs '=': --option=-0.001,1.02)")
    return tuple(finite_float(v.strip()) for v in parts)


def name_list(text: str) -> list:
    """'ddpm, ddim' -> ['ddpm', 'ddim'] (at least one name)."""
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one name")
    return names


MAX_STEPS = 100_000      # sampling steps of one run
MAX_SAMPLES = 10_000_000  # samples per seed set / run (= MAX_SEEDS)
MAX_SEED_OFFSET = 10**9   # --seed of measure / calibrate: derived seed sets stay below 2^63 (distinct
# modulo 2^32 within a run, which check_seeds requires)


SEED_BOUND = ("2^32 - 1: torch's CPU generator keeps only the low 32 bits of a seed, so a larger one repeats a "
              "smaller one")


def seed_value(text: str) -> int:
    """A seed for torch.Generator: a whole number in [0, 2^32 − 1] (the bits the CPU generator keeps)."""
    from ..samplers.common import SEED_PERIOD

    v = _int(text)
    if not 0 <= v < SEED_PERIOD:
        raise argparse.ArgumentTypeError(f"{text!r}: give a seed from 0 to {SEED_PERIOD - 1} ({SEED_BOUND})")
    return v


def device_arg(text: str) -> str:
    """A parse-time type: a torch device this machine has (cpu, cuda, cuda:N, mps, xpu)."""
    from ..devices import check_device

    try:
        check_device(text, hint="--device cpu")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(text).strip()


def add_device_arg(p, default: str = "cpu") -> None:
    p.add_argument("--device", type=device_arg, default=default,
                   help=f"torch device: cpu, cuda, cuda:N or mps (default {default}; under torchrun, cuda means "
                        "each process's own GPU)")


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
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=steps_default,
                   help=f"sampling steps (default {steps_default}; Heun: 2N-1 network evaluations)")
    p.add_argument("--spacing", choices=SPACINGS, default="adm",
                   help="timestep respacing for ddpm/ddim (default adm: guided-diffusion's space_timesteps; "
                        "linspace, leading, trailing: diffusers' timestep_spacing)")
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
                               help=f"{users}: do not clip the x0 estimate (default: the model's own clipping, "
                                    f"[-1, 1] unless a diffusers scheduler says clip_sample=False or another "
                                    f"clip_sample_range)")
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
    from ..core.scaling import ADAPT_MODES

    g = p.add_mutually_exclusive_group()
    g.add_argument("--es", type=positive_float, metavar="B", help="Epsilon Scaling with uniform λ = B")
    g.add_argument("--es-linear", type=float_pair, metavar="K,B",
                   help="Epsilon Scaling with λ_t = K·t + B (t = 0 is the last step; e.g. 0.0025,1.0; a negative K "
                        "needs '=': --es-linear=-0.001,1.02)")
    g.add_argument("--es-schedule", metavar="FILE.json", help="Epsilon Scaling schedule from a JSON file "
                                                             "(e.g. written by `diffusion-es calibrate`)")
    p.add_argument("--es-adapt", choices=ADAPT_MODES, default=None,
                   help="use an --es-schedule made for another sampler or step count: stretch (the same λ curve "
                        "from the first to the last step) or index (the same λ per step index t, t = 0 the last "
                        "step); without it such a schedule is refused")


def command_line(args) -> str:
    """The command as typed (``args.argv``, set by ``main``), without the options that change only what is shown
    (``--json``, ``--no-progress``): the provenance line of a report, which reruns (and resumes) the same job."""
    import shlex

    argv = [a for a in getattr(args, "argv", None) or [] if a not in ("--json", "--no-progress")]
    return "diffusion-es " + shlex.join(argv) if argv else ""


def schedule_made_for(args, model=None) -> dict:
    """The sampling setting of ``args`` as a λ schedule records it (spacing only for the VP samplers), and with
    ``model`` (a loaded model) its weights hash."""
    from ..samplers import get_sampler

    d = {"sampler": args.sampler, "steps": int(args.steps)}
    if get_sampler(args.sampler).grid == "vp":
        d["spacing"] = args.spacing
    if model is not None:
        from ..experiments.common import weights_id

        d["weights"] = weights_id(model)
    return d


LAMBDA_NOTE = (0.25, 4.0)  # λ outside this range gets a note (the widest calibrated schedules here: 0.40-1.55)


def es_from_args(args, model=None, quiet: bool = False):
    """The λ schedule the ES options ask for, or None; checked against the run's sampler and steps (when the
    command has them) before any work: a schedule file made for another setting is refused unless --es-adapt
    says how to adapt it, and every λ of the run must be finite and > 0."""
    from ..core.scaling import Linear, Uniform, adapt_schedule, read_schedule, schedule_mismatch

    adapt = getattr(args, "es_adapt", None)
    has_run = getattr(args, "sampler", None) is not None and getattr(args, "steps", None) is not None
    es = None
    try:
        if getattr(args, "es", None) is not None:
            es = Uniform(args.es)
        elif getattr(args, "es_linear", None):
            k, b = args.es_linear if isinstance(args.es_linear, tuple) else float_pair(args.es_linear)
            es = Linear(k, b)
        elif getattr(args, "es_schedule", None):
            es, made_for = read_schedule(args.es_schedule)
            from ..experiments.common import weights_id

            if model is not None and (made_for or {}).get("weights") not in (None, weights_id(model)):
                raise UsageError(f"--es-schedule {args.es_schedule}: calibrated on another model (weights "
                                 f"{made_for['weights']}, this one {weights_id(model)}); λ depends on the model: "
                                 f"calibrate for this one, or give its λ by hand with --es / --es-linear")
            if has_run:
                run = schedule_made_for(args)
                diff = schedule_mismatch(made_for, run["sampler"], run["steps"], run.get("spacing"))
                if diff and adapt is None:
                    raise UsageError(
                        f"--es-schedule {args.es_schedule}: made for {made_for['sampler']} with {made_for['steps']} "
                        f"steps ({diff}); calibrate for this setting, or pass --es-adapt stretch (the same λ curve "
                        "over the run) or --es-adapt index (the same λ per step index)")
                if diff:
                    es = adapt_schedule(es, made_for["steps"], run["steps"], adapt)
        if adapt is not None and not getattr(args, "es_schedule", None):
            raise UsageError("--es-adapt applies to --es-schedule only")
        if es is not None and has_run:
            lams = es.values(int(args.steps))  # every λ of this run finite and > 0, one per step
            lo, hi = float(min(lams)), float(max(lams))
            if (lo < LAMBDA_NOTE[0] or hi > LAMBDA_NOTE[1]) and not quiet:  # allowed (λ is the user's choice), but
                # said once (quiet: the other ranks of a torchrun launch)
                print(f"note: {_es_flag(args)} gives λ from {lo:.4g} to {hi:.4g}, far from 1 (the paper's λ are "
                      "1.0-1.02; ε is divided by λ): expect saturated or blank samples", file=sys.stderr)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--es-linear: {e}") from None
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{_es_flag(args)}: {e}") from None
    return es


def _es_flag(args) -> str:
    for flag in ("es", "es_linear", "es_schedule"):
        if getattr(args, flag, None) is not None:
            return "--" + flag.replace("_", "-")
    return "--es"


# ---- progress ------------------------------------------------------------------------------------------------
PROGRESS_DELAY = 1.0  # seconds before a bar appears: quick commands (and errors found up front) print no bar


def add_min_lambda_arg(p) -> None:
    p.add_argument("--min-lambda", type=positive_float, default=None, metavar="L",
                   help="no λ_t below L at any step (1: Epsilon Scaling in the paper's sense only, which shrinks the "
                        "predicted noise; the search then never picks the λ < 1 that trades recall for precision)")


def add_progress_arg(p) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the bar, with its ETA, goes to stderr, never into --json output)")


def progress_bar(total, desc: str, unit: str = "sample", disable: bool = False):
    """A tqdm bar on stderr with rate and ETA, shown after PROGRESS_DELAY seconds, cleared when done; refreshed
    at most twice a minute where stderr is a file (:func:`diffusion_es.progress.bar_interval`)."""
    from tqdm import tqdm

    from ..progress import bar_interval

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=disable,
                delay=PROGRESS_DELAY, dynamic_ncols=True, mininterval=bar_interval(sys.stderr))


@contextlib.contextmanager
def job_progress(args, desc: str, unit: str = "sample", show: bool = True):
    """One bar for a whole command, fed by what the library reports (:mod:`diffusion_es.progress`): its total is
    the work announced so far (e.g. a calibration's search), so the ETA holds inside every long part.
    ``--no-progress`` (or ``show=False``, e.g. on ranks other than 0) turns it off."""
    from ..progress import Meter, tracking

    bar = progress_bar(None, desc, unit, disable=bool(getattr(args, "no_progress", False)) or not show)

    def changed(done: int, total: int) -> None:
        if bar.disable:
            return
        if total != bar.total:  # no refresh() here: it would draw the bar before its delay (quick commands)
            bar.total = total
        bar.update(done - bar.n)

    try:
        with tracking(Meter(changed)):
            yield bar
    finally:
        bar.close()


def note(bar, msg: str) -> None:
    """A line on stderr that does not break the progress bar."""
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr)
