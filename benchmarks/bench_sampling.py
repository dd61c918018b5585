"""How much do the sampling loop, its per-seed noise and Epsilon Scaling cost on top of the network?

Prints, in one run on the same inputs (a fixed residual MLP ε-network, dim 64, batch 256, float32 network,
float64 loop, CPU; or, with ``--model``, a VP ε-model of your own or a shipped one), for ddpm, ddim, euler and heun:

(a) sampling time with ES ÷ without                                   (target ≤ 1.01);
(b) sampler time ÷ (NFE × time of one network evaluation)              (target ≤ 1.05),

and, as fractions of NFE × network, where the rest goes:

(b′) the same run ÷ the time its own network calls took, timed inside the run (the network wrapped in a stopwatch):
     network and the rest then see the same load and cache state, so on a busy box this is the stabler split;
(c) the loop with a free network (everything but the network: per-seed noise, σ → t, casts, the update);
(d) the per-seed noise alone (SeedNoise: generators, initial noise, and the step noise that sampler draws).
(e) for ddpm, the same sampler written out by hand (``_hand_ddpm``: the same noise and float64 arithmetic, samples
    checked equal): the floor for a loop that keeps the noise protocol and the float64 state.

Timing protocol (the box is shared; see docs/benchmarks.md): every round times, per sampler and in a rotating order,
the network alone called NFE times on a fixed input, the sampler without ES and with ES, the sampler with a free
network and the noise alone, so they see the same load; a ratio is taken within each round and the median over
``--repeats`` rounds is printed (medians of the raw times too). Every contender is timed twice: wall clock and the
process's CPU time (``--clock``). On a box shared with other jobs, wall time also counts the time the process waits
for a core, which does not cancel in a ratio when the load changes within a round; with one torch thread the CPU
time is the work itself, so ``--clock cpu`` (the default) is the number to compare between runs and commits,
while ``--clock wall`` is what a user waits on a quiet machine. ``--breakdown`` also times VPDenoiser's own work
and the ES wrapper.

    python benchmarks/bench_sampling.py [--threads 1] [--steps 20] [--repeats 7] [--breakdown] [--json]
    python benchmarks/bench_sampling.py --model mnist --batch 64 --steps 10 --repeats 5   # a real image network

``--model`` takes what ``diffusion-es sample --model`` takes (a shipped name, a ``train`` folder, a diffusers
folder) as long as it is a VP ε-prediction model without a learned variance (the hand-written DDPM reference
covers exactly that); its network, schedule and sample shape replace the MLP's.

Measured results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

try:
    import resource
except ImportError:  # Windows has none
    resource = None

import torch
from torch import nn

from diffusion_es.core.param import VPDenoiser
from diffusion_es.samplers import SAMPLERS as REGISTRY
from diffusion_es.samplers import SamplingPlan, SeedNoise, sample
from diffusion_es.core.scaling import Uniform, epsilon_scaled
from diffusion_es.core.schedules import VPSchedule
from diffusion_es.errors import UsageError
from diffusion_es.models.checkpoint import load_model

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


class TimedNet(nn.Module):
    """The network with a stopwatch: adds up the time spent in its own calls (wall and process CPU), so a sampling
    run can be split into network and everything else *within the run* (same load, same cache state)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.spent = net, [0.0, 0.0]

    def forward(self, x_t, t):
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.net(x_t, t)
        self.spent[0] += time.perf_counter() - t0
        self.spent[1] += time.process_time() - c0
        return out


