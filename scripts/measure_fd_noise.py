"""Measure where the seed-set noise of FD comes from on the shipped digits model, and what a 3 % change at 20 steps
needs (issue 16, items 3 and 5). Writes the numbers quoted in docs/metrics.md.

    python scripts/measure_fd_noise.py sample  --out runs/fd_noise      # features of K seed sets x 2 arms (cached)
    python scripts/measure_fd_noise.py analyse --out runs/fd_noise      # variance decomposition, KID, FD∞, power
    python scripts/measure_fd_noise.py plan    --out runs/fd_noise      # power plans from fd_noise.json only

Sampling: DDPM-20 (baseline vs uniform λ = 1.02) and DDIM-20 (baseline vs λ = 1.01), ``--sets`` disjoint seed
sets of ``--n`` samples each, same seeds for both arms; features of the shipped digits classifier (128-d).
References: the 360 held-out digits (primary) and the 1,437 training digits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ARMS = {"ddpm": 1.02, "ddim": 1.01}


def do_sample(out: Path, n: int, sets: int, seed: int):
    import torch

    from diffusion_es import sample
    from diffusion_es.experiments.common import load_model_and_data, seed_sets
    from diffusion_es.metrics.quality import build_metric

    torch.set_num_threads(1)
    model, den, ds = load_model_and_data("default", "digits")
    metric = build_metric("digits", "heldout")
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "ref.npz", heldout=metric.features(ds.heldout), train=metric.features(ds.train))
    t0 = time.time()
    for sampler, lam in ARMS.items():
        path = out / f"{sampler}.npz"
        if path.exists():
            continue
        feats = {"base": [], "es": []}
        for k, seeds in enumerate(seed_sets(seed, n, sets)):
            for arm, es in (("base", None), ("es", lam)):
                x = sample(den, sampler, steps=20, shape=model.data_shape, seeds=seeds, es=es, batch_size=500)
                feats[arm].append(metric.features(x))
            print(f"{sampler} set {k + 1}/{sets}  {time.time() - t0:.0f} s", flush=True)
        np.savez(path, base=np.stack(feats["base"]), es=np.stack(feats["es"]), lam=lam, n=n)
    print(f"sampling took {time.time() - t0:.0f} s", flush=True)


def analyse(out: Path, n0: int = 500, effect: float = 0.03):
    from diffusion_es.experiments.power import fit_sd_scaling, power_plan
    from diffusion_es.metrics import FeatureStats, fd_infinity, fd_variance_decomposition, kid
    from diffusion_es.metrics.bootstrap import bootstrap_fd_difference
    from diffusion_es.metrics.fd_fixed_ref import FixedRefFD
    from diffusion_es.metrics.variance import paired_sd_by_size

    refs = dict(np.load(out / "ref.npz"))
    report = {}
    for sampler in ARMS:
        z = np.load(out / f"{sampler}.npz")
        base, es, n = z["base"], z["es"], int(z["n"])
        k_sets = len(base)
        sizes = [s for s in (250, 500, 1000, 2000, 4000) if s <= n]
        for ref_name, ref in refs.items():
            r = {"n": n, "sets": k_sets, "lambda": float(z["lam"]), "n_ref": len(ref)}
            rstats = FeatureStats.from_features(ref)
            fd = FixedRefFD(rstats)
            for m in sizes:
                fb = np.array([fd.of_features(b[:m]) for b in base])
                fe = np.array([fd.of_features(e[:m]) for e in es])
                g = fe / fb - 1
                r[f"fd_base_{m}"] = [float(fb.mean()), float(fb.std(ddof=1)), float(fb.min()), float(fb.max())]
                r[f"rel_{m}"] = [float(g.mean()), float(g.std(ddof=1))]
            r["sd_by_n"] = paired_sd_by_size(base, es, rstats, sizes)
            a, b = fit_sd_scaling(r["sd_by_n"])
            r["fit_a_b"] = [a, b]
            # where the noise comes from: FD of the baseline, and the paired relative difference, at n0 and n
            for m in sorted({n0, n}):
                fd_dec = fd_variance_decomposition(lambda s: base[s[0]][:m], ref, [[k] for k in range(k_sets)],
                                                   n_boot=200, generator=np.random.default_rng(0))
                rel_dec = fd_variance_decomposition(lambda s: (base[s[0]][:m], es[s[0]][:m]), ref,
                                                    [[k] for k in range(k_sets)], n_boot=200,
                                                    generator=np.random.default_rng(0))
                r[f"decomp_fd_{m}"] = {k: v for k, v in fd_dec.to_dict().items() if k != "per_set_ref_var"}
                r[f"decomp_rel_{m}"] = {k: v for k, v in rel_dec.to_dict().items() if k != "per_set_ref_var"}
            # FD∞ of the baseline per set, and KID (full unbiased estimate)
            infs = [fd_infinity(b, rstats, generator=np.random.default_rng(k)) for k, b in enumerate(base)]
            r["fd_inf"] = [float(np.mean([i.fd_inf for i in infs])), float(np.std([i.fd_inf for i in infs], ddof=1)),
                           float(np.mean([i.slope for i in infs]))]
            infe = [fd_infinity(e, rstats, generator=np.random.default_rng(k)) for k, e in enumerate(es)]
            gi = np.array([e.fd_inf / b.fd_inf - 1 for b, e in zip(infs, infe)])
            r["rel_fd_inf"] = [float(gi.mean()), float(gi.std(ddof=1))]
            for m in sorted({n0, n}):
                kb = np.array([kid(b[:m], ref, n_subsets=0).full for b in base])
                ke = np.array([kid(e[:m], ref, n_subsets=0).full for e in es])
                gk = ke / kb - 1
                r[f"kid_{m}"] = [float(kb.mean()), float(kb.std(ddof=1)), float(gk.mean()), float(gk.std(ddof=1))]
            # one set's bootstrap sd of the paired relative difference vs the spread over sets
            bt = bootstrap_fd_difference(base[0][:n0], es[0][:n0], ref, n_boot=300, generator=np.random.default_rng(0))
            r["boot_rel_se_one_set"] = bt.se
            # the power plan: 3 % change at 20 steps, sd measured at n0, scaling fitted over sizes
            sd0 = float(np.sqrt(a / n0 + b))
            plan = power_plan(effect, sd0, n0, floor=float(np.sqrt(b)), nfe_per_sample=20)
            plan_inf = power_plan(effect, sd0, n0, floor=float(np.sqrt(b)), nfe_per_sample=20,
                                  fd_inf=max(r["fd_inf"][0], 1e-6), fd_slope=max(r["fd_inf"][2], 0.0))
            ref_sd = float(np.sqrt(r[f"decomp_rel_{n0}"]["var_ref"]))
            plan_pop = power_plan(effect, sd0, n0, floor=float(np.sqrt(b)), nfe_per_sample=20, ref_sd=ref_sd)
            r["plan"] = plan.to_dict()
            r["plan_fd_inf"] = plan_inf.to_dict()
            r["plan_population"] = plan_pop.to_dict()
            report[f"{sampler}/{ref_name}"] = r
            print(f"\n== {sampler}-20, reference {ref_name} ({len(ref)}), {k_sets} sets x {n}")
            for m in sizes:
                print(f"  n={m:5d}  FD base {r[f'fd_base_{m}'][0]:.2f} ± {r[f'fd_base_{m}'][1]:.2f} "
                      f"[{r[f'fd_base_{m}'][2]:.1f}, {r[f'fd_base_{m}'][3]:.1f}]   paired rel {100 * r[f'rel_{m}'][0]:+.2f} %"
                      f" sd {100 * r[f'rel_{m}'][1]:.2f} %")
            print(f"  fit var = {a:.4g}/n + {b:.3g}   (floor sd {100 * np.sqrt(b):.2f} %)")
            for m in sorted({n0, n}):
                d1, d2 = r[f"decomp_fd_{m}"], r[f"decomp_rel_{m}"]
                print(f"  n={m}: FD var sets {d1['var_sets']:.3g} (boot {d1['var_sample_boot']:.3g}), ref "
                      f"{d1['var_ref']:.3g}, ref share {d1['ref_share']:.2f} | rel diff sd sets "
                      f"{100 * np.sqrt(d2['var_sets']):.2f} % (boot {100 * np.sqrt(d2['var_sample_boot']):.2f} %), ref "
                      f"{100 * np.sqrt(d2['var_ref']):.2f} %, ref share {d2['ref_share']:.2f}")
                print(f"         KID {r[f'kid_{m}'][0]:.4g} ± {r[f'kid_{m}'][1]:.3g}, paired rel "
                      f"{100 * r[f'kid_{m}'][2]:+.2f} % sd {100 * r[f'kid_{m}'][3]:.2f} %")
            print(f"  FD∞ {r['fd_inf'][0]:.2f} ± {r['fd_inf'][1]:.2f} (slope k {r['fd_inf'][2]:.0f}); paired rel FD∞ "
                  f"{100 * r['rel_fd_inf'][0]:+.2f} % sd {100 * r['rel_fd_inf'][1]:.2f} %")
            print(f"  bootstrap se of rel diff from one {n0}-set: {100 * bt.se:.2f} %")
            print("  " + plan.statement())
            print("  " + plan_inf.statement())
            print("  " + plan_pop.statement())
    (out / "fd_noise.json").write_text(json.dumps(report, indent=1, default=float))


def plans(out: Path, n0: int = 500, effect: float = 0.03, confidence: float = 0.8):
    """Power plans from the measured numbers: sd at n0 from the fitted scaling, also its upper confidence bound."""
    from diffusion_es.experiments.power import power_plan, sd_upper_bound

    report = json.loads((out / "fd_noise.json").read_text())
    for key, r in report.items():
        a, b = r["fit_a_b"]
        sd0, floor = float(np.sqrt(a / n0 + b)), float(np.sqrt(b))
        up = sd_upper_bound(sd0, r["sets"], confidence)
        ref_sd = float(np.sqrt(r[f"decomp_rel_{n0}"]["var_ref"]))
        fd_inf = dict(fd_inf=r["fd_inf"][0], fd_slope=max(r["fd_inf"][2], 0.0))
        print(f"\n== {key}: sd {100 * sd0:.2f} % at {n0} (upper {confidence:.0%} bound {100 * up:.2f} %), "
              f"floor {100 * floor:.2f} %, reference sd {100 * ref_sd:.2f} %")
        bound = dict(sd0=up, sd_label=f"{100 * confidence:.0f} % upper bound of {100 * sd0:.2g} % measured over "
                                      f"{r['sets']} sets")
        for label, kw in (("FD, measured sd", dict(sd0=sd0)), ("FD, sd bound", bound),
                          ("FD∞, sd bound", dict(**bound, **fd_inf)),
                          ("FD∞, sd bound, population", dict(**bound, ref_sd=ref_sd, **fd_inf))):
            pl = power_plan(effect, n0=n0, floor=min(floor, kw["sd0"]), nfe_per_sample=20, **kw)
            print(f"  [{label}] {pl.statement()}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["sample", "analyse", "plan"])
    p.add_argument("--out", default="runs/fd_noise")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--sets", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    if a.what == "sample":
        do_sample(Path(a.out), a.n, a.sets, a.seed)
    elif a.what == "analyse":
        analyse(Path(a.out))
    else:
        plans(Path(a.out))
