"""``diffusion-es compare``: Epsilon Scaling against Time-Shift sampling, EDM's S_churn / S_noise and DDPM-IP
training, on the same model, seeds and metric (paired). Resumable: finished parts are kept in --out/parts.

Writes compare.md, compare.html and results_compare.json into --out.
"""

from __future__ import annotations

from .common import (BATCH_HELP, MAX_SAMPLES, add_device_arg, add_model_args, add_progress_arg, add_threads_arg,
                     command_line, int_in, int_list, job_progress, name_list, note, plain_help, print_json)


def _names(text):
    return name_list(text) if isinstance(text, str) else list(text)


def register(sub):
    p = sub.add_parser("compare", help="compare ES with time-shift sampling, S_churn/S_noise and IP training",
                       description=plain_help(__doc__))
    p.add_argument("--quick", action="store_true", help="the small version (fewer cells and samples)")
    p.add_argument("--out", default="compare_out", help="output folder (default compare_out)")
    add_model_args(p)
    p.add_argument("--ip-model", default="auto", metavar="PATH|auto|none",
                   help="the DDPM-IP model (auto: the shipped digits_ip with the default model)")
    p.add_argument("--train-ip", action="store_true",
                   help="without an IP model, train one into OUT/ip_model with the model's own recipe and "
                        "ip_gamma 0.1 (slow on a CPU: as long as the model's own training)")
    p.add_argument("--data", default=None,
                   help="the model's data (default: the data recorded in the model's config.json, else digits)")
    p.add_argument("--samplers", type=name_list, default=None,
                   help="VP rows (default ddpm,ddim; none for an EDM / PFGM++ model; 'none' to skip)")
    p.add_argument("--edm-samplers", default="euler,heun", help="EDM rows with churn (default euler,heun; "
                                                                "'none' to skip)")
    p.add_argument("--steps", type=int_list(2, 100_000), default=None,
                   help="VP step counts (default: by dataset profile; digits 10,20,50, mnist 10,20; quick 10,20)")
    p.add_argument("--edm-nfe", type=int_list(2, 100_000), default=None,
                   help="EDM network evaluations (default 10,20; quick 10); Heun costs 2N - 1 for N steps, so an even "
                        "value runs Heun one evaluation above it (10: Heun-11)")
    p.add_argument("--samples", type=int_in(10, MAX_SAMPLES), default=None,
                   help="samples per seed set (default: by dataset profile; digits 500, quick 200; mnist 1000, "
                        "quick 250)")
    p.add_argument("--seeds", type=int_in(2, 1000), default=None, metavar="K",
                   help="validation seed sets (default: by dataset profile; digits 3, mnist 4, quick 3)")
    p.add_argument("--ts-rule", default="data", choices=("data", "paper"),
                   help="time-shift variance rule: data = ᾱ·Var(x_0) + 1 − ᾱ (default), paper = 1 − ᾱ")
    p.add_argument("--ref", default="heldout",
                   help="FD reference: heldout (default: data the model never saw), train, all or a reference .npz")
    add_device_arg(p)
    p.add_argument("--batch-size", type=int_in(1, 1_000_000), default=None, help=BATCH_HELP)
    add_threads_arg(p, default=1)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiments.compare import CompareConfig, run_compare
    from ..io import check_output

    check_output(args.out, "dir", command="compare")
    edm = [] if args.edm_samplers.strip().lower() == "none" else _names(args.edm_samplers)
    vp = None if args.samplers is None else [] if [s.lower() for s in args.samplers] == ["none"] else args.samplers
    ip = None if str(args.ip_model).lower() == "none" else args.ip_model
    cfg = CompareConfig(model=args.model, ip_model=ip, train_ip=args.train_ip, data=args.data, out=args.out,
                        quick=args.quick, samplers=vp, edm_samplers=edm,
                        steps=args.steps, edm_nfe=args.edm_nfe,
                        n_samples=args.samples, n_val_sets=args.seeds, ts_rule=args.ts_rule, ref=args.ref,
                        device=args.device, batch_size=args.batch_size, command=command_line(args))
    from ..store import output_lock

    with output_lock(args.out), job_progress(args, "compare") as bar:  # one writer per output folder
        res = run_compare(cfg, log=lambda m: note(bar, m))
    summary = [{"sampler": c["sampler"], "steps": c["steps"], "nfe": c["nfe"],
                "methods": {k: {"mean": sum(m["val"]) / len(m["val"]), "gain": m["gain"],
                                "significant": m["significant"], "param": m["param"]}
                            for k, m in c["methods"].items()}} for c in res["cells"]]
    if args.json:
        print_json({"cells": summary, "wall_time_s": res["wall_time_s"], "compute_time_s": res["compute_time_s"],
                    "out": args.out})
        return 0
    print(f"wrote {args.out}/compare.md, compare.html, results_compare.json ({res['wall_time_s'] / 60:.1f} min)")
    for c in summary:
        base = c["methods"]["baseline"]["mean"]
        best = min(c["methods"], key=lambda k: c["methods"][k]["mean"])
        print(f"  {c['sampler']:5s} {c['nfe']:3d} NFE: baseline {base:.3f}; best {best} "
              f"{c['methods'][best]['mean']:.3f} ({100 * c['methods'][best]['gain']:+.1f} %)")
    return 0
