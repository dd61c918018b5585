"""Export our UNet (:class:`diffusion_es.models.UNet`) to 🤗 diffusers: a ``UNet2DModel`` with the same function,
and a ``DDPMPipeline`` folder (``unet/`` + ``scheduler/``) that ``DDPMPipeline.from_pretrained`` loads offline.

The architectures line up block for block (read from diffusers 0.42's ``UNet2DModel``):

==============================  ===============================================================
ours                            diffusers ``UNet2DModel``
==============================  ===============================================================
``timestep_embedding`` (cos|sin)  ``Timesteps(flip_sin_to_cos=True, freq_shift=0)``
``time_mlp.0`` / ``time_mlp.2``  ``time_embedding.linear_1`` / ``linear_2`` (``time_embedding_dim``)
``inp``                           ``conv_in``
res block (scale-shift)           ``ResnetBlock2D`` with ``resnet_time_scale_shift="scale_shift"``
``emb`` / ``skip``                ``time_emb_proj`` / ``conv_shortcut``
attention ``qkv`` (1x1 conv)       ``to_q`` / ``to_k`` / ``to_v`` (rows 0:C, C:2C, 2C:3C)
attention ``proj``                 ``to_out.0``; ``norm`` -> ``group_norm``
strided 3x3 conv                  ``Downsample2D`` (``downsample_padding=1``)
nearest x2 + 3x3 conv             ``Upsample2D``
``mid`` [res, attn, res]          ``UNetMidBlock2D`` (``add_attention=True``)
``out_norm`` / ``out``            ``conv_norm_out`` / ``conv_out``
==============================  ===============================================================

Two things diffusers cannot express, so such a UNet is refused with a clear message rather than exported
approximately: GroupNorm group counts that differ between layers (ours use gcd(32, channels); diffusers one
``norm_num_groups``; every channel count must be a multiple of 32) and attention layers whose head sizes differ
(ours fix the number of heads; diffusers the head size). :func:`unet_to_diffusers` checks the exported network
against ours on random inputs before anything is written.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import UsageError
from ..io import json_text, plain_file_mode

__all__ = ["diffusers_unet_config", "unet_to_diffusers", "verify_export", "ddpm_scheduler_config",
           "export_diffusers", "EXPORT_INFO", "EXPORT_TOLERANCE"]

EXPORT_INFO = "diffusion_es_export.json"
EXPORT_TOLERANCE = 1e-4  # max |ours - theirs| / (1 + max |ours|) accepted by the self-check (float32 reordering)
_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _attention_sizes(config) -> list:
    """(channels, heads) of every attention layer of our UNet, in the order the network runs them."""
    ch0, res, sizes = config.channels, config.data_shape[1], []
    for level, mult in enumerate(config.channel_mult):
        if res in config.attention_resolutions:
            sizes.append(ch0 * mult)
        if level < len(config.channel_mult) - 1:
            res //= 2
    sizes.append(ch0 * config.channel_mult[-1])  # the middle block always attends
    return [(c, config.num_heads if c % config.num_heads == 0 else 1) for c in sizes]  # _Attention's rule


def diffusers_unet_config(config) -> dict:
    """The ``UNet2DModel`` config that has the same architecture as our UNet of ``config``
    (:class:`diffusion_es.models.ModelConfig`); :class:`UsageError` when diffusers cannot express it."""
    if config.arch != "unet":
        raise UsageError(f"only UNet checkpoints can be exported to diffusers (this one is arch {config.arch!r}; "
                         "diffusers has no residual-MLP model): train with --arch unet")
    ch0 = config.channels
    widths = [ch0 * m for m in config.channel_mult]
    if any(w % 32 for w in widths):
        raise UsageError(f"channel widths {widths} are not all multiples of 32: our UNet then mixes GroupNorm group "
                         "counts (gcd(32, channels)), which a diffusers UNet2DModel (one norm_num_groups) cannot "
                         "express; train with --channels a multiple of 32 to export")
    head_dims = sorted({c // h for c, h in _attention_sizes(config)})
    if len(head_dims) != 1:
        raise UsageError(f"the attention layers have different head sizes {head_dims} (our UNet fixes the number of "
                         f"heads, {config.num_heads}; diffusers fixes the head size): use attention resolutions "
                         "whose widths equal the deepest level's to export")
    res, down, up = config.data_shape[1], [], []
    for level in range(len(config.channel_mult)):
        down.append("AttnDownBlock2D" if res in config.attention_resolutions else "DownBlock2D")
        if level < len(config.channel_mult) - 1:
            res //= 2
    for kind in reversed(down):
        up.append("AttnUpBlock2D" if kind == "AttnDownBlock2D" else "UpBlock2D")
    c, h, w = config.data_shape
    return {
        "sample_size": h if h == w else [h, w],
        "in_channels": c,
        "out_channels": config.out_channels,
        "time_embedding_type": "positional",
        "time_embedding_dim": config.time_embed_dim or 4 * ch0,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": widths,
        "layers_per_block": config.num_res_blocks,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": float(config.dropout),
        "act_fn": "silu",
        "attention_head_dim": head_dims[0],
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift",
        "add_attention": True,
    }


def _name_map(config) -> Dict[str, str]:
    """Our module prefixes -> diffusers module prefixes (resnets, attentions, resampling convs, in/out)."""
    m = {"time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2", "inp": "conv_in",
         "out_norm": "conv_norm_out", "out": "conv_out",
         "mid.0": "mid_block.resnets.0", "mid.1": "mid_block.attentions.0", "mid.2": "mid_block.resnets.1"}
    res, k, levels = config.data_shape[1], 0, len(config.channel_mult)
    attn_at = []
    for level in range(levels):
        attn = res in config.attention_resolutions
        attn_at.append(attn)
        for j in range(config.num_res_blocks):
            m[f"down.{k}.0"] = f"down_blocks.{level}.resnets.{j}"
            if attn:
                m[f"down.{k}.1"] = f"down_blocks.{level}.attentions.{j}"
            k += 1
        if level < levels - 1:
            m[f"down.{k}.0"] = f"down_blocks.{level}.downsamplers.0.conv"
            k += 1
            res //= 2
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(config.num_res_blocks + 1):
            m[f"up.{k}.0"] = f"up_blocks.{i}.resnets.{j}"
            if attn_at[level]:
                m[f"up.{k}.1"] = f"up_blocks.{i}.attentions.{j}"
            if level > 0 and j == config.num_res_blocks:
                # [res, (attn), Upsample (no weights), conv]
                m[f"up.{k}.{3 if attn_at[level] else 2}"] = f"up_blocks.{i}.upsamplers.0.conv"
            k += 1
    return m


_RES = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}


def _convert_state(state: Dict[str, torch.Tensor], config) -> Dict[str, torch.Tensor]:
    prefixes = _name_map(config)
    out = {}
    for key, v in state.items():
        mod, param = key.rsplit(".", 1)
        owner = next((p for p in sorted(prefixes, key=len, reverse=True) if mod == p or mod.startswith(p + ".")), None)
        if owner is None:
            raise UsageError(f"weight {key} has no diffusers counterpart; the checkpoint is not our UNet")
        target, inner = prefixes[owner], mod[len(owner) + 1:]
        kind = target.split(".")[-2] if target.count(".") else ""
        if kind == "resnets":
            out[f"{target}.{_RES[inner]}.{param}"] = v
        elif kind == "attentions":
            if inner == "norm":
                out[f"{target}.group_norm.{param}"] = v
            elif inner == "qkv":  # Conv1d (3C, C, 1): rows [q | k | v], each head-major as in diffusers
                for name, part in zip(("to_q", "to_k", "to_v"), v.chunk(3, dim=0)):
                    out[f"{target}.{name}.{param}"] = part.reshape(part.shape[0], -1) if param == "weight" else part
            elif inner == "proj":
                out[f"{target}.to_out.0.{param}"] = v.reshape(v.shape[0], -1) if param == "weight" else v
            else:
                raise UsageError(f"weight {key} has no diffusers counterpart; the checkpoint is not our UNet")
        else:
            out[f"{target}.{param}"] = v
    return out


@torch.no_grad()
def _max_difference(ours: torch.nn.Module, theirs: torch.nn.Module, config, n: int = 4, seed: int = 0) -> float:
    """max |ours - theirs| / (1 + max |ours|) on random x at integer and fractional timesteps, over the outputs and
    over the features entering the output convolution (so a fresh network, whose output convolution is zero,
    is still compared through its whole trunk)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *config.data_shape), generator=g)
    t = torch.tensor(([0.0, 17.0, 431.5, 999.0] * n)[:n])
    feats = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: feats.append(o)) for m in (ours.out_norm, theirs.conv_norm_out)]
    try:
        a, b = ours(x, t), theirs(x, t).sample
    finally:
        for h in hooks:
            h.remove()
    return max(float((p - q).abs().max() / (1.0 + p.abs().max())) for p, q in ((a, b), tuple(feats)))


