"""Training loop for small VP diffusion models: simple loss (+ ADM's variational term with learned variance),
AdamW, EMA, gradient clipping, DDPM-IP input perturbation, deterministic seeding and exact resume.

Determinism: every random draw comes from explicit generators created from ``seed`` (``noise``: timesteps,
ε and the IP perturbation ξ; ``data``: the epoch permutations), plus the global torch RNG (initialisation and
dropout) which is forked, seeded and restored around the run. A checkpoint stores all of them together with
the position in the current permutation, so ``resume`` continues bit for bit where a killed run stopped.

The objective is in :mod:`.losses`: VP diffusion (ε / x0 / v, learned variance) or, with
``diffusion["process"] == "flow"`` (``--prediction flow``), rectified flow with t ~ U(0, 1); with
``diffusion["process"] == "edm"`` (``--pfgm-D D`` / ``--prediction edm``) EDM's preconditioned denoiser loss with
log-normal σ and the PFGM++ perturbation kernel for D (D = ∞: EDM's Gaussian).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import UsageError
from ..io import atomic_path, json_text
from ..progress import bar_interval
from ..models.checkpoint import FORMAT, build_model, diffusion_config, read_config, save_checkpoint
from ..models.config import ModelConfig
from ..core.pfgm import EDMSchedule, generator_scales
from ..core.schedules import VPSchedule
from .losses import diffusion_loss, diffusion_tables, edm_loss, flow_loss

__all__ = ["TrainConfig", "train", "lr_at", "STATE_FILE"]

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
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.ip_gamma >= 0, f"ip_gamma must be >= 0, got {self.ip_gamma}"),
            (self.vlb_weight >= 0, f"vlb_weight must be >= 0, got {self.vlb_weight}"),
            (self.warmup >= 0 and self.weight_decay >= 0 and self.lr_final >= 0, "warmup, weight decay and lr_final must be >= 0"),
            (self.ckpt_every >= 1 and self.log_every >= 1 and self.eval_every >= 0, "ckpt/log/eval intervals must be positive"),
            (self.keep_every >= 0, f"keep_every must be >= 0, got {self.keep_every}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
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
def hardware(device) -> str:
    """What a job ran on, for its records: the GPU's name, or the CPU with its core and torch thread counts."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    n = torch.get_num_threads()
    return (f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores), "
            f"{n} torch thread{'' if n == 1 else 's'} (torch {torch.__version__})")


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
def edm_schedule(diffusion: dict) -> EDMSchedule:
    """The :class:`EDMSchedule` of an EDM / PFGM++ diffusion section."""
    return EDMSchedule(**{k: diffusion[k] for k in ("pfgm_D", "sigma_min", "sigma_max", "sigma_data", "time_scale",
                                                   "P_mean", "P_std")})


def _edm_batch(g: torch.Generator, x0: torch.Tensor, sched: EDMSchedule):
    """(σ, z, √w) of one EDM / PFGM++ training batch, all from the generator ``g`` (CPU), in this order."""
    B = x0.shape[0]
    sigma = (sched.P_mean + sched.P_std * torch.randn((B,), generator=g)).exp()
    z = torch.randn(x0.shape, generator=g)
    scale = generator_scales(g, B, sched.pfgm_D)
    return sigma, z, None if scale is None else scale.to(torch.float32)


def _eval_heldout(ema, data, tables, diffusion, levels, device, max_n=1024, reps=4):
    """Mean simple loss of the EMA weights on held-out data, fixed noise (its own generator)."""
    g = torch.Generator().manual_seed(1234)
    x = data[:max_n]
    tot, n = 0.0, 0
    with torch.no_grad():
        for _ in range(reps):
            for i in range(0, len(x), 512):
                xb = x[i:i + 512].to(device)
                if diffusion.get("process") == "edm":
                    sched = edm_schedule(diffusion)
                    sigma, z, scale = _edm_batch(g, xb, sched)
                    scale = None if scale is None else scale.to(device)
                    _, terms = edm_loss(ema, xb, sigma.to(device), z.to(device), scale, sched)
                    tot += float(terms["mse"]) * len(xb)
                    n += len(xb)
                    continue
                if tables is None:  # rectified flow
                    t = torch.rand((len(xb),), generator=g).to(device)
                    eps = torch.randn(xb.shape, generator=g).to(device)
                    _, terms = flow_loss(ema, xb, t, eps, diffusion["T"])
                    tot += float(terms["mse"]) * len(xb)
                    n += len(xb)
                    continue
                t = torch.randint(0, tables["sqrt_ab"].shape[0], (len(xb),), generator=g).to(device)
                eps = torch.randn(xb.shape, generator=g).to(device)
                _, terms = diffusion_loss(ema, xb, t, eps, tables, diffusion["prediction"],
                                          diffusion["learned_variance"], 0.0, levels)
                tot += float(terms["mse"]) * len(xb)
                n += len(xb)
    return tot / n


