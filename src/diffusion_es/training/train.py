"""Training loop for small VP diffusion models: simple loss (+ ADM's variational term with learned variance),
AdamW, EMA, gradient clipping, DDPM-IP input perturbation, deterministic seeding and exact resume.

Determinism: every random draw comes from explicit generators created from ``seed`` (``noise``: timesteps,
ε and the IP perturbation ξ; ``data``: the epoch permutations), plus the global torch RNG (initialisation and
dropout) which is forked, seeded and restored around the run. A checkpoint stores all of them together with
the position in the current permutation, so ``resume`` continues bit for bit where a killed run stopped.

Objective (ADM / improved DDPM): with x_t = √ᾱ_t x_0 + √(1−ᾱ_t)(ε + γξ) and t ~ U{0..T−1},
``L = mean‖f_θ(x_t, t) − target‖² + vlb_weight · T · L_t`` where the target is ε, x_0 or
v = √ᾱ ε − √(1−ᾱ) x_0, and L_t (bits per dimension, only with learned variance) is the KL between the true
posterior q(x_{t−1}|x_t, x_0) and p_θ(x_{t−1}|x_t) with the model's mean frozen (stop-gradient) and its learned
log-variance, or at t = 0 the discretized Gaussian negative log-likelihood of x_0.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..io import atomic_path
from ..models.checkpoint import FORMAT, build_model, diffusion_config, read_config, save_checkpoint
from ..models.config import ModelConfig
from ..core.schedules import VPSchedule

__all__ = [
    "TrainConfig",
    "train",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "diffusion_tables",
    "diffusion_loss",
    "lr_at",
]

STATE_FILE = "train_state.safetensors"
LR_SCHEDULES = ("constant", "cosine")
# options that may change when a run is resumed (they do not change the weights of the steps already taken)
_RESUME_FREE = ("steps", "ckpt_every", "log_every", "eval_every", "keep_every")


@dataclass
class TrainConfig:
    """Training options (they round-trip through ``config.json``'s ``training.options``)."""

    data: str = "digits"
    steps: int = 40000
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (to lr_final after warmup)
    lr_final: float = 0.0
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # 0: off
    seed: int = 0
    ip_gamma: float = 0.0  # DDPM-IP input perturbation
    vlb_weight: float = 0.001  # λ of the hybrid loss (learned variance only)
    ckpt_every: int = 2000
    log_every: int = 100
    eval_every: int = 0  # held-out denoising loss of the EMA weights (0: only at the end)
    toy_n: int = 8192
    keep_every: int = 0  # also keep the EMA weights of every N-th step in snapshots/step_N (0: off)

    def __post_init__(self):
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}"),
            (self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip}"),
            (self.ip_gamma >= 0, f"--ip-gamma must be >= 0, got {self.ip_gamma}"),
            (self.vlb_weight >= 0, f"--vlb-weight must be >= 0, got {self.vlb_weight}"),
            (self.warmup >= 0 and self.weight_decay >= 0 and self.lr_final >= 0, "warmup, weight decay and lr_final must be >= 0"),
            (self.ckpt_every >= 1 and self.log_every >= 1 and self.eval_every >= 0, "ckpt/log/eval intervals must be positive"),
            (self.keep_every >= 0, f"--keep-every must be >= 0, got {self.keep_every}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---- the variational bound, from the formulas ---------------------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log1mexp(x):
    """log(1 − e^x) for x < 0, accurate everywhere (Mächler's switch at −log 2)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, half_width: float):
    """log P(x) for data on a grid in [−1, 1] with bins of half-width ``half_width`` (1/255 for 8-bit images),
    under N(mean, e^{2·log_scale}); the outermost bins extend to ±∞. Elementwise, in nats.

    Computed in log space without clamping: log(Φ(b) − Φ(a)) = log Φ(b) + log(1 − Φ(a)/Φ(b)), using the
    mirror image Φ(−a) − Φ(−b) when both ends lie in the upper tail."""
    inv = torch.exp(-log_scale)
    upper = (x - mean + half_width) * inv
    lower = (x - mean - half_width) * inv
    edge = half_width / 2
    lower = torch.where(x < -1 + edge, torch.full_like(lower, -math.inf), lower)
    upper = torch.where(x > 1 - edge, torch.full_like(upper, math.inf), upper)
    flip = lower > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + _log1mexp(torch.clamp(log_a - log_b, max=-1e-300 if x.dtype == torch.float64 else -1e-38))


def diffusion_tables(schedule: VPSchedule, device) -> dict:
    """Per-timestep float64 coefficients (as float32 tensors on ``device``) of the full T-step chain."""
    b = schedule.betas
    ab = schedule.alphas_cumprod
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = b * (1 - ab_prev) / (1 - ab)
    post_logvar_clipped = np.log(np.concatenate([post_var[1:2], post_var[1:]])) if len(b) > 1 else np.log(b)
    t = {
        "sqrt_ab": np.sqrt(ab), "sqrt_1mab": np.sqrt(1 - ab),
        "coef1": b * np.sqrt(ab_prev) / (1 - ab), "coef2": (1 - ab_prev) * np.sqrt(1 - b) / (1 - ab),
        "post_logvar": post_logvar_clipped, "log_beta": np.log(b),
    }
    return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in t.items()}


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def diffusion_loss(net, x0, t, eps, tables, prediction="eps", learned_variance=False, vlb_weight=0.001,
                   levels=256, xi=None, ip_gamma=0.0):
    """The training loss for one batch (t: int64 (B,), eps and xi: like x0). Returns (loss, {"mse", "vb"})."""
    sa, s1 = _bc(tables["sqrt_ab"][t], x0), _bc(tables["sqrt_1mab"][t], x0)
    noise_in = eps if (xi is None or ip_gamma == 0) else eps + ip_gamma * xi
    x_t = sa * x0 + s1 * noise_in
    out = net(x_t, t.to(torch.float32))
    c = x0.shape[1]
    pred = out[:, :c] if learned_variance else out
    if prediction == "eps":
        target = eps
    elif prediction == "x0":
        target = x0
    else:
        target = sa * eps - s1 * x0
    mse = ((pred - target) ** 2).mean()
    terms = {"mse": mse.detach()}
    if not learned_variance:
        return mse, terms
    # the variational term: mean frozen, variance learned (ADM's "learned range")
    p = pred.detach()
    if prediction == "eps":
        x0_hat = (x_t - s1 * p) / sa
    elif prediction == "x0":
        x0_hat = p
    else:
        x0_hat = sa * x_t - s1 * p
    c1, c2 = _bc(tables["coef1"][t], x0), _bc(tables["coef2"][t], x0)
    model_mean = c1 * x0_hat + c2 * x_t
    frac = (out[:, c:] + 1) / 2
    lo, hi = _bc(tables["post_logvar"][t], x0), _bc(tables["log_beta"][t], x0)
    model_logvar = frac * hi + (1 - frac) * lo
    true_mean = c1 * x0 + c2 * x_t
    kl = normal_kl(true_mean, lo, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    half = 1.0 / (levels - 1) if levels and levels > 1 else 1.0 / 255
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar, half).flatten(1).mean(1) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    T = tables["sqrt_ab"].shape[0]
    loss = mse + vlb_weight * T * vb.mean()
    terms["vb"] = vb.mean().detach()
    return loss, terms


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then constant or cosine to ``lr_final``."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup)
        prog = min(1.0, (step - cfg.warmup) / span)
        return cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * prog))
    return cfg.lr


# ---- state I/O --------------------------------------------------------------------------------------------
def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def _save_state(path: Path, net, ema, opt, gens: dict, perm, pos, step, seconds, device) -> None:
    from safetensors.torch import save_file

    t = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    t.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            t[f"opt.{i}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
    for name, g in gens.items():
        t[f"rng.{name}"] = g.get_state().clone()
    t["rng.torch"] = torch.get_rng_state().clone()
    if device.type == "cuda":
        t["rng.cuda"] = torch.cuda.get_rng_state(device).clone()
    t["data.perm"] = perm.cpu().clone()
    meta = {"format": FORMAT + "/train_state", "step": str(step), "pos": str(pos), "train_seconds": repr(seconds)}
    with atomic_path(path) as tmp:
        save_file(t, str(tmp), metadata=meta)


def _load_state(path: Path, net, ema, opt, gens: dict, device):
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path}: corrupt training state ({e.__class__.__name__}); delete it to start over, "
                         "or resume from a copy") from None
    if meta.get("format") != FORMAT + "/train_state":
        raise UsageError(f"{path}: not a diffusion-es training state")
    try:
        net.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
        sd = opt.state_dict()
        state = {}
        for k, v in t.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        sd["state"] = state
        opt.load_state_dict(sd)
        for name, g in gens.items():
            g.set_state(t[f"rng.{name}"])
        torch.set_rng_state(t["rng.torch"])
        if device.type == "cuda" and "rng.cuda" in t:
            torch.cuda.set_rng_state(t["rng.cuda"], device)
        return t["data.perm"], int(meta["pos"]), int(meta["step"]), float(meta.get("train_seconds", 0.0))
    except (KeyError, RuntimeError, ValueError) as e:
        raise UsageError(f"{path}: training state does not match this run's model ({str(e).splitlines()[0][:80]})") from None


# ---- the loop ---------------------------------------------------------------------------------------------
def _eval_heldout(ema, data, tables, prediction, learned_variance, levels, device, max_n=1024, reps=4):
    """Mean simple loss of the EMA weights on held-out data, fixed noise (its own generator)."""
    g = torch.Generator().manual_seed(1234)
    x = data[:max_n]
    tot, n = 0.0, 0
    with torch.no_grad():
        for _ in range(reps):
            for i in range(0, len(x), 512):
                xb = x[i:i + 512].to(device)
                t = torch.randint(0, tables["sqrt_ab"].shape[0], (len(xb),), generator=g).to(device)
                eps = torch.randn(xb.shape, generator=g).to(device)
                _, terms = diffusion_loss(ema, xb, t, eps, tables, prediction, learned_variance, 0.0, levels)
                tot += float(terms["mse"]) * len(xb)
                n += len(xb)
    return tot / n


def train(out_dir, cfg: TrainConfig = None, model: Optional[ModelConfig] = None, diffusion: Optional[dict] = None,
          device="cpu", resume: bool = False, progress: bool = True, command: str = "",
          callback: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Train a model into ``out_dir`` (checkpoint folder; see :mod:`diffusion_es.models.checkpoint`).

    With ``resume=True`` the run recorded in ``out_dir`` continues from its last checkpoint (only the options in
    ``_RESUME_FREE``, e.g. ``steps``, may change; ``cfg``/``model``/``diffusion`` of None mean "as recorded").
    ``callback(step, info)`` runs after every step (``step`` counts finished steps). Returns a summary dict.
    """
    out = Path(out_dir)
    device = torch.device(device)
    state_path = out / STATE_FILE
    if resume:
        if not state_path.exists():
            raise UsageError(f"{out}: nothing to resume (no {STATE_FILE}); drop --resume to start a new run")
        rec = read_config(out)
        rec_cfg = TrainConfig.from_dict(rec.get("training", {}).get("options", {}))
        if cfg is not None:
            for f in fields(TrainConfig):
                if f.name not in _RESUME_FREE and getattr(cfg, f.name) != getattr(rec_cfg, f.name):
                    raise UsageError(f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)!r} differs from the run being "
                                     f"resumed ({getattr(rec_cfg, f.name)!r}); resume with the same options")
            cfg = TrainConfig.from_dict({**rec_cfg.to_dict(), **{k: getattr(cfg, k) for k in _RESUME_FREE}})
        else:
            cfg = rec_cfg
        rec_model = ModelConfig.from_dict(rec["model"])
        if model is not None and model != rec_model:
            raise UsageError("the model options differ from the run being resumed; resume with the same options")
        model = rec_model
        if diffusion is not None and diffusion != rec["diffusion"]:
            raise UsageError("the diffusion options differ from the run being resumed; resume with the same options")
        diffusion = rec["diffusion"]
        history = list(rec.get("training", {}).get("commands", []))
    else:
        history = []
        if state_path.exists():
            raise UsageError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        cfg = cfg or TrainConfig()
        diffusion = diffusion or diffusion_config()
        model = model or ModelConfig()
    diffusion = diffusion_config(**diffusion)
    if command:
        history.append(command)

    from ..data import load_dataset

    ds = load_dataset(cfg.data, toy_n=cfg.toy_n, toy_seed=cfg.seed)
    if model.data_shape != ds.shape or model.learned_variance != diffusion["learned_variance"]:
        model = ModelConfig.from_dict({**model.to_dict(), "data_shape": list(ds.shape),
                                       "learned_variance": diffusion["learned_variance"]})
    schedule = VPSchedule.from_name(diffusion["beta_schedule"], diffusion["T"])
    tables = diffusion_tables(schedule, device)
    data = ds.train.to(device)
    n = len(data)
    if n < 1:
        raise UsageError(f"--data {cfg.data}: the dataset is empty")

    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed)
        net = build_model(model).to(device)
        ema = copy.deepcopy(net).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gens = {"noise": torch.Generator().manual_seed(cfg.seed),
                "data": torch.Generator().manual_seed(cfg.seed + 0x5EED)}
        perm, pos, start, seconds = torch.randperm(n, generator=gens["data"]), 0, 0, 0.0
        if resume:
            perm, pos, start, seconds = _load_state(state_path, net, ema, opt, gens, device)
            if len(perm) != n:
                raise UsageError(f"{out}: the dataset has {n} items, the run being resumed had {len(perm)}")
        return _loop(out, cfg, model, diffusion, ds, data, tables, net, ema, opt, gens, perm, pos, start, seconds,
                     device, progress, history, callback)


