"""What the per-seed noise costs: SeedNoise against the protocol written out literally (the implementation before
issue 17 item 5), in one run, on the same seeds, with every byte compared.

    python benchmarks/bench_noise.py [--threads 1] [--steps 20] [--repeats 9] [--workers 2] [--json]

For each (batch, shape) — the CPU benchmark's (256 x 64), a small image batch and the GPU benchmark's
(64 x 3x64x64) — one "run" is what a stochastic sampler asks of its noise source: the generators and the initial
noise, then one step-noise tensor (float64) per step. Contenders, interleaved in a rotating order, CPU time and
wall time (median over rounds):

* ``protocol``: ``torch.randn(..., generator=g, out=...)`` per seed and block, a strided gather and cast per step;
* ``SeedNoise``: in-place ``normal_`` per seed row (the default on the CPU: no threads);
* ``SeedNoise, N threads``: the accelerator path (``workers=N``: the block's seeds split among N threads, the next
  block drawn ahead) — on a CPU device it only shows the parallel draw, not the overlap with a GPU.

It also prints the draw rate (normals per second of one core), from which the CPU noise cost of any sampling run
follows: B x prod(shape) normals per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from diffusion_es.samplers import NOISE_BLOCK, SeedNoise

CASES = [(256, (64,)), (64, (3, 32, 32)), (64, (3, 64, 64))]


class ProtocolNoise:
    """The noise protocol as it was implemented before (the reference for every byte and the 'before' timing)."""

    def __init__(self, seeds, shape):
        self.shape = tuple(shape)
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.z = torch.empty((len(self.gens), *self.shape))
        for k, g in enumerate(self.gens):
            torch.randn(self.shape, generator=g, out=self.z[k])
        self.start, self.block = None, None

    def initial(self):
        return self.z.to(torch.float64)

    def __call__(self, i):
        start = (i // NOISE_BLOCK) * NOISE_BLOCK
        while self.start is None or self.start < start:
            if self.block is None:
                self.block = torch.empty((len(self.gens), NOISE_BLOCK, *self.shape))
            for k, g in enumerate(self.gens):
                torch.randn((NOISE_BLOCK, *self.shape), generator=g, out=self.block[k])
            self.start = 0 if self.start is None else self.start + NOISE_BLOCK
        return self.block[:, i - start].to(torch.float64)


def _run(make, steps):
    n = make()
    out = [n.initial()] + [n(i) for i in range(steps)]
    if hasattr(n, "close"):
        n.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--workers", type=int, default=2, help="threads of the accelerator path (0: skip it)")
    ap.add_argument("--cases", default=",".join(f"{b}x{'x'.join(map(str, s))}" for b, s in CASES),
                    help="batch x shape, comma separated (e.g. 256x64,64x3x32x32)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "steps": args.steps, "repeats": args.repeats, "cases": {}}
    for case in args.cases.split(","):
        b, *shape = (int(v) for v in case.split("x"))
        seeds = list(range(1000, 1000 + b))
        makers = {"protocol": lambda: ProtocolNoise(seeds, shape),
                  "SeedNoise": lambda: SeedNoise(seeds, shape, workers=0)}
        if args.workers:
            makers[f"SeedNoise, {args.workers} threads"] = lambda: SeedNoise(seeds, shape, workers=args.workers)
        ref = _run(makers["protocol"], args.steps)
        for name, make in makers.items():  # every byte, every contender (also the warm-up)
            got = _run(make, args.steps)
            assert all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(got, ref)), name
        names = list(makers)
        wall, cpu = {k: [] for k in names}, {k: [] for k in names}
        for r in range(args.repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0, c0 = time.perf_counter(), time.process_time()
                _run(makers[k], args.steps)
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        med = statistics.median
        normals = b * int(torch.Size(shape).numel()) * (1 + NOISE_BLOCK * -(-args.steps // NOISE_BLOCK))
        res = {k: {"wall_ms": 1e3 * med(wall[k]), "cpu_ms": 1e3 * med(cpu[k]),
                   "vs_protocol_cpu": med(c / p for c, p in zip(cpu[k], cpu["protocol"])),
                   "vs_protocol_wall": med(w / p for w, p in zip(wall[k], wall["protocol"]))} for k in names}
        res["normals_per_run"] = normals
        res["normals_per_cpu_second"] = normals / (res["SeedNoise"]["cpu_ms"] / 1e3)
        results["cases"][case] = res
    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"noise of one run ({args.steps} steps: initial + {-(-args.steps // NOISE_BLOCK)} blocks of {NOISE_BLOCK}), "
          f"{args.threads} torch thread(s), median of {args.repeats} interleaved rounds; bytes identical")
    for case, res in results["cases"].items():
        print(f"  {case}: {res['normals_per_run'] / 1e6:.2f} M normals per run, "
              f"{res['normals_per_cpu_second'] / 1e6:.0f} M normals per CPU second (SeedNoise)")
        for k, v in res.items():
            if isinstance(v, dict):
                print(f"    {k:22s} cpu {v['cpu_ms']:9.2f} ms  wall {v['wall_ms']:9.2f} ms   vs protocol: "
                      f"cpu {v['vs_protocol_cpu']:.3f}, wall {v['vs_protocol_wall']:.3f}")
    return results


if __name__ == "__main__":
    main()
