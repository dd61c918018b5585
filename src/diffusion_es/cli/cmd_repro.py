"""``diffusion-es repro``: the paper's findings reproduced on the shipped digits model (or yours), offline.

Writes report.md, report.html, results.json and PNG figures into --out. Resumable: finished parts are kept in
--out/parts and skipped when the same command runs again.
"""

from __future__ import annotations

from .common import (BATCH_HELP, MAX_SAMPLES, add_device_arg, add_min_lambda_arg, add_model_args, add_progress_arg,
                     add_threads_arg, command_line, int_in, int_list, job_progress, name_list, note, plain_help,
                     print_json)


def register(sub):
    p = sub.add_parser("repro", help="reproduce the paper's findings on our model: tables, figures, claims",
                       description=plain_help(__doc__))
    p.add_argument("--quick", action="store_true",
                   help="the small version (digits about 2-3 min, --model mnist about 10 min, on one CPU core)")
    p.add_argument("--out", default="repro_out", help="output folder (default repro_out)")
    add_model_args(p)
    p.add_argument("--data", default=None,
                   help="the model's data (default: the data recorded in the model's config.json, else digits)")
    p.add_argument("--seeds", type=int_in(2, 1000), default=None, metavar="K",
                   help="validation seed sets per cell, for the spread (default: from the power step)")
    p.add_argument("--samples", type=int_in(10, MAX_SAMPLES), default=None,
                   help="samples per seed set (default: by dataset profile)")
    p.add_argument("--nfe", type=int_list(2, 100_000), default=None,
                   help="network-evaluation columns (default: by dataset profile); Heun costs 2N - 1 for N steps, so an "
                        "even column runs Heun one evaluation above it (10: Heun-11), named so in the report")
    p.add_argument("--samplers", type=name_list, default=None,
                   help="rows (default: the dataset profile's that fit the model: ddpm,ddim,euler,heun, mnist --quick "
                        "ddpm,ddim; an EDM / PFGM++ model euler,heun; a flow model flow_euler,flow_heun)")
    p.add_argument("--ref", default="heldout",
                   help="FD reference: heldout (default: data the model never saw), train, all or a reference .npz")
    p.add_argument("--features", default=None, choices=("digits", "mnist", "inception"),
                   help="feature network (default: by dataset)")
    p.add_argument("--inception", default=None, help="Inception TorchScript file (for --features inception)")
    p.add_argument("--compare", action="store_true",
                   help="add the comparison with time-shift sampling, EDM S_noise and input perturbation")
    add_min_lambda_arg(p)
    add_device_arg(p)
    add_threads_arg(p)
    p.add_argument("--batch-size", type=int_in(1, 1_000_000), default=None, help=BATCH_HELP)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print results.json's summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiments.repro import ReproConfig, run_repro
    from ..io import check_output

    check_output(args.out, "dir", command="repro")
    cfg = ReproConfig(model=args.model, data=args.data, out=args.out, quick=args.quick,
                      samplers=args.samplers,
                      nfe=args.nfe, n_samples=args.samples,
                      n_val_sets=args.seeds, ref=args.ref, features=args.features, inception=args.inception,
                      device=args.device, batch_size=args.batch_size, compare=args.compare,
                      min_lambda=args.min_lambda, command=command_line(args))
    from ..store import output_lock

    with output_lock(args.out), job_progress(args, "repro") as bar:  # one writer per output folder
        res = run_repro(cfg, log=lambda m: note(bar, m))
    if args.json:
        print_json({"claims": res["claims"], "wall_time_s": res["wall_time_s"], "compute_time_s": res["compute_time_s"],
                    "out": args.out})
        return 0
    print(f"wrote {args.out}/report.md, report.html, results.json ({res['wall_time_s'] / 60:.1f} min)")
    for c in res["claims"]:
        mark = {True: "reproduced", False: "NOT reproduced", None: "inconclusive"}[c["reproduced"]]
        print(f"  [{mark}] {c['claim']}: {c['evidence']}")
    return 0