class FreeNet(nn.Module):
    """A network that costs nothing (returns its input as ε): what is left of a sampling run is the loop's own
    work. One float32 parameter so VPDenoiser casts exactly as it does for the real network."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        return x_t


def _time(fn):
    """(wall seconds, process CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _minor_faults():
    """Minor page faults of this process so far (pages the kernel had to map, zeroed, on first touch); None where
    the ``resource`` module is missing (Windows)."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _median_time(fn, repeats, clock=0):
    return statistics.median(_time(fn)[clock] for _ in range(repeats))


def _noise_run(seeds, shape, steps, stochastic):
    """The noise work of one run: generators and initial noise, plus one step-noise request per step if the
    sampler draws step noise in this configuration."""
    def run():
        n = SeedNoise(seeds, shape)
        n.initial()
        if stochastic:
            for i in range(steps):
                n(i)
    return run


def _hand_ddpm(net, sch, steps, seeds, shape):
    """DDPM (fixed-small variance, no clipping) written out by hand: the same chain, the same per-seed noise and the
    same float64 arithmetic as ``sample(..., "ddpm", clip=False)``, and nothing else (no denoiser object, no
    registry, no ES hook). Its time is the floor for any loop that keeps the noise protocol and the float64 state;
    ``main`` checks that its samples equal the library's, byte for byte."""
    chain = SamplingPlan("ddpm", steps, sch).chain
    t_of = VPDenoiser(net, sch)._t_of
    rows = [(float(chain.sigmas[i]), float(chain.alphas_cumprod[i]), float(chain.posterior_mean_coef1[i]),
             float(chain.posterior_mean_coef2[i]), math.exp(0.5 * float(chain.posterior_log_variance_clipped[i])))
            for i in range(len(chain))]

    def run():
        noise = SeedNoise(seeds, shape)
        x = noise.initial()
        for step, i in enumerate(range(len(chain) - 1, -1, -1)):
            s, ab, c1, c2, std = rows[i]
            x_sig = x / math.sqrt(ab)  # the network sees x_t rebuilt from σ-space, as VPDenoiser does
            t = torch.full((x.shape[0],), t_of(s), dtype=torch.float32)
            eps = net(x_sig.mul(math.sqrt(1.0 / (1.0 + s * s))).to(torch.float32), t).to(torch.float64)
            mean = c1 * (x_sig - s * eps) + c2 * x
            z = noise(step)
            x = mean if i == 0 else mean + std * z
        return x
    return run


def _network(args):
    """(network, VP schedule, sample shape, description): the MLP stress case, or the ``--model`` one."""
    if args.model is None:
        return ResMLP(args.dim).eval(), VPSchedule.linear(), (args.dim,), f"ResMLP(dim={args.dim}, 4x512)"
    try:
        m = load_model(args.model)
    except UsageError as e:
        raise SystemExit(f"bench_sampling: {e}") from None
    vp = isinstance(m.schedule, VPSchedule)
    if not vp or m.prediction != "eps" or m.learned_variance or m.schedule.zero_snr:
        kind = f"a VP {m.prediction}-prediction model" if vp else _PROCESS_NAMES.get(m.process, f"a {m.process} model")
        kind += " with a learned variance" if m.learned_variance else ""
        kind += " with zero terminal SNR" if vp and m.schedule.zero_snr else ""
        raise SystemExit(f"bench_sampling: --model {args.model} is {kind}; this benchmark's hand-written DDPM "
                         f"reference covers VP ε-prediction models with a fixed variance and a finite first σ "
                         f"(e.g. default, mnist)")
    shape = tuple(int(d) for d in m.data_shape)
    n_params = sum(p.numel() for p in m.net.parameters())
    what = f"{args.model} ({type(m.net).__name__}, {n_params / 1e6:.2f} M parameters, samples {shape})"
    return m.net, m.schedule, shape, what


_PROCESS_NAMES = {"edm": "an EDM / PFGM++ model", "flow": "a rectified-flow model"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for the whole run)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--model", default=None,
                    help="time this VP ε-model's network instead of the MLP (what `sample --model` takes)")
    ap.add_argument("--repeats", type=int, default=7, help="rounds (each times every contender once)")
    ap.add_argument("--lam", type=float, default=1.01)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="which time the ratios use: process CPU time (default; robust to a shared box) or wall")
    ap.add_argument("--breakdown", action="store_true", help="also time VPDenoiser's work and the ES wrapper")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, sch, shape, what = _network(args)
    timed = TimedNet(net)
    den, free = VPDenoiser(timed, sch), VPDenoiser(FreeNet(), sch)
    seeds = list(range(args.batch))
    es = Uniform(args.lam)
    x_t = torch.randn(args.batch, *shape)
    t = torch.full((args.batch,), 500.0)
    names = args.samplers.split(",")

    contenders = {}  # (sampler, what) -> fn
    nfes = {}
    for name in names:
        kw = {"clip": False} if name in ("ddpm", "ddim") else {}
        nfe = nfes[name] = SamplingPlan(name, args.steps, sch).nfe
        run = (lambda d, e=None, name=name, kw=kw:  # noqa: E731
               sample(d, name, args.steps, shape, seeds, schedule=sch, es=e, batch_size=args.batch, **kw))
        contenders[name, "net"] = lambda nfe=nfe: [net(x_t, t) for _ in range(nfe)]
        contenders[name, "base"] = lambda run=run: run(den)
        contenders[name, "base"].inside = True  # also split into network / rest from inside the run
        contenders[name, "es"] = lambda run=run: run(den, es)
        contenders[name, "free"] = lambda run=run: run(free)
        contenders[name, "noise"] = _noise_run(seeds, shape, args.steps, REGISTRY[name].stochastic(kw))
        if name == "ddpm":
            hand = contenders[name, "hand"] = _hand_ddpm(net, sch, args.steps, seeds, shape)
            with torch.no_grad():
                if not torch.equal(hand(), run(den)):
                    raise SystemExit("the hand-written DDPM reference no longer gives the library's samples: "
                                     "update _hand_ddpm to the library's arithmetic")

    both = {k: [] for k in contenders}
    inside = {k: [] for k in contenders}  # (network time within the run, run time), per round
    faults = {k: [] for k in contenders}  # minor page faults per call, per round
    keys = list(contenders)
    load_before = _loadavg()
    with torch.no_grad():
        for fn in contenders.values():  # warm-up
            fn()
        for r in range(args.repeats):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate: no contender always runs first
                timed.spent = [0.0, 0.0]
                f0 = _minor_faults()
                both[k].append(_time(contenders[k]))
                if f0 is not None:
                    faults[k].append(_minor_faults() - f0)
                if getattr(contenders[k], "inside", False):
                    inside[k].append(tuple(timed.spent))
    clock = 1 if args.clock == "cpu" else 0
    times = {k: [v[clock] for v in vs] for k, vs in both.items()}
    other = {k: [v[1 - clock] for v in vs] for k, vs in both.items()}

    med = statistics.median
    t_net = med(v / nfes[n] for n in names for v in times[n, "net"])
    results = {"network": what, "threads": args.threads, "batch": args.batch, "shape": list(shape),
               "steps": args.steps,
               "lambda": args.lam, "repeats": args.repeats, "clock": args.clock, "t_net_ms": 1e3 * t_net,
               "load_average": f"{load_before} -> {_loadavg()}", "samplers": {}}
    for name in names:
        nfe = nfes[name]
        net_r, base, with_es = times[name, "net"], times[name, "base"], times[name, "es"]
        r = {"nfe": nfe, "net_x_nfe_ms": 1e3 * med(net_r), "base_ms": 1e3 * med(base), "es_ms": 1e3 * med(with_es),
             "free_ms": 1e3 * med(times[name, "free"]), "noise_ms": 1e3 * med(times[name, "noise"]),
             # ratios within a round (the same load), then the median over rounds
             "es_ratio": med(e / b for e, b in zip(with_es, base)),
             "loop_ratio": med(b / n for b, n in zip(base, net_r)),
             # (b') the run over the time its own network calls took (timed inside the run)
             "loop_ratio_inside": med(b[clock] / s[clock]
                                      for b, s in zip(both[name, "base"], inside[name, "base"])),
             "loop_ratio_es": med(e / n for e, n in zip(with_es, net_r)),
             # fastest over fastest: the least disturbed runs of each (a check on the median on a busy box)
             "loop_ratio_min": min(base) / min(net_r),
             # the same ratio on the other clock, for reference
             ("loop_ratio_wall" if clock else "loop_ratio_cpu"): med(
                 b / n for b, n in zip(other[name, "base"], other[name, "net"]))}
        if (name, "hand") in times:  # the floor: the same noise and arithmetic written out by hand
            r["hand_ms"] = 1e3 * med(times[name, "hand"])
            r["hand_ratio"] = med(h / n for h, n in zip(times[name, "hand"], net_r))
            r["base_over_hand"] = med(b / h for b, h in zip(base, times[name, "hand"]))
        if faults[name, "base"]:
            r["minor_faults"] = {w: med(faults[name, w]) for w in ("net", "base", "free")}
        r["overhead_ms_per_nfe"] = (r["base_ms"] - r["net_x_nfe_ms"]) / nfe
        r["free_fraction"] = r["free_ms"] / r["net_x_nfe_ms"]
        r["noise_fraction"] = r["noise_ms"] / r["net_x_nfe_ms"]
        if args.breakdown:
            r["breakdown_ms"] = _breakdown(sch, shape, name, args, es)
        results["samplers"][name] = r

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"network: {what} float32, batch {args.batch}, {args.threads} thread(s), "
          f"{args.steps} steps; one evaluation = {1e3 * t_net:.2f} ms ({args.clock} time, median); load average "
          f"{results['load_average']}; medians over {args.repeats} interleaved rounds, {args.clock} time")
    print(f"{'sampler':8} {'NFE':>4} {'NFE·net ms':>11} {'base ms':>9} {'ES ms':>9} {'(a) ES/base':>12} "
          f"{'(b) loop/NFE·net':>17} {'(b′) inside':>11} {'(c) free loop':>14} {'(d) noise':>10}")
    for name, r in results["samplers"].items():
        flag_a = "ok" if r["es_ratio"] <= 1.01 else "MISS"
        flag_b = "ok" if r["loop_ratio"] <= 1.05 else "MISS"
        print(f"{name:8} {r['nfe']:>4} {r['net_x_nfe_ms']:>11.1f} {r['base_ms']:>9.1f} {r['es_ms']:>9.1f} "
              f"{r['es_ratio']:>8.4f} {flag_a:>3} {r['loop_ratio']:>13.4f} {flag_b:>3} "
              f"{r['loop_ratio_inside']:>11.4f} "
              f"{100 * r['free_fraction']:>12.2f} % {100 * r['noise_fraction']:>8.2f} %")
        if "breakdown_ms" in r:
            print("         non-network pieces (ms per run): " +
                  ", ".join(f"{k} {v:.3f}" for k, v in r["breakdown_ms"].items()))
    oc = "wall" if clock else "cpu"
    print("(b) from the fastest runs: " + ", ".join(f"{n} {r['loop_ratio_min']:.4f}"
                                                   for n, r in results["samplers"].items()))
    print(f"(b) on the {oc} clock: " + ", ".join(f"{n} {r[f'loop_ratio_{oc}']:.4f}"
                                                  for n, r in results["samplers"].items()))
    for n, r in results["samplers"].items():
        if "hand_ratio" in r:
            print(f"{n} written out by hand (same noise, same float64 arithmetic, same samples): "
                  f"{r['hand_ratio']:.4f} of NFE x network; the library's loop / the hand-written one: "
                  f"{r['base_over_hand']:.4f}")
    if all("minor_faults" in r for r in results["samplers"].values()):
        print("minor page faults per call (median; network alone / sampler / free loop): " + ", ".join(
            f"{n} {r['minor_faults']['net']:.0f}/{r['minor_faults']['base']:.0f}/{r['minor_faults']['free']:.0f}"
            for n, r in results["samplers"].items()))
    print("targets: (a) <= 1.01, (b) <= 1.05; (c), (d): ms per run as % of NFE x network")
    return results


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _breakdown(sch, shape, name, args, es):
    """Time VPDenoiser's own work (σ → t, casts, D) and the ES wrapper on a free network (ms per run)."""
    plan = SamplingPlan(name, args.steps, sch)
    reps = max(3, args.repeats)
    out = {}
    x = torch.randn(args.batch, *shape, dtype=torch.float64)
    sig = float(plan.sigmas[len(plan.sigmas) // 2])
    vp_free = VPDenoiser(FreeNet(), sch)
    with torch.no_grad():
        t_vp = _median_time(lambda: [vp_free(x, sig) for _ in range(plan.nfe)], reps)
        out["VPDenoiser wrap (σ→t, casts, D)"] = 1e3 * t_vp
        wrapped = epsilon_scaled(vp_free, es, plan.sigmas)
        t_es = _median_time(lambda: [wrapped(x, sig) for _ in range(plan.nfe)], reps)
        out["ES wrapper extra"] = 1e3 * (t_es - t_vp)
    return out


if __name__ == "__main__":
    main()
