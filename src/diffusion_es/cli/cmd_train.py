"""``diffusion-es train``: train a small diffusion model into a checkpoint folder (resumable)."""

from __future__ import annotations

import math
import shlex
import sys

from ..errors import UsageError
from .common import add_threads_arg

# (flag, dest, type, default, help): defaults are applied here so that --resume can tell given from default
_TRAIN = [
    ("--steps", "steps", int, 40000, "training steps (with --resume: the new total)"),
    ("--batch-size", "batch_size", int, 128, "batch size"),
    ("--lr", "lr", float, 1e-3, "AdamW learning rate (peak)"),
    ("--lr-schedule", "lr_schedule", str, "constant", "constant | cosine (decays to --lr-final)"),
    ("--lr-final", "lr_final", float, 0.0, "final learning rate of the cosine schedule"),
    ("--warmup", "warmup", int, 200, "linear learning-rate warmup steps"),
    ("--weight-decay", "weight_decay", float, 0.0, "AdamW weight decay"),
    ("--ema-decay", "ema_decay", float, 0.999, "EMA decay per step"),
    ("--grad-clip", "grad_clip", float, 1.0, "clip the gradient norm (0: off)"),
    ("--seed", "seed", int, 0, "seed of initialisation, data order, timesteps and noise"),
    ("--ip-gamma", "ip_gamma", float, 0.0, "DDPM-IP input perturbation gamma (0: off; the paper's is 0.1)"),
    ("--vlb-weight", "vlb_weight", float, 0.001, "lambda of ADM's hybrid loss (with --learned-variance)"),
    ("--ckpt-every", "ckpt_every", int, 2000, "checkpoint interval (steps)"),
    ("--log-every", "log_every", int, 100, "interval of log.jsonl lines and the progress bar's loss"),
    ("--eval-every", "eval_every", int, 0, "held-out loss of the EMA weights every N steps (0: at the end)"),
    ("--keep-every", "keep_every", int, 0, "also keep the EMA weights of every N-th step in OUT/snapshots/ (0: off)"),
    ("--toy-n", "toy_n", int, 8192, "number of points of a toy:NAME dataset"),
]
_MODEL = [
    ("--arch", "arch", str, "mlp", "mlp (residual MLP) | unet"),
    ("--width", "width", int, 512, "MLP width"),
    ("--blocks", "blocks", int, 4, "MLP residual blocks"),
    ("--input-skip", "input_skip", str, "auto", "MLP: a time-gated skip from the input to the output: on | off | "
                                                "auto (on when --width is below the data dimension)"),
    ("--channels", "channels", int, 64, "UNet base channels"),
    ("--channel-mult", "channel_mult", str, "1,2,2", "UNet channel multipliers per level, e.g. 1,2,2"),
    ("--num-res-blocks", "num_res_blocks", int, 2, "UNet residual blocks per level"),
    ("--attention-resolutions", "attention_resolutions", str, "", "UNet self-attention resolutions, e.g. 16,8"),
    ("--time-embed-dim", "time_embed_dim", int, 0, "time embedding width (0: auto)"),
    ("--dropout", "dropout", float, 0.0, "dropout"),
]
_DIFF = [
    ("--T", "T", int, 1000, "diffusion steps of training"),
    ("--beta-schedule", "beta_schedule", str, "linear", "linear | cosine"),
    ("--prediction", "prediction", str, "eps", "eps | v | x0 (VP diffusion) | flow (rectified flow: "
     "x_t = (1-t) x_0 + t eps, velocity target eps - x_0, t ~ U(0,1); --T sets the time scale) | edm (EDM "
     "preconditioning, log-normal sigma, Gaussian kernel: PFGM++ with D = inf)"),
    ("--shift", "shift", float, None, "flow models: the SD3 time shift of their default sampling grid (1: none)"),
    ("--pfgm-D", "pfgm_D", str, None, "PFGM++: train with the PFGM++ perturbation kernel of D augmented dimensions "
     "(r = sigma sqrt(D)) and EDM's preconditioned denoiser loss; 'inf' is EDM's Gaussian kernel, the same as "
     "--prediction edm"),
]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a small diffusion model (resumable, EMA, checkpoints)",
                       description="Train a small VP diffusion model into a checkpoint folder "
                                   "(config.json + model.safetensors + train_state.safetensors).")
    # every help text states its default: the parser's defaults are None so --resume can tell set options apart
    p.add_argument("--data", default=None, help="digits | toy:8gaussians|moons|spiral | mnist:PATH | npz:PATH | PATH "
                   "(default digits)")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    g = p.add_argument_group("training")
    for flag, dest, typ, default, hlp in _TRAIN:
        g.add_argument(flag, dest=dest, type=typ, default=None, help=f"{hlp} (default {default})")
    g = p.add_argument_group("model")
    for flag, dest, typ, default, hlp in _MODEL:
        g.add_argument(flag, dest=dest, type=typ, default=None, help=f"{hlp} (default {default})")
    g = p.add_argument_group("diffusion")
    for flag, dest, typ, default, hlp in _DIFF:
        g.add_argument(flag, dest=dest, type=typ, default=None,
                       help=f"{hlp}" + (f" (default {default})" if default is not None else ""))
    g.add_argument("--learned-variance", dest="learned_variance", action="store_const", const=True, default=None,
                   help="learn the variance (2C outputs, ADM's hybrid loss)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def _ints(text: str, name: str):
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--{name} expects comma-separated integers, got {text!r}") from None


def _given(args, table) -> dict:
    out = {}
    for _, dest, _, _, _ in table:
        v = getattr(args, dest)
        if v is not None:
            out[dest] = v
    return out


def run(args) -> int:
    import torch

    from ..models.checkpoint import diffusion_config, read_config
    from ..models.config import ModelConfig
    from ..training.train import TrainConfig, train

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available in this torch; use --device cpu")
    tr = _given(args, _TRAIN)
    if args.data is not None:
        tr["data"] = args.data
    mo = _given(args, _MODEL)
    for key in ("channel_mult", "attention_resolutions"):
        if key in mo:
            mo[key] = _ints(mo[key], key.replace("_", "-"))
    skip = mo.pop("input_skip", None)
    if skip not in (None, "auto", "on", "off"):
        raise UsageError(f"--input-skip must be on, off or auto, got {skip!r}")
    di = _given(args, _DIFF)
    if di.get("prediction") == "flow" and "beta_schedule" in di:
        raise UsageError("--beta-schedule applies to VP models; a rectified-flow model (--prediction flow) has no betas")
    if args.learned_variance:
        di["learned_variance"] = True
    if "pfgm_D" in di:
        from ..core.pfgm import check_D

        try:
            D = check_D(di.pop("pfgm_D"))
        except ValueError as e:
            raise UsageError(f"--pfgm-D: {e}") from None
        if di.get("prediction", "edm") not in ("edm",):
            raise UsageError(f"--pfgm-D trains an EDM-preconditioned denoiser; drop --prediction {di['prediction']}")
        di["prediction"] = "edm"
        if math.isfinite(D):
            di["pfgm_D"] = D
    if di.get("prediction") == "edm" and ("beta_schedule" in di or "shift" in di):
        raise UsageError("--beta-schedule and --shift do not apply to an EDM / PFGM++ model (--prediction edm, --pfgm-D)")
    if args.resume:
        from pathlib import Path

        if not (Path(args.out) / "train_state.safetensors").exists():
            raise UsageError(f"{args.out}: nothing to resume (no train_state.safetensors); drop --resume to start a new run")
        rec = read_config(args.out)
        cfg = TrainConfig.from_dict({**rec["training"]["options"], **tr})
        if skip in ("on", "off"):
            mo["input_skip"] = skip == "on"
        model = ModelConfig.from_dict({**rec["model"], **mo})
        diffusion = diffusion_config(**{**rec["diffusion"], **di})
    else:
        cfg = TrainConfig(**{"data": "digits", **{d: v for _, d, _, v, _ in _TRAIN}, **tr})
        mdef = {d: v for _, d, _, v, _ in _MODEL if d != "input_skip"}
        mdef["channel_mult"] = _ints(mdef["channel_mult"], "channel-mult")
        mdef["attention_resolutions"] = []
        if skip in ("on", "off"):
            mo["input_skip"] = skip == "on"
        elif mo.get("arch", mdef["arch"]) == "mlp":  # auto: on when the trunk is narrower than the data
            from ..data import load_dataset

            dim = math.prod(load_dataset(cfg.data, toy_n=cfg.toy_n, toy_seed=cfg.seed).shape)
            mo["input_skip"] = mo.get("width", mdef["width"]) < dim
        model = ModelConfig(**{**mdef, **mo})
        diffusion = diffusion_config(**{**{d: v for _, d, _, v, _ in _DIFF}, **di})
        model = ModelConfig.from_dict({**model.to_dict(), "learned_variance": diffusion["learned_variance"]})
    command = "diffusion-es " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("diffusion-es") else ""
    summary = train(args.out, cfg, model, diffusion, device=args.device, resume=args.resume,
                    progress=not args.no_progress, command=command)
    if args.json:
        from .common import print_json

        print_json(summary)
    else:
        print(f"trained {summary['step']} steps in {summary['train_seconds']:.0f} s: final loss {summary['final_loss']:.4f}"
              + (f", held-out loss (EMA) {summary['heldout_loss_ema']:.4f}" if summary.get("heldout_loss_ema") else "")
              + f"; checkpoint in {summary['out']}", file=sys.stderr)
    return 0
