"""How much do the sampling loop and Epsilon Scaling cost on top of the network?

Prints, in one run on the same inputs (a fixed residual MLP ε-network, dim 64, batch 256, float32 network,
float64 loop, CPU):

(a) sampling wall time with ES ÷ without (target ≤ 1.01);
(b) sampler wall time ÷ (NFE × time of one network evaluation)  (target ≤ 1.05),

for ddpm, ddim, euler and heun, as medians over repeats (runs interleaved so drift hits both sides alike).
``--breakdown`` also times the pieces of the loop that are not the network (per-seed noise, the σ → t map and
dtype casts of VPDenoiser, the ES wrapper), so a missed target points at its cause.

    python benchmarks/bench_sampling.py [--threads 1] [--steps 20] [--repeats 7] [--breakdown] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from torch import nn

from diffusion_es.core.param import VPDenoiser
from diffusion_es.samplers import SamplingPlan, SeedNoise, sample
from diffusion_es.core.scaling import Uniform, epsilon_scaled
from diffusion_es.core.schedules import VPSchedule

SAMPLERS = ("ddpm", "ddim", "euler", "heun")


class ResMLP(nn.Module):
    """ε-network: input projection, ``depth`` residual blocks (LayerNorm → Linear → SiLU → Linear), output."""

    def __init__(self, dim=64, width=512, depth=4, temb=64):
        super().__init__()
        self.temb = temb
        self.inp = nn.Linear(dim + temb, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def forward(self, x_t, t):
        half = self.temb // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=x_t.dtype) / half)
        a = t.reshape(-1, 1).to(x_t.dtype) * freqs
        h = self.inp(torch.cat([x_t, torch.sin(a), torch.cos(a)], dim=1))
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def _median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for the whole run)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--lam", type=float, default=1.01)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--breakdown", action="store_true", help="also time the non-network pieces of the loop")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ResMLP(args.dim).eval()
    sch = VPSchedule.linear()
    den = VPDenoiser(net, sch)
    seeds = list(range(args.batch))
    shape = (args.dim,)
    es = Uniform(args.lam)

    # one network evaluation, on a realistic input, no_grad as in the sampler
    x_t = torch.randn(args.batch, args.dim)
    t = torch.full((args.batch,), 500.0)
    with torch.no_grad():
        for _ in range(5):
            net(x_t, t)
        t_net = statistics.median(_median_time(lambda: net(x_t, t), 20) for _ in range(5))

    results = {"threads": args.threads, "batch": args.batch, "dim": args.dim, "steps": args.steps,
               "lambda": args.lam, "t_net_ms": 1e3 * t_net, "samplers": {}}
    for name in args.samplers.split(","):
        kw = {"clip": False} if name in ("ddpm", "ddim") else {}
        nfe = SamplingPlan(name, args.steps, sch).nfe
        run_base = lambda: sample(den, name, args.steps, shape, seeds, schedule=sch, batch_size=args.batch, **kw)  # noqa
        run_es = lambda: sample(den, name, args.steps, shape, seeds, schedule=sch, es=es,  # noqa: E731
                                batch_size=args.batch, **kw)
        run_base(), run_es()  # warm up
        tb, te = [], []
        for _ in range(args.repeats):  # interleaved
            tb.append(_median_time(run_base, 1))
            te.append(_median_time(run_es, 1))
        base, with_es = statistics.median(tb), statistics.median(te)
        r = {"nfe": nfe, "base_ms": 1e3 * base, "es_ms": 1e3 * with_es, "es_ratio": with_es / base,
             "loop_ratio": base / (nfe * t_net), "loop_ratio_es": with_es / (nfe * t_net),
             "overhead_ms_per_nfe": 1e3 * (base - nfe * t_net) / nfe}
        if args.breakdown:
            r["breakdown_ms"] = _breakdown(den, net, sch, name, args, seeds, shape, es)
        results["samplers"][name] = r

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"network: ResMLP(dim={args.dim}, 4x512) float32, batch {args.batch}, {args.threads} thread(s); "
          f"one evaluation = {1e3 * t_net:.3f} ms (median)")
    print(f"{'sampler':8} {'NFE':>4} {'base ms':>9} {'ES ms':>9} {'(a) ES/base':>12} {'(b) loop/NFE·net':>17} "
          f"{'overhead/NFE':>13}")
    for name, r in results["samplers"].items():
        flag_a = "ok" if r["es_ratio"] <= 1.01 else "MISS"
        flag_b = "ok" if r["loop_ratio"] <= 1.05 else "MISS"
        print(f"{name:8} {r['nfe']:>4} {r['base_ms']:>9.2f} {r['es_ms']:>9.2f} {r['es_ratio']:>8.4f} {flag_a:>3} "
              f"{r['loop_ratio']:>13.4f} {flag_b:>3} {r['overhead_ms_per_nfe']:>10.3f} ms")
        if "breakdown_ms" in r:
            print("         non-network pieces (ms per run): " +
                  ", ".join(f"{k} {v:.3f}" for k, v in r["breakdown_ms"].items()))
    print("targets: (a) <= 1.01, (b) <= 1.05")
    return results


def _breakdown(den, net, sch, name, args, seeds, shape, es):
    """Time the non-network work of one sampling run, piece by piece (ms per run)."""
    plan = SamplingPlan(name, args.steps, sch)
    reps = max(3, args.repeats)
    out = {}
    out["SeedNoise init (per-seed generators + z)"] = 1e3 * _median_time(lambda: SeedNoise(seeds, shape), reps)

    def draws():
        n = SeedNoise(seeds, shape)
        for i in range(args.steps):
            n(i)
    if name in ("ddpm",):  # samplers that draw step noise in this configuration
        out["step noise draws"] = 1e3 * _median_time(draws, reps) - out["SeedNoise init (per-seed generators + z)"]

    x = torch.randn(args.batch, *shape, dtype=torch.float64)
    sig = float(plan.sigmas[len(plan.sigmas) // 2])

    class Null(nn.Module):  # VPDenoiser's own work with a free network
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x_t, t):
            return x_t

    vp_null = VPDenoiser(Null(), sch)
    with torch.no_grad():
        t_vp = _median_time(lambda: [vp_null(x, sig) for _ in range(plan.nfe)], reps)
        out["VPDenoiser wrap (σ→t, casts, D)"] = 1e3 * t_vp
        wrapped = epsilon_scaled(vp_null, es, plan.sigmas)
        t_es = _median_time(lambda: [wrapped(x, sig) for _ in range(plan.nfe)], reps)
        out["ES wrapper extra"] = 1e3 * (t_es - t_vp)
    return out


if __name__ == "__main__":
    main()
