"""Wall time of our DDIM vs diffusers' DDIMPipeline on the same UNet, and the cost of ES inside a pipeline.

    python benchmarks/bench_diffusers.py [--batch 8 --steps 20 --size 32 --repeats 7 --threads 1 --json]

Both sides run the same diffusers UNet2DModel (random weights, built offline and loaded back from disk with
``load_diffusers_unet``), the same batch, step count and clipped DDIM (η = 0). Timings alternate between the
contenders (in a rotating order) and report the fastest of ``--repeats`` runs after a warm-up (the minimum is the least disturbed by
other processes on a shared machine; medians are printed too). Because end-to-end ratios near 1 are within timing
noise on a busy CPU, the ES overhead is also measured directly: the added cost of the wrapped ``step`` per call
(scheduler alone, 200 calls), times the calls per run, over the pipeline's run time.

* ``ours / diffusers``: ``diffusion_es.samplers.sample`` ÷ ``DDIMPipeline.__call__`` (target ≤ 1.0)
* ``ES overhead``: the pipeline with ``apply_epsilon_scaling`` (uniform and linear λ) ÷ without (target ≤ 1.01)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=32, help="image side of the UNet")
    ap.add_argument("--width", type=int, default=32, help="channels of the first UNet block (doubled after)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from diffusion_es.adapters.diffusers import apply_epsilon_scaling
    from diffusion_es.models.diffusers_unet import load_diffusers_unet
    from diffusion_es.samplers import sample
    from diffusion_es.core.scaling import Linear, Uniform

    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    w = args.width
    unet = UNet2DModel(sample_size=args.size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(w, 2 * w), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    with tempfile.TemporaryDirectory() as d:
        DDIMPipeline(unet, DDIMScheduler()).save_pretrained(d)
        pipe = DDIMPipeline.from_pretrained(d).to(args.device)
        den = load_diffusers_unet(d, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(args.batch))
    shape = (3, args.size, args.size)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_pipe():
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        pipe(batch_size=args.batch, generator=gens, num_inference_steps=args.steps, eta=0.0,
             use_clipped_model_output=True, output_type="np")

    def run_ours():
        sample(den, "ddim", args.steps, shape, seeds, spacing="leading", clip=True, device=args.device,
               batch_size=args.batch)

    def with_es(schedule):
        def run():
            with apply_epsilon_scaling(pipe, schedule):
                run_pipe()
        return run

    contenders = {"diffusers": run_pipe, "ours": run_ours, "diffusers+ES uniform": with_es(Uniform(1.005)),
                  "diffusers+ES linear": with_es(Linear(0.0002, 1.004))}
    times = {k: [] for k in contenders}
    with torch.no_grad():
        for fn in contenders.values():  # warm-up
            fn()
        names = list(contenders)
        for r in range(args.repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:  # rotate: no contender always runs last
                fn = contenders[k]
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
        # the wrapper's own cost per step call, measured on the scheduler alone
        sched = pipe.scheduler
        sched.set_timesteps(args.steps)
        x = torch.randn(args.batch, *shape, device=args.device)
        e = torch.randn_like(x)

        def steps(n=10):
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                for t in sched.timesteps:
                    sched.step(e, t, x, eta=0.0, use_clipped_model_output=True)
            sync()
            return (time.perf_counter() - t0) / (n * len(sched.timesteps))

        plain, wrapped = [], []
        for _ in range(5):
            plain.append(steps())
            with apply_epsilon_scaling(sched, Linear(0.0002, 1.004)):
                wrapped.append(steps())
        per_call = max(min(wrapped) - min(plain), 0.0)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": args.device, "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
        "size": args.size, "seconds_min": best, "seconds_median": med,
        "ours_over_diffusers": best["ours"] / best["diffusers"],
        "es_overhead_uniform": best["diffusers+ES uniform"] / best["diffusers"],
        "es_overhead_linear": best["diffusers+ES linear"] / best["diffusers"],
        "es_step_wrapper_us_per_call": per_call * 1e6,
        "es_overhead_attributable": 1.0 + per_call * args.steps / best["diffusers"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"device {args.device}, {result['threads']} threads, batch {args.batch}, {args.steps} DDIM steps, "
              f"{args.size}x{args.size}, best (median) of {args.repeats}")
        for k in best:
            print(f"  {k:24s} {best[k] * 1000:9.1f} ms  ({med[k] * 1000:.1f})")
        print(f"  ours / diffusers           {result['ours_over_diffusers']:.3f}   (target <= 1.0)")
        print(f"  ES overhead (uniform λ)    {result['es_overhead_uniform']:.3f}   (target <= 1.01)")
        print(f"  ES overhead (linear λ)     {result['es_overhead_linear']:.3f}   (target <= 1.01)")
        print(f"  ES step wrapper            {result['es_step_wrapper_us_per_call']:.0f} us/call -> overhead "
              f"{result['es_overhead_attributable']:.5f} of the pipeline's time")
    return result


if __name__ == "__main__":
    main()
