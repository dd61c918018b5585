"""A diffusers ``UNet2DModel`` folder (``save_pretrained``) loaded as one of our denoisers (needs the extra
``diffusion-es[diffusers]``); :func:`diffusion_es.models.load_model` uses it for every ``--model`` folder of that kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.param import VPDenoiser, get_prediction
from ..core.schedules import VPSchedule
from ..errors import require_optional

__all__ = ["load_diffusers_unet"]


class _UNetEps(torch.nn.Module):
    """``net(x_t, t) -> prediction`` from a diffusers UNet2DModel (drops the output dataclass)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_t, t, **kwargs):
        return self.unet(x_t, t, return_dict=False, **kwargs)[0]


def _read_scheduler_config(path: Path):
    for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json",
                 path.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            return cand
    return None


# settings only flow-matching schedulers have: a VP table built from such a config would sample a flow model wrongly
_FLOW_KEYS = ("shift", "use_dynamic_shifting", "base_image_seq_len", "max_image_seq_len", "use_flow_sigmas")


def _vp_config(cfg: dict) -> dict:
    """``cfg`` if it describes a VP (β-table) scheduler; a flow-matching scheduler's config is refused in one line."""
    name = str(cfg.get("_class_name", ""))
    flow = [k for k in _FLOW_KEYS if cfg.get(k) not in (None, False)]
    if name.startswith("FlowMatch") or flow or cfg.get("prediction_type") == "flow_prediction":
        raise ValueError(f"the scheduler config ({name or 'given'}) is a flow-matching one "
                         f"({', '.join(flow) or cfg.get('prediction_type') or name}): this loader reads VP (β-table) "
                         f"UNets; a flow-matching network needs diffusion_es.core.param.FlowDenoiser")
    return cfg


def load_diffusers_unet(path, scheduler=None, device="cpu", dtype=None, require_scheduler: bool = False):
    """Load a diffusers ``UNet2DModel`` saved with ``save_pretrained`` as a :class:`diffusion_es.core.param.VPDenoiser`.

    ``path``: the UNet folder, or a pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``).
    ``scheduler``: a diffusers scheduler, its config dict, or a folder / ``scheduler_config.json``; by default the
    pipeline's ``scheduler/`` (or a ``scheduler_config.json`` beside the UNet) and otherwise diffusers'
    ``DDPMScheduler()`` defaults (linear β 1e-4..0.02, T = 1000, ε-prediction). A pipeline folder without its
    scheduler config is refused (its model was trained with a schedule the folder no longer says), and with
    ``require_scheduler`` (what every ``--model`` of the CLI uses) so is a bare UNet folder without one.

    The VP schedule reproduces the scheduler's own ᾱ table (``alphas_cumprod``, as diffusers computes it), the
    prediction type comes from its ``prediction_type`` and the x̂_0 clipping of the VP samplers from its
    ``clip_sample`` / ``clip_sample_range`` (``clip_x0``; ``thresholding=True`` is refused); a UNet with twice the
    input channels is a learned-variance model. The result works with :func:`diffusion_es.samplers.sample` and
    everything built on it.
    """
    require_optional("diffusers", "diffusers")
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder (expected a diffusers UNet or pipeline saved with "
                                f"save_pretrained)")
    unet_dir = path / "unet" if (path / "model_index.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"{unet_dir}: no config.json; expected a UNet2DModel folder written by save_pretrained")
    if not any((unet_dir / f"diffusion_pytorch_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        raise ValueError(f"no weights in {unet_dir} (diffusion_pytorch_model.safetensors, as save_pretrained writes "
                         f"them)")
    import logging

    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity(logging.CRITICAL)  # a failed load is our one-line error, not diffusers' log lines besides it
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)  # no "install accelerate" notice
    finally:
        dlog.set_verbosity(level)
    unet.eval().to(device)
    if isinstance(dtype, str):  # "float16", "bfloat16", "torch.float16": unet.to("float16") read it as a device
        name = dtype.removeprefix("torch.")
        if not isinstance(getattr(torch, name, None), torch.dtype) or not getattr(torch, name).is_floating_point:
            raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype (e.g. torch.float16, 'bfloat16')")
        dtype = getattr(torch, name)
    if dtype is not None:
        unet.to(dtype)

    if scheduler is None:
        cfg_path = _read_scheduler_config(path)
        pipeline = (path / "model_index.json").is_file()
        if cfg_path is None and (pipeline or require_scheduler):
            where = f"{path}/scheduler/" if pipeline else f"{path}/ (nor in ../scheduler/)"
            raise ValueError(f"no scheduler_config.json in {where}: the model's noise schedule is unknown; restore "
                             f"it, or write diffusers' defaults there with DDPMScheduler().save_config(...)")
        sched = DDPMScheduler.from_config(_vp_config(DDPMScheduler.load_config(cfg_path))) if cfg_path else DDPMScheduler()
    elif isinstance(scheduler, (str, Path)):
        p = Path(scheduler)
        cfg_path = p if p.is_file() else _read_scheduler_config(p)
        if cfg_path is None:
            raise FileNotFoundError(f"{p}: no scheduler_config.json found")
        sched = DDPMScheduler.from_config(_vp_config(DDPMScheduler.load_config(cfg_path)))
    elif isinstance(scheduler, dict):
        sched = DDPMScheduler.from_config(_vp_config(scheduler))
    else:
        sched = scheduler
        _vp_config({"_class_name": type(sched).__name__, **dict(sched.config)})
    ab = sched.alphas_cumprod.to(torch.float64).numpy()
    # betas that reproduce the scheduler's own (float32) ᾱ table exactly under a float64 cumulative product
    betas = 1.0 - ab / np.concatenate([[1.0], ab[:-1]])
    schedule = VPSchedule(betas)
    prediction = get_prediction(sched.config.get("prediction_type", "epsilon")).name
    learned = unet.config.out_channels == 2 * unet.config.in_channels
    if sched.config.get("thresholding", False):
        raise ValueError("the scheduler config sets thresholding=True (Imagen's dynamic thresholding of x̂_0), which "
                         "the samplers here do not implement; pass a scheduler (or config) without it to sample "
                         "with a fixed clip_sample_range instead")
    clip = float(sched.config.get("clip_sample_range", 1.0)) if sched.config.get("clip_sample", True) else None
    den = VPDenoiser(_UNetEps(unet), schedule, prediction=prediction, learned_variance=learned, clip_x0=clip)
    den.scheduler_config = dict(sched.config)
    den.in_channels = int(unet.config.in_channels)  # sample() refuses a shape with other channels in one line
    return den
