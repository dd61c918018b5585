"""``diffusion-es train``: train a small diffusion model into a checkpoint folder (resumable)."""

from __future__ import annotations

import math

from ..errors import UsageError
from .common import (add_device_arg, add_progress_arg, add_threads_arg, command_line, float_in, int_in, int_list,
                     nonneg_float, positive_float, seed_value)

_BIG = 10**9  # steps and intervals


def _choice(*names):
    """A parse-time type for a fixed set of names (a choices list that keeps the default None of --resume)."""
    def check(text: str) -> str:
        if text not in names:
            import argparse

            raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(names)}")
        return text

    check.__name__ = "choice"
    return check


def _pfgm_D(text: str) -> str:
    """A parse-time type for --pfgm-D: a positive number or inf (kept as text; the config stores a float or none)."""
    import argparse

    from ..core.pfgm import check_D

    try:
        check_D(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# (flag, dest, type, default, help): defaults are applied here so that --resume can tell given from default.
# Every type checks its value (finite, range) at parse time; upper bounds refuse typos that would allocate
# absurd amounts of memory.
_TRAIN = [
    ("--steps", "steps", int_in(1, _BIG), 40000, "training steps (with --resume: the new total)"),
    ("--batch-size", "batch_size", int_in(1, 1_000_000), 128, "batch size"),
    ("--lr", "lr", positive_float, 1e-3, "AdamW learning rate (peak)"),
    ("--lr-schedule", "lr_schedule", _choice("constant", "cosine"), "constant",
     "constant | cosine (decays to --lr-final)"),
    ("--lr-final", "lr_final", nonneg_float, 0.0, "final learning rate of the cosine schedule"),
    ("--warmup", "warmup", int_in(0, _BIG), 200, "linear learning-rate warmup steps"),
    ("--weight-decay", "weight_decay", nonneg_float, 0.0, "AdamW weight decay"),
    ("--ema-decay", "ema_decay", float_in(0.0, 1.0, hi_open=True), 0.999, "EMA decay per step"),
    ("--grad-clip", "grad_clip", nonneg_float, 1.0, "clip the gradient norm (0: off)"),
    ("--seed", "seed", seed_value, 0, "seed of initialisation, data order, timesteps and noise"),
    ("--ip-gamma", "ip_gamma", nonneg_float, 0.0, "DDPM-IP input perturbation gamma (0: off; the paper's is 0.1)"),
    ("--vlb-weight", "vlb_weight", nonneg_float, 0.001, "lambda of ADM's hybrid loss (with --learned-variance)"),
    ("--ckpt-every", "ckpt_every", int_in(1, _BIG), 2000, "checkpoint interval (steps)"),
    ("--log-every", "log_every", int_in(1, _BIG), 100, "interval of log.jsonl lines and the progress bar's loss"),
    ("--eval-every", "eval_every", int_in(0, _BIG), 0,
     "held-out loss of the EMA weights every N steps (0: at the end)"),
    ("--keep-every", "keep_every", int_in(0, _BIG), 0,
     "also keep the EMA weights of every N-th step in OUT/snapshots/ (0: off)"),
    ("--toy-n", "toy_n", int_in(2, 10_000_000), 8192, "number of points of a toy:NAME dataset"),
]
_MODEL = [
    ("--arch", "arch", _choice("mlp", "unet"), "mlp", "mlp (residual MLP) | unet"),
    ("--width", "width", int_in(1, 65_536), 512, "MLP width"),
    ("--blocks", "blocks", int_in(1, 1000), 4, "MLP residual blocks"),
    ("--input-skip", "input_skip", _choice("auto", "on", "off"), "auto",
     "MLP: a time-gated skip from the input to the output: on | off | auto (on when --width is below the data "
     "dimension)"),
    ("--channels", "channels", int_in(1, 8192), 64, "UNet base channels"),
    ("--channel-mult", "channel_mult", int_list(1, 64), "1,2,2",
     "UNet channel multipliers per level, e.g. 1,2,2"),
    ("--num-res-blocks", "num_res_blocks", int_in(1, 100), 2, "UNet residual blocks per level"),
    ("--attention-resolutions", "attention_resolutions", int_list(1, 65_536, allow_empty=True), "",
     "UNet self-attention resolutions, e.g. 16,8"),
    ("--time-embed-dim", "time_embed_dim", int_in(0, 65_536), 0, "time embedding width (0: auto)"),
    ("--dropout", "dropout", float_in(0.0, 1.0, hi_open=True), 0.0, "dropout"),
]
_DIFF = [
    ("--T", "T", int_in(1, 100_000), 1000, "diffusion steps of training"),
    ("--beta-schedule", "beta_schedule", _choice("linear", "cosine"), "linear", "linear | cosine"),
    ("--prediction", "prediction", _choice("eps", "v", "x0", "flow", "edm"), "eps", "eps | v | x0 (VP diffusion) | "
     "flow (rectified flow: x_t = (1-t) x_0 + t eps, velocity target eps - x_0, t ~ U(0,1); --T sets the time "
     "scale) | edm (EDM preconditioning, log-normal sigma, Gaussian kernel: PFGM++ with D = inf)"),
    ("--shift", "shift", float_in(1e-3, 1e3), None,
     "flow models: the SD3 time shift of their default sampling grid (1: none)"),
    ("--pfgm-D", "pfgm_D", _pfgm_D, None, "PFGM++: train with the PFGM++ perturbation kernel of D augmented dimensions "
     "(r = sigma sqrt(D)) and EDM's preconditioned denoiser loss; 'inf' is EDM's Gaussian kernel, the same as "
     "--prediction edm"),
]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a small diffusion model (resumable, EMA, checkpoints)",
                       description="Train a small diffusion model (VP ε / v / x0, rectified flow, or EDM / PFGM++: "
                                   "--prediction) into a checkpoint folder "
                                   "(config.json + model.safetensors + train_state.safetensors).")
    # every help text states its default: the parser's defaults are None so --resume can tell set options apart
    p.add_argument("--data", default=None, help="digits | toy:8gaussians|moons|spiral | mnist:PATH | npz:PATH | PATH "
                   "(default digits)")
    p.add_argument("--out", required=True, help="checkpoint folder (new, or the one to --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    g = p.add_argument_group("training")
    for flag, dest, typ, default, hlp in _TRAIN:
        g.add_argument(flag, dest=dest, type=typ, default=None,
                       help=f"{hlp} (default {default if default != '' else 'none'})")
    g = p.add_argument_group("model")
    for flag, dest, typ, default, hlp in _MODEL:
        g.add_argument(flag, dest=dest, type=typ, default=None,
                       help=f"{hlp} (default {default if default != '' else 'none'})")
    g = p.add_argument_group("diffusion")
    for flag, dest, typ, default, hlp in _DIFF:
        g.add_argument(flag, dest=dest, type=typ, default=None,
                       help=f"{hlp}" + (f" (default {default})" if default is not None else ""))
    g.add_argument("--learned-variance", dest="learned_variance", action="store_const", const=True, default=None,
                   help="learn the variance (2C outputs, ADM's hybrid loss)")
    add_device_arg(p)
    add_threads_arg(p)
    add_progress_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def _given(args, table) -> dict:
    out = {}
    for _, dest, _, _, _ in table:
        v = getattr(args, dest)
        if v is not None:
            out[dest] = v
    return out


def _check_given_options_apply(given: dict, cfg, diffusion: dict) -> None:
    """An option that the run would ignore is refused (a typo or a misunderstanding, never silently nothing)."""
    if "lr_final" in given and cfg.lr_schedule != "cosine":
        raise UsageError("--lr-final is where the cosine schedule ends; add --lr-schedule cosine, or drop it")
    if cfg.lr_schedule == "cosine" and cfg.lr_final > cfg.lr:
        raise UsageError(f"--lr-final {cfg.lr_final:g} is above the peak --lr {cfg.lr:g}: the cosine schedule decays "
                         f"from --lr to --lr-final")
    if "vlb_weight" in given and not diffusion.get("learned_variance"):
        raise UsageError("--vlb-weight weighs the variational term of a learned-variance model; add "
                         "--learned-variance, or drop it")


def run(args) -> int:
    from ..io import check_output
    from ..models.checkpoint import diffusion_config, read_config
    from ..models.config import ModelConfig
    from ..training.train import TrainConfig, train

    check_output(args.out, "dir", command="train")
    tr = _given(args, _TRAIN)
    if args.data is not None:
        tr["data"] = args.data
    mo = _given(args, _MODEL)
    skip = mo.pop("input_skip", None)
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
        mdef["channel_mult"] = int_list(1, 64)(mdef["channel_mult"])
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
    _check_given_options_apply(tr, cfg, diffusion)
    command = command_line(args)
    from ..store import output_lock

    with output_lock(args.out):  # one training run per folder at a time
        summary = train(args.out, cfg, model, diffusion, device=args.device, resume=args.resume,
                        progress=not args.no_progress, command=command)
    if args.json:
        from .common import print_json

        print_json(summary)
    else:
        loss = summary["final_loss"]
        print(f"trained {summary['step']} steps in {summary['train_seconds']:.0f} s: final loss "
              f"{'(not logged)' if loss is None else format(loss, '.4f')}"
              + (f", held-out loss (EMA) {summary['heldout_loss_ema']:.4f}" if summary.get("heldout_loss_ema") else "")
              + f"; checkpoint in {summary['out']}")
    return 0


def interrupted_message(args) -> str:
    """What an interrupted ``train`` kept, read from its folder: nothing (no checkpoint yet: start again without
    --resume), a checkpoint to resume from, or a finished run (nothing to resume)."""
    from pathlib import Path

    from ..models.checkpoint import read_config

    out = Path(getattr(args, "out", None) or ".")
    if not (out / "train_state.safetensors").exists():
        return "no checkpoint was written yet: rerun without --resume to start again"
    try:
        training = read_config(out)["training"]
        step, steps = int(training["step"]), int(training["options"]["steps"])
    except Exception:  # noqa: BLE001 - a folder we cannot read: say what holds in general
        return "finished work was kept (train saves the step it was at; rerun with the same arguments and --resume)"
    if step >= steps:
        return f"training had finished: the checkpoint at step {step} of {steps} is complete (nothing to resume)"
    return (f"the checkpoint at step {step} of {steps} was kept; rerun with the same arguments and --resume to "
            f"continue")

