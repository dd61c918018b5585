"""``diffusion-es repro``: the paper's findings reproduced on the shipped digits model (or yours), offline.

Writes report.md, report.html, results.json and PNG figures into --out. Resumable: finished parts are kept in
--out/parts and skipped when the same command runs again.
"""

from __future__ import annotations

import sys

from .common import add_threads_arg, parse_int_list, print_json


def register(sub):
    p = sub.add_parser("repro", help="reproduce the paper's findings on our model: tables, figures, claims",
                       description=__doc__)
    p.add_argument("--quick", action="store_true", help="the small version (about 3 minutes on 2 CPU cores)")
    p.add_argument("--out", default="repro_out", help="output folder (default repro_out)")
    p.add_argument("--model", default="default", help="checkpoint folder or 'default' (the shipped digits model)")
    p.add_argument("--data", default=None,
                   help="the model's data (default: the data recorded in the model's config.json, else digits)")
    p.add_argument("--seeds", type=int, default=None, metavar="K",
                   help="validation seed sets per cell, for the spread (default 3)")
    p.add_argument("--samples", type=int, default=None, help="samples per seed set (default 500; quick 200)")
    p.add_argument("--nfe", default=None, help="network-evaluation columns (default 10,20,50,100; quick 10,20)")
    p.add_argument("--samplers", default="ddpm,ddim,euler,heun", help="rows (default ddpm,ddim,euler,heun)")
    p.add_argument("--ref", default="heldout",
                   help="FD reference: heldout (default: data the model never saw), train, all or a reference .npz")
    p.add_argument("--features", default=None, help="feature network: digits, mnist or inception")
    p.add_argument("--inception", default=None, help="Inception TorchScript file (for --features inception)")
    p.add_argument("--compare", action="store_true",
                   help="add the comparison with time-shift sampling, EDM S_noise and input perturbation (issue 9)")
    p.add_argument("--device", default="cpu", help="torch device (cuda for a GPU)")
    add_threads_arg(p)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print results.json's summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..experiments.repro import ReproConfig, run_repro

    cfg = ReproConfig(model=args.model, data=args.data, out=args.out, quick=args.quick,
                      samplers=[s.strip() for s in args.samplers.split(",") if s.strip()],
                      nfe=parse_int_list(args.nfe, "--nfe") if args.nfe else None, n_samples=args.samples,
                      n_val_sets=args.seeds, ref=args.ref, features=args.features, inception=args.inception,
                      device=args.device, batch_size=args.batch_size, compare=args.compare)
    res = run_repro(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print_json({"claims": res["claims"], "wall_time_s": res["wall_time_s"], "compute_time_s": res["compute_time_s"],
                    "out": args.out})
        return 0
    print(f"wrote {args.out}/report.md, report.html, results.json ({res['wall_time_s'] / 60:.1f} min)")
    for c in res["claims"]:
        mark = {True: "reproduced", False: "NOT reproduced", None: "inconclusive"}[c["reproduced"]]
        print(f"  [{mark}] {c['claim']}: {c['evidence']}")
    return 0
