"""``diffusion-es measure``: the paper's exposure-bias diagnostics on a model, with and without ES."""

from __future__ import annotations


from ..errors import UsageError
from .common import (MAX_SAMPLES, MAX_SEED_OFFSET, add_es_args, add_model_args, add_progress_arg, add_sampler_args,
                     add_threads_arg, es_from_args, int_in, job_progress, load_model_arg, plain_help, print_json,
                     sampler_kwargs, schedule_arg)


def register(sub):
    p = sub.add_parser("measure", help="ε-norm gap, δ_t and Var(x_t) along sampling vs training (tables + plots)",
                       description=plain_help(__doc__))
    add_model_args(p)
    p.add_argument("--data", default=None,
                   help="real data the model was trained on (default: the data recorded in its config.json, else digits)")
    add_sampler_args(p)
    add_es_args(p)
    p.add_argument("--n", type=int_in(2, MAX_SAMPLES), default=500, help="samples per run (default 500; at least 2)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED_OFFSET), default=0, help="seed offset (default 0)")
    p.add_argument("--out", default="measure_out", help="output folder (default measure_out)")
    add_threads_arg(p)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io import check_output
    from ..store import output_lock

    if args.steps < 2:  # the λ estimate fits a line over the steps
        raise UsageError(f"--steps must be at least 2 for measure (the λ estimate fits over the steps), got {args.steps}")
    out = check_output(args.out, "dir", command="measure")
    with output_lock(out):  # one writer per output folder
        return _measure(args, out)


def _measure(args, out) -> int:
    from ..data import load_dataset
    from ..diagnostics.measure import estimate_lambda, measure_exposure, plot_exposure
    from ..io import write_json

    model, den = load_model_arg(args.model)
    from ..experiments.common import model_data

    ds = load_dataset(model_data(model, args.data))
    es = es_from_args(args, model)
    kw = sampler_kwargs(args)
    tag = f"{args.sampler}{args.steps}"
    runs = [None] + ([es] if es is not None else [])
    curves = []
    with job_progress(args, f"measure {tag}"):
        for sched in runs:
            curves.append(measure_exposure(den, ds.train, args.sampler, args.steps, schedule=schedule_arg(args, model),
                                           es=sched, n_samples=args.n, seed=args.seed, shape=model.data_shape,
                                           spacing=args.spacing, **kw))
    est = {k: estimate_lambda(curves[0], k).to_dict() for k in ("uniform", "linear")}
    # every number is computed before the first file is written: a failure leaves no partial output
    files = []
    for c in curves:
        name = f"exposure_{tag}_{'baseline' if c.es is None else 'es'}"
        write_json(out / f"{name}.json", c.to_dict())
        c.write_csv(out / f"{name}.csv")
        files += [out / f"{name}.json", out / f"{name}.csv"]
    if es is None:  # an earlier run's ES curves of this setting would sit beside this baseline as if they were its
        for stale in (out / f"exposure_{tag}_es.json", out / f"exposure_{tag}_es.csv"):
            stale.unlink(missing_ok=True)
    plot_exposure(curves, out / f"exposure_{tag}.png")
    files += [out / f"exposure_{tag}.png", out / f"exposure_{tag}_summary.json"]
    summary = {"model": str(args.model), "sampler": args.sampler, "steps": args.steps,
               "runs": [c.summary() for c in curves], "metric_free_lambda": est,
               "files": sorted(str(p) for p in files)}  # this run's files only
    write_json(out / f"exposure_{tag}_summary.json", summary)
    if args.json:
        print_json(summary)
        return 0
    b = curves[0]
    print(f"{args.sampler}, {args.steps} steps, {args.n} samples; ε-norm along sampling / on training inputs:")
    head = f"{'step':>4s} {'sigma':>9s} {'train':>8s} {'sample':>8s} {'ratio':>7s}"
    if es is not None:
        head += f" {'ES raw':>8s} {'ES used':>8s} {'ratio':>7s}"
    print(head + f" {'δ_t':>10s}")
    for i in range(len(b.sigma)):
        line = (f"{i:4d} {b.sigma[i]:9.4g} {b.eps_norm_train[i]:8.3f} {b.eps_norm_sample_raw[i]:8.3f} "
                f"{b.ratio_raw[i]:7.4f}")
        if es is not None:
            e = curves[1]
            line += f" {e.eps_norm_sample_raw[i]:8.3f} {e.eps_norm_sample_used[i]:8.3f} {e.ratio_used[i]:7.4f}"
        print(line + f" {b.delta[i]:10.3g}")
    s = b.summary()
    print(f"mean ratio {s['mean_ratio_raw']:.4f}; sampling above training at "
          f"{100 * s['frac_steps_sampling_above_training']:.0f} % of steps")
    print(f"metric-free λ estimate: uniform b = {est['uniform']['b']:.4f}; "
          f"linear k = {est['linear']['k']:.3g}, b = {est['linear']['b']:.4f}")
    print(f"wrote {out}/exposure_{tag}_*.json|csv and exposure_{tag}.png")
    return 0
