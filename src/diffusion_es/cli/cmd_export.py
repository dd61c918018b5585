"""``diffusion-es export``: write one of our UNet checkpoints as a 🤗 diffusers ``DDPMPipeline`` folder
(``unet/`` UNet2DModel + ``scheduler/`` DDPMScheduler with our exact β table), checked against ours."""

from __future__ import annotations

from .common import add_model_args, add_progress_arg, print_json


def register(sub) -> None:
    p = sub.add_parser("export", help="export a UNet checkpoint to diffusers (DDPMPipeline folder)",
                       description="Write OUT/model_index.json, OUT/unet (UNet2DModel) and OUT/scheduler "
                                   "(DDPMScheduler with the model's exact betas, prediction type and variance). "
                                   "The exported network is checked against ours on random inputs before anything "
                                   "is written; the folder appears only when complete. Load it with "
                                   "DDPMPipeline.from_pretrained(OUT), or pass --model OUT to any command.")
    add_model_args(p, default=None, extra="required (no shipped model is a diffusers-expressible UNet); ")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--raw-weights", action="store_true", help="export the raw (non-EMA) weights")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it holds an earlier export (only once the new one is complete); any "
                        "other non-empty folder is refused")
    add_progress_arg(p)  # (accepted for uniformity: export shows no bar)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io import check_output

    check_output(args.out, "dir", command="export")
    from ..adapters.diffusers_export import export_diffusers

    info = export_diffusers(args.model, args.out, use_ema=not args.raw_weights, overwrite=args.overwrite)
    if args.json:
        print_json(info)
    else:
        cfg = info["diffusers_config"]
        print(f"wrote {info['out']}: DDPMPipeline (UNet2DModel {list(cfg['block_out_channels'])}, "
              f"{info['prediction_type']}, {info['variance_type']}, T = {info['num_train_timesteps']}); "
              f"exported network matches ours to {info['check_relative_max_difference']:.1e} (relative)")
    return 0
