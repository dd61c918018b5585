"""``diffusion-es calibrate``: choose λ automatically for a model, sampler and step count.

Candidates are compared on identical noise (paired seeds) over several seed sets with a coarse-to-fine search;
the chosen schedule's gain over λ = 1 is measured on fresh seed sets. If no λ beats the baseline beyond the
noise, it says so and writes the result without a schedule. With ``--out``, every candidate's score is kept in
``OUT.parts/`` until the result is written: an interrupted run, started again with the same arguments, scores only
what is missing.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
from pathlib import Path

from ..errors import UsageError
from .common import (BATCH_HELP, MAX_SAMPLES, MAX_SEED_OFFSET, add_min_lambda_arg, add_model_args, add_progress_arg,
                     add_sampler_args, add_threads_arg, float_pair, int_in, job_progress, load_model_arg, note,
                     plain_help, print_json, sampler_kwargs, schedule_arg, schedule_made_for)


def register(sub):
    p = sub.add_parser("calibrate", help="find the λ schedule that minimises FD, with its gain and uncertainty",
                       description=plain_help(__doc__))
    add_model_args(p)
    p.add_argument("--data", default=None,
                   help="the model's training data (default: the data recorded in the model's config.json, else digits)")
    add_sampler_args(p)
    p.add_argument("--kind", choices=("uniform", "linear"), default="uniform", help="schedule family")
    p.add_argument("--range", type=float_pair, default=(0.99, 1.03), metavar="LO,HI",
                   help="λ search range (default 0.99,1.03; written LO,HI with no space)")
    p.add_argument("--n", type=int_in(2, MAX_SAMPLES), default=500, help="samples per seed set (default 500)")
    p.add_argument("--sets", type=int_in(1, 1000), default=3, help="search seed sets (default 3)")
    p.add_argument("--val-sets", type=int_in(2, 1000), default=3, help="fresh seed sets for the gain (default 3)")
    p.add_argument("--coarse", type=int_in(2, 1000), default=5, help="coarse grid points (default 5)")
    p.add_argument("--refine", type=int_in(0, 50), default=3, help="refinement rounds (default 3)")
    p.add_argument("--extend", type=int_in(0, 50), default=6, metavar="N",
                   help="steps (doubling in size) the search may take past an end of --range, or of the slope's "
                        "range, while that end keeps winning (default 6: up to 63 coarse steps; 0: stay inside)")
    add_min_lambda_arg(p)
    p.add_argument("--ref", default="heldout",
                   help="FD reference: heldout (default: data the model never saw), train, all or a reference .npz")
    p.add_argument("--features", default=None, choices=("digits", "mnist", "inception"),
                   help="feature network (default: by dataset)")
    p.add_argument("--inception", default=None, help="Inception TorchScript file for --features inception")
    p.add_argument("--seed", type=int_in(0, MAX_SEED_OFFSET), default=0, help="seed-set offset (default 0)")
    p.add_argument("--batch-size", type=int_in(1, 1_000_000), default=None, help=BATCH_HELP)
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the result here, with the sampler, steps and model weights it was made for "
                        "(readable by `sample --es-schedule`); its schedule is null when no λ beat λ = 1. "
                        "Scores are kept in FILE.parts/ meanwhile: an interrupted run resumes")
    add_threads_arg(p)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON (progress stays on stderr)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..distributed import session

    with session() as ctx:  # one process, or one rank of a torchrun launch
        return _run(args, ctx)


def _run(args, ctx) -> int:
    from ..io import check_output
    from ..metrics.quality import build_metric
    from ..metrics.sharded import ShardedMetric

    if args.out is not None:  # (an empty --out is refused, as everywhere: it wrote nothing and said so nowhere)
        check_output(args.out, "file", (".json",))
        args.keeps_work = True  # the interrupt line: with --out a rerun resumes, even if stopped while loading
    model, den = load_model_arg(args.model)
    from ..samplers import resolve_batch_size

    args.batch_size = resolve_batch_size(args.batch_size, den, model.data_shape)  # calibrate runs on the CPU
    from ..experiments.common import model_data

    data = model_data(model, args.data)
    metric = build_metric(data, args.ref, args.features, args.inception, shape=model.data_shape)
    if ctx.is_distributed:  # each rank samples its part of every seed set; the metric combines the parts
        if args.n < ctx.world_size:
            raise UsageError(f"--n {args.n} is smaller than the {ctx.world_size} processes; give each one a sample")
        metric = ShardedMetric(ctx, metric)

    with contextlib.ExitStack() as stack:
        store, parts = None, None
        if args.out:  # each candidate's scores kept beside the output until it is written
            from ..experiments.common import inputs_key
            from ..store import PartStore, output_lock

            stack.enter_context(output_lock(args.out, enabled=ctx.is_main))
            parts = Path(str(args.out) + ".parts")
            if ctx.is_main:
                stack.callback(lambda: parts.exists() and not any(parts.iterdir()) and parts.rmdir())  # none scored
            # what a score depends on besides the sampling setting (which calibrate adds to each key itself)
            # under torchrun rank 0 writes the scores, and every rank serves only those that existed when it
            # started: they all agree on which candidates to sample (a score is the same number from any world
            # size, up to float rounding of the combined statistics)
            store = PartStore(parts.parent, {**inputs_key(model, data, args.ref, args.inception), "job": "calibrate",
                                             "version": 1, "features": args.features, "metric": metric.name},
                              subdir=parts.name, writer=ctx.is_main, snapshot=ctx.is_distributed)
            kept = sum(1 for _ in parts.glob("*.json")) if parts.is_dir() else 0
            if kept and ctx.is_main:  # (sample says "resuming: N of M seeds"; repro marks parts "(cached)")
                print(f"resuming: {parts} holds {kept} score(s) of an interrupted run; those made with these "
                      f"settings are reused", file=sys.stderr)
        r = _search(args, ctx, model, den, metric, store)
        if not ctx.is_main:
            return 0
        _report(args, model, r)
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)  # the result is written: its scores are not needed any more
    return 0


def _search(args, ctx, model, den, metric, store):
    """The calibration itself, with one line per scored candidate above the progress bar."""
    from ..diagnostics.calibrate import calibrate
    from ..distributed import seed_splitter

    with job_progress(args, f"calibrate {args.sampler}-{args.steps}", show=ctx.is_main) as bar:
        def candidate(ev):  # one line per evaluated candidate (not with --json), above the bar
            lab = "λ = 1" if ev["schedule"] is None else ", ".join(
                f"{k}={v:.5g}" for k, v in ev["schedule"].items() if k != "kind")
            note(bar, f"  {lab:32s} {metric.name}: {ev['mean']:.4f}")

        lo, hi = args.range
        return calibrate(den, args.sampler, args.steps, model.data_shape, metric, kind=args.kind, lam_range=(lo, hi),
                         n_samples=args.n, n_sets=args.sets, n_val_sets=args.val_sets, coarse=args.coarse,
                         refine=args.refine, max_extend=args.extend, seed=args.seed,
                         schedule=schedule_arg(args, model), min_lambda=args.min_lambda, batch_size=args.batch_size,
                         metric_name=metric.name, progress=None if args.json or not ctx.is_main else candidate,
                         shard=seed_splitter(ctx, args.batch_size), spacing=args.spacing, store=store,
                         **sampler_kwargs(args))


def _report(args, model, r) -> None:
    """The result file (with or without a schedule) and the summary."""
    from ..core.scaling import save_schedule, schedule_from_dict
    from ..io import write_json

    d = r.to_dict()
    d["model"] = str(args.model)
    if args.out and r.significant:
        save_schedule(args.out, schedule_from_dict(r.schedule), **schedule_made_for(args, model), calibration=d)
    elif args.out:  # written all the same: an older λ file at this path would otherwise be taken for this result
        write_json(args.out, {"schedule": None, "made_for": schedule_made_for(args, model),
                              "candidate": d.get("candidate"), "calibration": d})
    if args.json:
        print_json(d)
        return
    print(r.message)
    print(f"cost: {r.nfe:,} network evaluations ({len(r.evaluations)} candidates x {args.sets} sets x {args.n} "
          f"samples, plus validation)"
          + (f"; λ spread over search sets: {r.lam_spread:.4g}" if math.isfinite(r.lam_spread) else ""))
    if args.out:
        print(f"wrote {args.out}" if r.significant else
              f"wrote {args.out} without a schedule: none beat λ = 1 (sample without ES)")
