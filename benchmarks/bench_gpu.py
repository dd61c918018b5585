"""Our ``sample()`` against diffusers' own pipeline on the same UNet, on CUDA (float16 network, batch >= 64), and
where our time goes.

    python benchmarks/bench_gpu.py                                    # CUDA: DDPM, 50 steps, batch 64, 64x64
    python benchmarks/bench_gpu.py --sampler ddim --steps 50          # DDIM (eta = 0): no step noise
    python benchmarks/bench_gpu.py --device cpu --batch 2 --size 16 --width 8 --steps 3 --repeats 1   # smoke test

STATUS: not measured on a GPU yet (none was available when this was written); run the first two commands on a
CUDA machine and commit their output to docs/benchmarks.md with the GPU, CPU, torch and diffusers versions named.

One diffusers ``UNet2DModel`` (random weights, built from a config dict, no download; ``--size`` x ``--size``,
channels ``--width`` x (1, 2, 2, 4), attention at the third level), saved once as a pipeline folder and loaded back
twice: as a ``DDPMPipeline`` / ``DDIMPipeline`` and with ``load_diffusers_unet`` as our denoiser, both in
``--dtype`` (float16 on CUDA). Contenders, each a whole run of ``--steps`` steps for ``--batch`` images:

* ``diffusers``: the plain pipeline, one generator on the device (its usual fast path; float16 state);
* ``diffusers, per-seed CPU generators``: the same with a list of CPU generators, diffusers' own way to make an image
  depend only on its seed (the noise then comes from the CPU every step, as ours does);
* ``diffusers + ES``: the plain pipeline inside ``apply_epsilon_scaling`` (uniform λ 1.005);
* ``ours``: ``diffusion_es.sample()`` (float64 state, per-seed CPU noise in blocks of 8 steps, drawn ahead by
  background threads on an accelerator: ``SeedNoise.workers``);
* ``ours, noise inline``: the same with ``workers = 0`` (every block drawn when first needed, on the main thread);
* ``ours, noise pre-drawn``: the same loop with every step's noise already on the device (so ours minus this is
  what the CPU noise costs);
* ``ours, free network``: that loop with a network that costs nothing (float64 state, casts, σ → t: the loop's own
  cost);
* ``network alone``: the UNet called NFE times on a fixed float16 batch.

Each round runs every contender once, in a rotating order, synchronising the device around each; ratios are taken
within a round and the median over ``--repeats`` rounds is printed (after one warm-up round). A share above 5 % of
our time for the CPU noise or for the float64 loop is flagged: that is where to look next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch


def unet_config(size: int, width: int) -> dict:
    """A small DDPM-style UNet2DModel: 4 levels, 2 ResNet layers each, attention at the third level."""
    w = width
    return dict(sample_size=size, in_channels=3, out_channels=3, layers_per_block=2,
                block_out_channels=(w, 2 * w, 2 * w, 4 * w), norm_num_groups=min(32, w),
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


class _FreeNet(torch.nn.Module):
    """A network that costs nothing: ε = 0 in the network's dtype (what is left is the sampling loop)."""

    def __init__(self, dtype, device):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros((), dtype=dtype, device=device))

    def forward(self, x_t, t, **kwargs):
        return torch.zeros_like(x_t)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                    help="network dtype (default: float16 on CUDA, float32 elsewhere)")
    ap.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64, help="image side")
    ap.add_argument("--width", type=int, default=64, help="channels of the first UNet level")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    device = torch.device(args.device)

    import diffusers
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    from diffusion_es.adapters.diffusers import apply_epsilon_scaling
    from diffusion_es.core.param import VPDenoiser
    from diffusion_es.core.scaling import Uniform
    from diffusion_es.models.diffusers_unet import load_diffusers_unet
    from diffusion_es.samplers import SamplingPlan, SeedNoise, sample
    from diffusion_es.samplers.common import default_noise_workers

    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config(args.size, args.width))
    pipe_cls, sched = (DDPMPipeline, DDPMScheduler()) if args.sampler == "ddpm" else (DDIMPipeline, DDIMScheduler())
    with tempfile.TemporaryDirectory() as d:
        pipe_cls(unet, sched).save_pretrained(d)
        pipe = pipe_cls.from_pretrained(d)
        pipe.unet.to(device, dtype)
        pipe.to(device)
        den = load_diffusers_unet(d, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(args.batch))
    shape = (3, args.size, args.size)
    # the same grid and options on both sides: diffusers' "leading" spacing, clipped x0, fixed-small variance / η = 0
    opts = dict(variance="small", clip=True) if args.sampler == "ddpm" else dict(eta=0.0, clip=True)
    plan = SamplingPlan(args.sampler, args.steps, den.schedule, spacing="leading")
    pipe_kw = dict(num_inference_steps=args.steps, output_type="np")
    if args.sampler == "ddim":
        pipe_kw.update(eta=0.0, use_clipped_model_output=True)
    free = VPDenoiser(_FreeNet(dtype, device), den.schedule)
    workers = default_noise_workers(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_pipe(gen=None):
        gen = gen if gen is not None else torch.Generator(device).manual_seed(0)
        pipe(batch_size=args.batch, generator=gen, **pipe_kw)

    def run_pipe_cpu_gens():
        run_pipe([torch.Generator().manual_seed(s) for s in seeds])

    def run_pipe_es():
        with apply_epsilon_scaling(pipe, Uniform(1.005)):
            run_pipe()

    def run_ours():
        return sample(den, args.sampler, args.steps, shape, seeds, device=device, batch_size=args.batch,
                      spacing="leading", **opts)

    def run_plan(denoiser, noise_workers=None, predrawn=None):
        if predrawn is None:
            noise = SeedNoise(seeds, shape, device, workers=noise_workers)
            z, src = noise.initial(), noise
        else:
            z, steps_noise = predrawn
            src = steps_noise.__getitem__
        return plan.run(denoiser, z, src, **opts).cpu()

    with torch.no_grad():
        # pre-drawn noise for the attribution runs, and a check that the direct loop is what sample() does
        n0 = SeedNoise(seeds, shape, device)
        predrawn = (n0.initial(), [n0(i) for i in range(args.steps)])
        assert torch.equal(run_ours(), run_plan(den, 0)), "the attribution loop must be sample()'s own"
    x16 = torch.randn(args.batch, *shape, device=device, dtype=dtype)
    t_mid = torch.full((args.batch,), 500, device=device, dtype=dtype)
    nfe = plan.nfe

    contenders = {
        "diffusers": run_pipe,
        "diffusers, per-seed CPU generators": run_pipe_cpu_gens,
        "diffusers + ES": run_pipe_es,
        "ours": run_ours,
        "ours, noise inline": lambda: run_plan(den, 0),
        "ours, noise pre-drawn": lambda: run_plan(den, predrawn=predrawn),
        "ours, free network": lambda: run_plan(free, predrawn=predrawn),
        "network alone": lambda: [den.net(x16, t_mid) for _ in range(nfe)],
        "noise alone (CPU draws + copies)": lambda: [n(i) for n in [SeedNoise(seeds, shape, device)]
                                                     for i in range(args.steps)],
    }
    if args.sampler == "ddim":  # no step noise with η = 0: only the initial draw
        contenders["noise alone (CPU draws + copies)"] = lambda: SeedNoise(seeds, shape, device).initial()
    names = list(contenders)
    times = {k: [] for k in names}
    with torch.no_grad():
        for fn in contenders.values():  # warm-up (cuDNN autotuning, allocator, thread pool)
            fn()
        sync()
        for r in range(args.repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                sync()
                t0 = time.perf_counter()
                contenders[k]()
                sync()
                times[k].append(time.perf_counter() - t0)

    med = statistics.median

    def ratio(a, b):
        return med(x / y for x, y in zip(times[a], times[b]))

    ours = med(times["ours"])
    result = {
        "device": str(device), "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                               else platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(), "load_average": _loadavg(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "dtype": str(dtype).replace("torch.", ""), "sampler": args.sampler,
        "steps": args.steps, "nfe": nfe, "batch": args.batch, "size": args.size, "width": args.width,
        "repeats": args.repeats, "noise_workers": workers,
        "seconds_median": {k: med(v) for k, v in times.items()},
        "seconds_min": {k: min(v) for k, v in times.items()},
        "ratios": {
            "ours / diffusers": ratio("ours", "diffusers"),
            "diffusers+ES / diffusers": ratio("diffusers + ES", "diffusers"),
            "diffusers per-seed CPU generators / diffusers": ratio("diffusers, per-seed CPU generators", "diffusers"),
            "ours / diffusers per-seed CPU generators": ratio("ours", "diffusers, per-seed CPU generators"),
            "ours noise inline / ours": ratio("ours, noise inline", "ours"),
        },
        "share_of_ours": {
            "network (NFE x network alone)": med(times["network alone"]) / ours,
            "CPU per-seed noise (ours - noise pre-drawn)": (ours - med(times["ours, noise pre-drawn"])) / ours,
            "float64 loop (free network)": med(times["ours, free network"]) / ours,
        },
    }
    flags = [k for k, v in result["share_of_ours"].items() if not k.startswith("network") and v > 0.05]
    result["over_5_percent"] = flags
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"{result['device_name']} ({result['device']}), {result['cpu_count']} CPUs, load {result['load_average']}; "
          f"torch {result['torch']}, diffusers {result['diffusers']}")
    print(f"UNet2DModel {args.size}x{args.size}, width {args.width}, {result['dtype']}; {args.sampler} {args.steps} "
          f"steps (NFE {nfe}), batch {args.batch}; noise workers {workers}; median (min) of {args.repeats} rounds")
    for k in names:
        print(f"  {k:36s} {1e3 * med(times[k]):10.1f} ms  ({1e3 * min(times[k]):.1f})")
    for k, v in result["ratios"].items():
        print(f"  {k:48s} {v:7.3f}")
    for k, v in result["share_of_ours"].items():
        print(f"  share of ours: {k:44s} {100 * v:6.1f} %" + ("   > 5 %: make it cheaper" if k in flags else ""))
    return result


if __name__ == "__main__":
    main()