@dataclass
class _Run:
    """Everything one training run carries between steps (what a checkpoint stores, plus the fixed setup)."""

    out: Path
    cfg: "TrainConfig"
    model: ModelConfig
    diffusion: dict
    ds: object
    tables: Optional[dict]  # None for rectified flow and EDM / PFGM++
    net: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    gens: dict
    perm: torch.Tensor
    pos: int
    step: int
    seconds: float
    device: torch.device
    history: list

    def __post_init__(self):
        self.data = self.ds.train.to(self.device)
        self.perm_dev = self.perm.to(self.device)
        self.params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.ema_buffers = list(zip(self.ema.buffers(), self.net.buffers()))
        self.t0, self.seconds0, self.step0 = time.perf_counter(), self.seconds, self.step
        self.saved_step = self.step  # the step of the last checkpoint on disk (0: none yet)
        self.heldout = None
        # log.jsonl as of the state being continued: lines a killed run wrote after its last checkpoint are
        # dropped (the resumed run writes them again), and a new run starts a new log
        self.last_loss = _trim_log(self.out / "log.jsonl", self.step)

    def elapsed(self) -> float:
        return self.seconds0 + (time.perf_counter() - self.t0)

    def next_indices(self) -> torch.Tensor:
        """Data order: consecutive slices of seeded permutations (the stream continues across epochs)."""
        n, B = len(self.data), self.cfg.batch_size
        if self.pos + B <= n:
            idx = self.perm_dev[self.pos:self.pos + B]
            self.pos += B
            return idx
        parts, need = [self.perm_dev[self.pos:]], B - (n - self.pos)
        while need > 0:
            self.perm = torch.randperm(n, generator=self.gens["data"])
            self.perm_dev = self.perm.to(self.device)
            take = min(need, n)
            parts.append(self.perm_dev[:take])
            self.pos, need = take, need - take
        return torch.cat(parts)

    def train_step(self, lr: float):
        """One optimiser step at learning rate ``lr`` (loss, EMA update); returns (loss, loss terms)."""
        cfg, g = self.cfg, self.gens["noise"]
        for group in self.opt.param_groups:
            group["lr"] = lr
        x0 = self.data[self.next_indices()]
        if self.diffusion.get("process") == "edm":
            sched = edm_schedule(self.diffusion)
            sigma, z, scale = _edm_batch(g, x0, sched)
            if self.device.type != "cpu":
                sigma, z = sigma.to(self.device), z.to(self.device)
                scale = None if scale is None else scale.to(self.device)
            loss, terms = edm_loss(self.net, x0, sigma, z, scale, sched)
            return self._update(loss, terms)
        flow = self.tables is None
        t = (torch.rand((cfg.batch_size,), generator=g) if flow
             else torch.randint(0, self.diffusion["T"], (cfg.batch_size,), generator=g))
        eps = torch.randn(x0.shape, generator=g)
        xi = torch.randn(x0.shape, generator=g) if cfg.ip_gamma > 0 else None
        if self.device.type != "cpu":
            t, eps = t.to(self.device, non_blocking=True), eps.to(self.device, non_blocking=True)
            xi = xi.to(self.device, non_blocking=True) if xi is not None else None
        if flow:
            loss, terms = flow_loss(self.net, x0, t, eps, self.diffusion["T"], xi, cfg.ip_gamma)
        else:
            loss, terms = diffusion_loss(self.net, x0, t, eps, self.tables, self.diffusion["prediction"],
                                         self.diffusion["learned_variance"], cfg.vlb_weight, self.ds.levels, xi,
                                         cfg.ip_gamma)
        return self._update(loss, terms)

    def _update(self, loss, terms):
        """Backward, clip, optimiser step, EMA update; returns (loss, terms)."""
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - cfg.ema_decay)
            for be, bn in self.ema_buffers:
                be.copy_(bn)
        self.step += 1
        return loss, terms

    def eval_heldout(self) -> None:
        if self.ds.heldout is not None:
            self.heldout = _eval_heldout(self.ema, self.ds.heldout, self.tables, self.diffusion, self.ds.levels,
                                         self.device)

    def info(self) -> dict:
        """The checkpoint's config.json."""
        final = self.last_loss if math.isfinite(self.last_loss) else None  # (JSON has no NaN)
        return {"format": FORMAT, "model": self.model.to_dict(), "diffusion": self.diffusion,
                "data": self.ds.description,
                "training": {"options": self.cfg.to_dict(), "step": self.step, "final_loss": final,
                             "heldout_loss_ema": self.heldout, "train_seconds": round(self.elapsed(), 2),
                             "hardware": hardware(self.device), "commands": self.history,
                             "params": sum(p.numel() for p in self.params)}}

    def checkpoint(self) -> None:
        """The training state first, then model.safetensors and config.json (each file atomic)."""
        self.saved_step = self.step
        _save_state(self.out / STATE_FILE, self.net, self.ema, self.opt, self.gens, self.perm, self.pos, self.step,
                    self.elapsed(), self.device)
        save_checkpoint(self.out, self.info(), self.ema, self.net)

    def log(self, lr: float, mean_loss: float) -> None:
        self.last_loss = mean_loss
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            self.eval_heldout()
        el = self.elapsed()
        rec = {"step": self.step, "loss": mean_loss, "lr": lr, "seconds": round(el, 2),  # (the loss unrounded: a
               # resumed run takes its final loss from here)
               "steps_per_s": round((self.step - self.step0) / max(1e-9, el - self.seconds0), 2)}
        if self.heldout is not None:
            rec["heldout_loss_ema"] = round(self.heldout, 6)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json_text(rec, indent=None) + "\n")  # strict JSON: a NaN loss is null