def unet_to_diffusers(net, check: bool = True):
    """A diffusers ``UNet2DModel`` (eval mode, float32, CPU) that computes what our ``net`` computes.

    ``check``: run both on random inputs and raise if they differ by more than float32 rounding."""
    from .diffusers import require_diffusers

    require_diffusers()
    from diffusers import UNet2DModel

    config = net.config
    dcfg = diffusers_unet_config(config)
    theirs = UNet2DModel(**dcfg)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in net.state_dict().items()}
    converted = _convert_state(state, config)
    expected = theirs.state_dict()
    missing, extra = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    if missing or extra:  # a mapping bug or a diffusers version with other names: never export half a model
        raise RuntimeError(f"export mapping does not cover the diffusers UNet2DModel (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}); please report with your diffusers version")
    for k, v in converted.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise RuntimeError(f"export mapping: {k} has shape {tuple(v.shape)}, diffusers expects "
                               f"{tuple(expected[k].shape)}; please report with your diffusers version")
    theirs.load_state_dict(converted)
    theirs.eval()
    if check:
        verify_export(net, theirs)
    return theirs


def verify_export(net, theirs) -> float:
    """The relative max difference between our UNet and its export on random inputs; raises above
    :data:`EXPORT_TOLERANCE` (float32 reordering is ~1e-7)."""
    err = _max_difference(net.to("cpu").eval(), theirs, net.config)
    if not err <= EXPORT_TOLERANCE:
        raise RuntimeError(f"the exported UNet2DModel differs from ours (relative max difference {err:.2e}); "
                           "please report with your diffusers version")
    return err