def _loop(out, cfg, model, diffusion, ds, data, tables, net, ema, opt, gens, perm, pos, start, seconds, device,
          progress, history, callback):
    from tqdm import tqdm

    n = len(data)
    B, T = cfg.batch_size, diffusion["T"]
    pred, lv = diffusion["prediction"], diffusion["learned_variance"]
    params = [p for p in net.parameters()]
    ema_params = [p for p in ema.parameters()]
    ema_buffers = list(zip(ema.buffers(), net.buffers()))
    perm_dev = perm.to(device)
    log_path = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    loss_acc = torch.zeros((), device=device)
    acc_n, last_loss, heldout = 0, float("nan"), None
    t0 = time.perf_counter()
    seconds0, step0 = seconds, start

    def info_dict(step):
        elapsed = seconds + (time.perf_counter() - t0)
        return {"format": FORMAT, "model": model.to_dict(), "diffusion": diffusion, "data": ds.description,
                "training": {"options": cfg.to_dict(), "step": step, "final_loss": last_loss,
                             "heldout_loss_ema": heldout, "train_seconds": round(elapsed, 2),
                             "hardware": _hardware(device), "commands": history,
                             "params": sum(p.numel() for p in params)}}

    def checkpoint(step):
        elapsed = seconds + (time.perf_counter() - t0)
        # the training state first, then model.safetensors and config.json (each file atomic)
        _save_state(out / STATE_FILE, net, ema, opt, gens, perm, pos, step, elapsed, device)
        save_checkpoint(out, info_dict(step), ema, net)

    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, file=sys.stderr, dynamic_ncols=True,
               unit="step", mininterval=0.5)
    step = start
    try:
        while step < cfg.steps:
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            # data order: consecutive slices of seeded permutations (the stream continues across epochs)
            if pos + B <= n:
                idx = perm_dev[pos:pos + B]
                pos += B
            else:
                parts = [perm_dev[pos:]]
                need = B - (n - pos)
                while need > 0:
                    perm = torch.randperm(n, generator=gens["data"])
                    perm_dev = perm.to(device)
                    take = min(need, n)
                    parts.append(perm_dev[:take])
                    pos, need = take, need - take
                idx = torch.cat(parts)
            x0 = data[idx]
            t = torch.randint(0, T, (B,), generator=gens["noise"])
            eps = torch.randn(x0.shape, generator=gens["noise"])
            xi = torch.randn(x0.shape, generator=gens["noise"]) if cfg.ip_gamma > 0 else None
            if device.type != "cpu":
                t, eps = t.to(device, non_blocking=True), eps.to(device, non_blocking=True)
                xi = xi.to(device, non_blocking=True) if xi is not None else None
            loss, terms = diffusion_loss(net, x0, t, eps, tables, pred, lv, cfg.vlb_weight, ds.levels, xi, cfg.ip_gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)
                for be, bn in ema_buffers:
                    be.copy_(bn)
            loss_acc += loss.detach()
            acc_n += 1
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_loss = float(loss_acc) / acc_n
                loss_acc.zero_()
                acc_n = 0
                if cfg.eval_every and step % cfg.eval_every == 0 and ds.heldout is not None:
                    heldout = _eval_heldout(ema, ds.heldout, tables, pred, lv, ds.levels, device)
                el = seconds + time.perf_counter() - t0
                rec = {"step": step, "loss": round(last_loss, 6), "lr": lr, "seconds": round(el, 2),
                       "steps_per_s": round((step - step0) / max(1e-9, el - seconds0), 2)}
                if heldout is not None:
                    rec["heldout_loss_ema"] = round(heldout, 6)
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                if step == cfg.steps and ds.heldout is not None:
                    heldout = _eval_heldout(ema, ds.heldout, tables, pred, lv, ds.levels, device)
                checkpoint(step)
            if cfg.keep_every and step % cfg.keep_every == 0:
                save_checkpoint(out / "snapshots" / f"step_{step:07d}", info_dict(step), ema)
            if callback is not None:
                callback(step, {"loss": terms["mse"], "lr": lr})
    finally:
        bar.close()
    summary = info_dict(step)["training"]
    summary["out"] = str(out)
    return summary