def _refuse_changed(what: str, given: dict, recorded: dict) -> None:
    """One line naming the first option that differs from the run being resumed (as the CLI spells it)."""
    for k in sorted(set(given) | set(recorded)):
        if given.get(k) != recorded.get(k):
            raise UsageError(f"--{k.replace('_', '-')} {given.get(k)!r} differs from the run being resumed "
                             f"({recorded.get(k)!r}; {what} options); resume with the same options")
    raise UsageError(f"the {what} options differ from the run being resumed; resume with the same options")


def _trim_log(path: Path, step: int) -> float:
    """Keep the lines of ``log.jsonl`` up to ``step`` (all of them for a new run at step 0: none); return the loss
    of the last one kept (NaN if none). Rewritten atomically, and only when something is dropped."""
    from ..io import atomic_path

    if not path.exists():
        return float("nan")
    text = path.read_text()
    keep, loss = [], float("nan")
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            if int(rec["step"]) <= step:
                keep.append(line + "\n")
                loss = float("nan") if rec["loss"] is None else float(rec["loss"])  # null: a NaN loss
        except (ValueError, KeyError, TypeError):  # a line cut by a kill: dropped
            continue
    if "".join(keep) != text:
        with atomic_path(path, suffix=".jsonl") as tmp:
            Path(tmp).write_text("".join(keep))
    return loss


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
            given, recorded = cfg.to_dict(), rec_cfg.to_dict()
            if any(given[k] != recorded[k] for k in given if k not in _RESUME_FREE):
                _refuse_changed("training", {k: v for k, v in given.items() if k not in _RESUME_FREE},
                                {k: v for k, v in recorded.items() if k not in _RESUME_FREE})
            cfg = TrainConfig.from_dict({**rec_cfg.to_dict(), **{k: getattr(cfg, k) for k in _RESUME_FREE}})
        else:
            cfg = rec_cfg
        rec_model = ModelConfig.from_dict(rec["model"])
        if model is not None and model != rec_model:
            _refuse_changed("model", model.to_dict(), rec_model.to_dict())
        model = rec_model
        if diffusion is not None and diffusion != rec["diffusion"]:
            _refuse_changed("diffusion", dict(diffusion), dict(rec["diffusion"]))
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
    problem = model.representation_problem(diffusion["prediction"])
    if problem and not resume:
        raise UsageError(problem)
    if diffusion.get("process") in ("flow", "edm"):
        if diffusion.get("process") == "edm" and cfg.ip_gamma > 0:
            raise UsageError("--ip-gamma (DDPM-IP) is defined for VP and flow training; an EDM / PFGM++ model has none")
        tables = None
    else:
        tables = diffusion_tables(VPSchedule.from_name(diffusion["beta_schedule"], diffusion["T"]), device)
    n = len(ds.train)
    if n < 1:
        raise UsageError(f"data {cfg.data}: the dataset is empty")

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
            saved = rec.get("training", {}).get("step")  # the step of the last complete checkpoint
            if start > cfg.steps or (start == cfg.steps and saved == start):
                raise UsageError(f"{out} is already at step {start}, not below --steps {cfg.steps}: nothing to "
                                 f"train; give --steps above {start} to train further")
        run = _Run(out, cfg, model, diffusion, ds, tables, net, ema, opt, gens, perm, pos, start, seconds, device,
                   history)
        return _loop(run, progress, callback)


