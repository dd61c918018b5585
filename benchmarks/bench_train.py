"""Training-loop overhead and sampling speed.

1. Steps/s of our training loop (``diffusion_es.training.train.train``: data order, explicit generators, hybrid-loss code
   path, LR schedule, grad clipping, EMA, loss logging, progress bar) divided by a bare PyTorch loop doing the same
   math on the same model, batch and data (random batch, forward-noising, ε-MSE, AdamW, clipping, EMA lerp).
   Target: >= 0.95. The bare loop without clipping and EMA is printed as well, for scale.
2. Samples/s of the shipped default model (``--model default``) with DDPM and DDIM at 20 and 100 steps.

Usage: python benchmarks/bench_train.py [--device cpu] [--threads 1] [--steps 150] [--repeats 3] [--json]
Timings exclude start-up: the first ``warmup`` steps of each loop and the final checkpoint are not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch
from torch import nn


def ours(steps: int, warmup: int, batch: int, device: str, progress: bool) -> float:
    from diffusion_es.models import ModelConfig
    from diffusion_es.training.train import TrainConfig, train

    marks = {}

    def cb(step, info):
        if step in (warmup, steps - 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as d:
        train(f"{d}/run", TrainConfig(steps=steps, batch_size=batch, ckpt_every=10**9, log_every=100, warmup=0),
              ModelConfig(), device=device, progress=progress, callback=cb)
    return (steps - 1 - warmup) / (marks[steps - 1] - marks[warmup])


def bare(steps: int, warmup: int, batch: int, device: str, full: bool = True) -> float:
    import copy

    from diffusion_es.data import load_digits
    from diffusion_es.models import ModelConfig, build_model
    from diffusion_es.core.schedules import VPSchedule

    torch.manual_seed(0)
    net = build_model(ModelConfig()).to(device)
    ema = copy.deepcopy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    data = load_digits("train").to(device)
    ab = torch.tensor(VPSchedule.linear(1000).alphas_cumprod, dtype=torch.float32, device=device)
    g = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(steps):
        if step == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(0, len(data), (batch,), generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        eps = torch.randn((batch, 1, 8, 8), generator=g).to(device)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * data[idx] + (1 - a).sqrt() * eps
        loss = ((net(x_t, t.float()) - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if full:
            nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if full:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1e-3)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (steps - warmup) / (time.perf_counter() - t0)


def sampling(device: str, n: int) -> dict:
    from diffusion_es.models import load_model
    from diffusion_es.samplers import sample

    m = load_model("default", device=device)
    den = m.denoiser()
    out = {}
    for sampler in ("ddpm", "ddim"):
        for steps in (20, 100):
            sample(den, sampler, steps, m.data_shape, range(8), batch_size=8, device=device)  # warm-up
            t0 = time.perf_counter()
            sample(den, sampler, steps, m.data_shape, range(n), batch_size=500, device=device)
            out[f"{sampler}{steps}"] = n / (time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {"device": args.device, "threads": args.threads, "torch": torch.__version__, "batch": args.batch,
           "model": "default config: residual MLP 4x512, 2.47M params"}
    o, o_bar, b, b_min = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so that load changes on shared machines hit all loops alike
        b.append(bare(args.steps, args.warmup, args.batch, args.device))
        o.append(ours(args.steps, args.warmup, args.batch, args.device, progress=False))
        o_bar.append(ours(args.steps, args.warmup, args.batch, args.device, progress=True))
        b_min.append(bare(args.steps, args.warmup, args.batch, args.device, full=False))
    med = statistics.median
    res.update({"ours_steps_per_s": med(o), "ours_with_progress_bar_steps_per_s": med(o_bar),
                "bare_steps_per_s": med(b), "bare_without_clip_ema_steps_per_s": med(b_min),
                "ratio": med(o) / med(b), "ratio_with_progress_bar": med(o_bar) / med(b),
                "ratios_per_repeat": [x / y for x, y in zip(o, b)]})
    res["samples_per_s"] = sampling(args.device, args.samples)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"training, {args.device} ({args.threads} thread(s)), batch {args.batch}, default MLP:")
        print(f"  ours {res['ours_steps_per_s']:.1f} steps/s (with progress bar {res['ours_with_progress_bar_steps_per_s']:.1f}); "
              f"bare loop {res['bare_steps_per_s']:.1f} (without clip+EMA {res['bare_without_clip_ema_steps_per_s']:.1f})")
        print(f"  ratio ours/bare = {res['ratio']:.3f} (with progress bar {res['ratio_with_progress_bar']:.3f}); "
              f"per repeat {', '.join(f'{r:.3f}' for r in res['ratios_per_repeat'])}; target >= 0.95")
        print("sampling the default model, samples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in res["samples_per_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
