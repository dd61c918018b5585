"""``diffusion-es sample``: draw samples from a model (ours, the shipped default, or a diffusers UNet), with or
without Epsilon Scaling, into an ADM-style ``.npz`` (uint8 NHWC under ``arr_0``) or a folder of PNGs (one file per
seed, EDM's ``seed%06d.png``), and an optional PNG grid."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import UsageError
from .common import (BATCH_HELP, MAX_SEEDS, add_device_arg, add_es_args, add_model_args, add_progress_arg,
                     add_sampler_args, add_threads_arg, es_from_args, int_in, progress_bar, sampler_kwargs,
                     schedule_arg)

GRID_N = 100  # samples in the --grid PNG unless --grid-n says

DETERMINISM = ("Each sample has its own noise, drawn from its seed, so runs with and without ES on the same seeds "
               "share their noise. The same seeds with the same --batch-size give the same bytes, on any number of "
               "processes (torchrun) and after a resume; another --batch-size can change a sample's last float "
               "bits (network kernels depend on the batch size), and so a pixel by 1.")


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a model (optionally with Epsilon Scaling) into an .npz or PNG folder",
                       description=f"Draw one sample per seed into an ADM-style .npz or a folder of PNGs. {DETERMINISM}")
    add_model_args(p)
    add_sampler_args(p, steps_default=100, sampler_default="ddpm")
    add_es_args(p)
    p.add_argument("--seeds", default="0-99", help="seeds: a range 0-1999, a list 1,2,3, or both (default 0-99)")
    p.add_argument("--out", required=True, metavar="FILE.npz|DIR/",
                   help="output: FILE.npz (ADM-style: uint8 NHWC under arr_0, seeds under 'seeds') or a folder DIR/ "
                        "of PNGs, one per seed (seed000042.png, as EDM writes them); both are written atomically "
                        "and resume after a kill")
    p.add_argument("--rgb", action="store_true",
                   help="write 3-channel images (grey repeated), as ADM's evaluator and most FID tools expect")
    p.add_argument("--grid", default=None, metavar="PNG", help="also write a PNG grid of the first --grid-n samples")
    p.add_argument("--grid-n", type=int_in(1, 1_000_000), default=None,
                   help=f"number of samples in the grid (default {GRID_N})")
    p.add_argument("--batch-size", type=int_in(1, 1_000_000), default=None,
                   help=BATCH_HELP[:-1] + "; the bytes of a sample can depend on it, see above)")
    p.add_argument("--shard-size", type=int_in(1, MAX_SEEDS), default=256,
                   help="seeds per resumable shard in OUT.parts/ (default 256), rounded up to whole batches: a killed "
                        "run restarted with the same arguments samples only what is missing (see docs/distributed.md)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw (non-EMA) weights")
    add_device_arg(p)
    add_threads_arg(p)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def out_layout(out) -> str:
    """``npz`` for FILE.npz, ``png`` for a folder (DIR/, an existing folder, or a name without extension)."""
    text = str(out)
    if text.lower().endswith(".npz"):
        return "npz"
    if text.endswith(("/", os.sep)) or Path(text).is_dir() or not Path(text).suffix:
        return "png"
    raise UsageError(f"--out {text!r}: give FILE.npz or a folder DIR/ for one PNG per seed")


def run(args) -> int:
    from ..distributed import session

    with session(args.device) as ctx:  # one process, or one rank of a torchrun launch
        return _run(args, ctx)


def _run(args, ctx) -> int:
    import numpy as np
    import torch

    from ..experiments.common import grid_key, weights_hash
    from ..io import check_output, read_png, save_grid, save_npz, to_rgb, to_uint8
    from ..models import load_model
    from ..samplers import SamplingPlan, get_sampler, resolve_batch_size, sample
    from ..store import ShardedRun, output_lock
    from .common import parse_seeds, print_json

    # everything is checked before any work or any file: options, output paths, model, sampler, λ
    layout = out_layout(args.out)
    check_output(args.out, "file" if layout == "npz" else "dir", (".npz",) if layout == "npz" else (),
                 command="sample")
    if args.grid is not None:  # (an empty --grid is refused)
        check_output(args.grid, "file", (".png",), "--grid")
    elif args.grid_n is not None:
        raise UsageError("--grid-n is the number of samples in the --grid PNG; add --grid FILE.png, or drop it")
    args.device = ctx.device(args.device)
    seeds = parse_seeds(args.seeds)
    if layout == "png" and Path(args.out).is_dir():  # fid reads every PNG there: only this run's may be in it
        from ..io import png_name

        ours = {png_name(s) for s in seeds}
        others = sorted(q.name for q in Path(args.out).iterdir() if not q.name.startswith(".") and q.name not in ours)
        if others:
            raise UsageError(f"--out {args.out}: the folder holds {len(others)} file(s) that are not this run's "
                             f"samples ({others[0]}, ...); give a new folder, or one holding only these seeds' PNGs")
    m = load_model(args.model, use_ema=not args.raw_weights, device=args.device)
    kwargs = sampler_kwargs(args)
    schedule = schedule_arg(args, m)
    SamplingPlan(args.sampler, args.steps, schedule, spacing=args.spacing)  # refuse a wrong sampler before any work
    if kwargs.get("variance") == "learned" and not m.learned_variance:
        raise UsageError("--variance learned needs a model trained with --learned-variance")
    SamplingPlan(args.sampler, args.steps, m.schedule, spacing=args.spacing)  # refuses a bad step count now
    es = es_from_args(args, m, quiet=not ctx.is_main)
    images = len(m.data_shape) == 3
    if not images and (layout == "png" or args.rgb):
        raise UsageError(f"this model makes vectors of shape {tuple(m.data_shape)}, not images: write --out FILE.npz "
                         "without --rgb")
    if args.rgb and m.data_shape[0] not in (1, 3):
        raise UsageError(f"--rgb needs 1- or 3-channel images, the model makes {m.data_shape[0]} channels")

    # omitted: from the network and the shape only, so every rank and every resume agrees
    den = m.denoiser()
    args.batch_size = resolve_batch_size(args.batch_size, den, m.data_shape, args.device)

    # everything that determines the samples keys the resumable shards (OUT.parts/); the clipping as the sampler
    # will apply it (True for [-1, 1], the key of runs before clip defaulted to the model's own; a bound r; False)
    if "clip" in kwargs:
        from ..samplers import clip_bound

        bound = clip_bound(kwargs["clip"], den)
        kwargs = {**kwargs, "clip": True if bound == 1.0 else False if bound is None else bound}
    identity = {"model": weights_hash(m), "shape": list(m.data_shape), "sampler": args.sampler,
                "steps": args.steps, "es": None if es is None else es.to_dict(), "spacing": args.spacing,
                "device": torch.device(args.device).type, **kwargs, **({"rgb": True} if args.rgb else {})}
    identity.update(grid_key(args.sampler, args.steps, schedule, args.spacing))  # (shards from before the adm fix)
    if getattr(schedule, "shift", None) is not None:  # a flow model: its grid's time shift decides the samples
        identity["shift"] = schedule.shift
    if hasattr(schedule, "pfgm_D"):  # an EDM / PFGM++ model: its prior and σ range decide the samples
        identity["edm"] = schedule.to_dict()

    def run_chunk(chunk, progress):  # images are quantised per chunk, exactly as the whole set would be
        x = sample(den, args.sampler, args.steps, m.data_shape, chunk, schedule=schedule, es=es,
                   batch_size=args.batch_size, device=args.device, spacing=args.spacing, progress=progress, **kwargs)
        if x.ndim != 4:
            return x.numpy()
        u = to_uint8(x)
        return to_rgb(u) if args.rgb else u

    with output_lock(args.out, enabled=ctx.is_main):  # one writer per output; a killed writer's debris goes
        shards = ShardedRun(ctx, args.out, identity, seeds, args.batch_size, args.shard_size, layout=layout)
        bar = progress_bar(len(seeds), args.sampler, "img", disable=args.no_progress or not ctx.is_main)
        t0 = time.perf_counter()
        try:
            merged = shards.execute(run_chunk, progress=bar.update)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        if not ctx.is_main:
            return 0
        seeds_arr = np.asarray(seeds, dtype=np.int64)
        if layout == "png":
            if args.grid:
                save_grid(args.grid, np.stack([read_png(shards.png_path(s)) for s in seeds[: args.grid_n or GRID_N]]))
        elif merged.ndim == 4:
            save_npz(args.out, merged, seeds=seeds_arr)
            if args.grid:
                save_grid(args.grid, merged[: args.grid_n or GRID_N])
        else:  # vectors (toy data): float32 under arr_0
            from ..io import atomic_path

            with atomic_path(args.out, suffix=".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, arr_0=merged.astype(np.float32), seeds=seeds_arr)
            if args.grid:
                _scatter(args.grid, merged)
        shards.cleanup()
    n_new = len(seeds) - shards.reused
    seconds = max(seconds, 1e-9)
    summary = {
        "model": str(m.path), "sampler": args.sampler, "steps": args.steps,
        "nfe": get_sampler(args.sampler).nfe(args.steps),
        "es": None if es is None else es.to_dict(), "n": len(seeds), "seeds": args.seeds,
        "shape": list(m.data_shape), "batch_size": args.batch_size, "seconds": round(seconds, 3),
        "samples_per_s": round(n_new / seconds, 2),
        "out": str(args.out), "layout": layout, "rgb": bool(args.rgb), "grid": args.grid,
        **{k: v for k, v in kwargs.items()},
    }
    if args.json:
        print_json(summary)
    else:
        what = f"{len(seeds)} sample{'s' if len(seeds) != 1 else ''}"
        print(f"wrote {what} to {args.out}{' (PNG folder)' if layout == 'png' else ''} in "
              f"{seconds:.1f} s ({summary['samples_per_s']:.1f}/s)")
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