def _diverged(run: "_Run", lr: float) -> UsageError:
    """The one line for a run whose loss or weights became NaN or inf (raised before it is logged or saved)."""
    return UsageError(f"training diverged at step {run.step} (the loss or the weights became NaN or inf, learning "
                      f"rate {lr:g}); {run.out} keeps the last good checkpoint"
                      f"{f' (step {run.saved_step})' if run.saved_step else ' (none: nothing was saved)'}; train "
                      f"again with a lower --lr (or --grad-clip) into a new --out")


class _StopAtStepEnd:
    """While training (main thread only): Ctrl-C or SIGTERM lets the step in progress finish (or the next one, when
    the signal comes after a step's check, e.g. in the callback), then the loop writes a checkpoint at that step and
    raises KeyboardInterrupt, so an interrupt loses no finished step (it lost every step since the last
    checkpoint). A second signal interrupts at once. The previous handlers are put back. Not kept: the losses of the
    log window in progress, so the resumed run's first log line averages only the steps after the resume."""

    def __init__(self):
        self.requested, self.old = False, {}

    def _on_signal(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored (e.g. a job
                    self.old[sig] = signal.signal(sig, self._on_signal)  # started with & from a script)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False


def _loop(run: _Run, progress: bool, callback) -> dict:
    from tqdm import tqdm

    cfg = run.cfg
    run.out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, file=sys.stderr, dynamic_ncols=True,
               unit="step", mininterval=bar_interval(sys.stderr, terminal=0.5))
    try:
        if run.step >= cfg.steps:  # the last checkpoint stopped after its training state: write the rest of it
            run.eval_heldout()
            run.checkpoint()
        with _StopAtStepEnd() as stop:
            _steps(run, bar, callback, stop)
    finally:
        bar.close()
    summary = run.info()["training"]
    summary["out"] = str(run.out)
    return summary


def _steps(run: _Run, bar, callback, stop: _StopAtStepEnd) -> None:
    cfg = run.cfg
    loss_acc, acc_n = torch.zeros((), device=run.device), 0
    while run.step < cfg.steps:
        lr = lr_at(cfg, run.step)
        loss, terms = run.train_step(lr)
        loss_acc += loss.detach()
        acc_n += 1
        step = run.step
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean_loss = float(loss_acc) / acc_n
            if not math.isfinite(mean_loss):
                raise _diverged(run, lr)
            run.log(lr, mean_loss)
            loss_acc.zero_()
            acc_n = 0
            bar.set_postfix(loss=f"{run.last_loss:.4f}", refresh=False)
        if step % cfg.ckpt_every == 0 or step == cfg.steps or stop.requested:
            if not all(bool(torch.isfinite(p).all()) for p in run.params):  # never a checkpoint of NaN weights
                raise _diverged(run, lr)
            if step == cfg.steps:
                run.eval_heldout()
            run.checkpoint()
        if cfg.keep_every and step % cfg.keep_every == 0:
            save_checkpoint(run.out / "snapshots" / f"step_{step:07d}", run.info(), run.ema)
        if stop.requested and step < cfg.steps:  # the step is finished and saved: now the interrupt (at the last
            raise KeyboardInterrupt  # step training is complete: it ends as a finished run, nothing to resume)
        if callback is not None:
            callback(step, {"loss": terms["mse"], "lr": lr})