def ddpm_scheduler_config(schedule, prediction: str, learned_variance: bool, clip_sample: bool = True,
                          beta_schedule: Optional[str] = None) -> dict:
    """A ``DDPMScheduler`` config for our process: the exact β table (``trained_betas``, which diffusers uses in
    place of any named schedule), the prediction type and the variance (``learned_range`` for learned-variance
    models, else ``fixed_small``, ADM's default). ``beta_schedule`` (ours: linear / cosine) only names the table
    for readers of the config."""
    if prediction not in _PREDICTION_TYPES:
        raise UsageError(f"unknown prediction {prediction!r}: use one of {', '.join(_PREDICTION_TYPES)}")
    betas = np.asarray(schedule.betas, dtype=np.float64)
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": int(len(betas)),
        "beta_schedule": {"cosine": "squaredcos_cap_v2"}.get(beta_schedule, "linear"),  # for readers only
        "beta_start": float(betas[0]),
        "beta_end": float(betas[-1]),
        "trained_betas": [float(b) for b in betas],
        "variance_type": "learned_range" if learned_variance else "fixed_small",
        "clip_sample": bool(clip_sample),
        "clip_sample_range": 1.0,
        "prediction_type": _PREDICTION_TYPES[prediction],
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an existing ``out`` is swapped out only after ``tmp`` is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_diffusers(model="default", out_dir=None, use_ema: bool = True, overwrite: bool = False,
                     check: bool = True) -> dict:
    """Write a ``DDPMPipeline`` folder (``model_index.json``, ``unet/``, ``scheduler/``) for one of our UNet
    checkpoints (a path, or a :class:`diffusion_es.models.LoadedModel`).

    The folder is built beside ``out_dir`` and moved into place only when complete, so an interrupted export
    leaves nothing half-written. It loads with ``DDPMPipeline.from_pretrained(out_dir)`` (or
    ``UNet2DModel.from_pretrained(out_dir, subfolder="unet")``) and, through ``--model out_dir``, with every
    diffusion-es command. Returns a summary (paths, the self-check's difference, the scheduler settings)."""
    from ..models import UNet, load_model
    from ..models.checkpoint import LoadedModel
    from .diffusers import require_diffusers

    require_diffusers()
    from diffusers import DDPMPipeline, DDPMScheduler

    if out_dir is None:
        raise UsageError("export needs an output folder")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UsageError(f"{out} exists and is not empty; choose a new output folder or pass --overwrite")
        if not (out / EXPORT_INFO).is_file():  # --overwrite replaces the folder whole: only an earlier export
            raise UsageError(f"{out} is not an earlier export (it has no {EXPORT_INFO}), and --overwrite would delete "
                             "all of it; choose a new output folder")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, use_ema=use_ema)
    if loaded.process == "flow":
        raise UsageError(f"{loaded.path} is a rectified-flow model; export writes a DDPMPipeline (a VP β table), "
                         "which would sample it wrongly: use it with diffusion-es's flow_euler / flow_heun")
    if loaded.process == "edm":
        raise UsageError(f"{loaded.path} is an EDM-preconditioned / PFGM++ model; export writes a DDPMPipeline (a VP "
                         "β table, Gaussian prior), which would sample it wrongly: use it with diffusion-es's euler / heun")
    if not isinstance(loaded.net, UNet):
        arch = loaded.config.get("model", {}).get("arch", type(loaded.net).__name__) if loaded.config else "?"
        if "diffusers" in (loaded.config or {}):
            raise UsageError(f"{loaded.path} is already a diffusers model; nothing to export")
        raise UsageError(f"only UNet checkpoints can be exported to diffusers (this one is arch {arch!r}; diffusers "
                         "has no residual-MLP model): train with --arch unet")
    unet = unet_to_diffusers(loaded.net, check=False)
    err = verify_export(loaded.net, unet) if check else float("nan")
    sched_cfg = ddpm_scheduler_config(loaded.schedule, loaded.prediction, loaded.learned_variance,
                                      beta_schedule=(loaded.config or {}).get("diffusion", {}).get("beta_schedule"))
    scheduler = DDPMScheduler.from_config({k: v for k, v in sched_cfg.items() if not k.startswith("_")})
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)

    from ..store import output_lock

    with output_lock(out):  # one export per folder at a time; a killed export's folders are tidied up first
        _sweep_export_debris(out)
        return _write_export(out, pipe, loaded, use_ema, err, sched_cfg, unet)


