"""``diffusion-es sample``: draw samples from a checkpoint (or the shipped default model), with or without
Epsilon Scaling, into an ADM-style ``.npz`` (uint8 NHWC under ``arr_0``) and an optional PNG grid."""

from __future__ import annotations

import sys
import time

from ..errors import UsageError
from .common import (add_es_args, add_model_args, add_sampler_args, add_threads_arg, es_from_args, positive_int,
                     sampler_kwargs, schedule_arg)


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a model (optionally with Epsilon Scaling) into an .npz",
                       description="Draw one sample per seed. Each sample has its own noise, drawn from its seed, so "
                                   "runs with and without ES on the same seeds share their noise; the same seeds and "
                                   "--batch-size give the same bytes on any number of processes.")
    add_model_args(p)
    add_sampler_args(p, steps_default=100, sampler_default="ddpm")
    add_es_args(p)
    p.add_argument("--seeds", default="0-99", help="seeds: a range 0-1999, a list 1,2,3, or both (default 0-99)")
    p.add_argument("--out", required=True, help="output .npz (ADM-style: uint8 NHWC under arr_0, seeds under 'seeds')")
    p.add_argument("--grid", default=None, metavar="PNG", help="also write a PNG grid of the first --grid-n samples")
    p.add_argument("--grid-n", type=positive_int, default=100, help="number of samples in the grid (default 100)")
    p.add_argument("--batch-size", type=positive_int, default=500,
                   help="samples per batch (default 500; the bytes of a sample can depend on it, see --help above)")
    p.add_argument("--shard-size", type=positive_int, default=256,
                   help="seeds per resumable shard in OUT.parts/ (default 256), rounded up to whole batches: a killed "
                        "run restarted with the same arguments samples only what is missing (see docs/distributed.md)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw (non-EMA) weights")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..distributed import session

    with session(args.device) as ctx:  # one process, or one rank of a torchrun launch
        return _run(args, ctx)


def _run(args, ctx) -> int:
    import numpy as np
    import torch

    from ..hashing import model_fingerprint
    from ..store import ShardedRun
    from ..io import save_grid, save_npz, to_uint8
    from ..models import load_model
    from ..samplers import get_sampler, sample
    from .common import parse_seeds, print_json

    args.device = ctx.device(args.device)
    if not str(args.out).endswith(".npz"):
        raise UsageError(f"--out {args.out!r} must end in .npz")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available in this torch; use --device cpu")
    seeds = parse_seeds(args.seeds)
    es = es_from_args(args)
    m = load_model(args.model, use_ema=not args.raw_weights, device=args.device)
    kwargs = sampler_kwargs(args)
    schedule = schedule_arg(args, m)
    from ..samplers import SamplingPlan

    SamplingPlan(args.sampler, args.steps, schedule, spacing=args.spacing)  # refuse a wrong sampler before any work
    if kwargs.get("variance") == "learned" and not m.learned_variance:
        raise UsageError("--variance learned needs a model trained with --learned-variance")

    from tqdm import tqdm

    # everything that determines the samples keys the resumable shards (OUT.parts/)
    identity = {"model": model_fingerprint(m.net), "shape": list(m.data_shape), "sampler": args.sampler,
                "steps": args.steps, "es": None if es is None else es.to_dict(), "spacing": args.spacing,
                "device": torch.device(args.device).type, **kwargs}
    if getattr(schedule, "shift", None) is not None:  # a flow model: its grid's time shift decides the samples
        identity["shift"] = schedule.shift
    if hasattr(schedule, "pfgm_D"):  # an EDM / PFGM++ model: its prior and σ range decide the samples
        identity["edm"] = schedule.to_dict()
    shards = ShardedRun(ctx, args.out, identity, seeds, args.batch_size, args.shard_size)

    def run_chunk(chunk, progress):  # images are quantised per chunk, exactly as the whole set would be
        x = sample(m.denoiser(), args.sampler, args.steps, m.data_shape, chunk, schedule=schedule, es=es,
                   batch_size=args.batch_size, device=args.device, spacing=args.spacing, progress=progress, **kwargs)
        return to_uint8(x) if x.ndim == 4 else x.numpy()

    bar = tqdm(total=len(seeds), unit="img", file=sys.stderr, disable=args.no_progress or not ctx.is_main,
               desc=args.sampler)
    t0 = time.perf_counter()
    try:
        merged = shards.execute(run_chunk, progress=bar.update)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if not ctx.is_main:
        return 0
    seeds_arr = np.asarray(seeds, dtype=np.int64)
    if merged.ndim == 4:
        u = merged
        save_npz(args.out, u, seeds=seeds_arr)
        if args.grid:
            save_grid(args.grid, u[: max(1, args.grid_n)])
    else:  # vectors (toy data): float32 under arr_0
        from ..io import atomic_path

        x = torch.from_numpy(merged)
        with atomic_path(args.out, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=x.numpy().astype(np.float32), seeds=seeds_arr)
        if args.grid:
            _scatter(args.grid, x.numpy())
    shards.cleanup()
    n_new = len(seeds) - shards.reused
    seconds = max(seconds, 1e-9)
    summary = {
        "model": str(m.path), "sampler": args.sampler, "steps": args.steps,
        "nfe": get_sampler(args.sampler).nfe(args.steps),
        "es": None if es is None else es.to_dict(), "n": len(seeds), "seeds": args.seeds,
        "shape": list(m.data_shape), "seconds": round(seconds, 3), "samples_per_s": round(n_new / seconds, 2),
        "out": str(args.out), "grid": args.grid, **{k: v for k, v in kwargs.items()},
    }
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {len(seeds)} samples to {args.out} in {seconds:.1f} s ({summary['samples_per_s']:.1f}/s)",
              file=sys.stderr)
    return 0


def _scatter(path, pts) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(pts[:, 0], pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts)), s=2, alpha=0.5)
    ax.set_aspect("equal")
    save_figure(fig, path, bbox_inches="tight")