def _sweep_export_debris(out: Path) -> None:
    """Folders a killed export left beside ``out``: its half-built ``.NAME.tmp-PID`` (removed) and the previous
    export it was swapping out, ``.NAME.old-PID`` (put back if ``out`` is missing, i.e. the kill fell between the
    two renames; removed otherwise)."""
    for old in sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda q: q.stat().st_mtime, reverse=True):
        if not out.exists():  # the newest one: what OUT held last
            os.replace(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _write_export(out: Path, pipe, loaded, use_ema: bool, err: float, sched_cfg: dict, unet) -> dict:
    from ..version import __version__

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "exported_by": f"diffusion-es {__version__}",
        "source": str(loaded.path) if loaded.path is not None else None,
        "weights": "ema" if use_ema else "raw",
        "model": loaded.net.config.to_dict(),
        "diffusion": (loaded.config or {}).get("diffusion"),
        "data": (loaded.config or {}).get("data"),
        "check_relative_max_difference": None if math.isnan(err) else err,
        "note": "sample with DDPMPipeline.from_pretrained(this folder); images are in [-1, 1] as trained",
    }
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / EXPORT_INFO).write_text(json_text(info) + "\n")
        mode = plain_file_mode()  # save_pretrained may leave private temp-file modes
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(mode)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "unet": str(out / "unet"), "scheduler": str(out / "scheduler"),
            "check_relative_max_difference": info["check_relative_max_difference"],
            "prediction_type": sched_cfg["prediction_type"], "variance_type": sched_cfg["variance_type"],
            "num_train_timesteps": sched_cfg["num_train_timesteps"], "diffusers_config": dict(unet.config)}
