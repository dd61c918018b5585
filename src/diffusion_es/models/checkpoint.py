"""Checkpoints: a directory with ``config.json`` and ``model.safetensors``.

* ``config.json``: ``{"format": "diffusion-es/checkpoint", "format_version": 1, "model": ModelConfig,
  "diffusion": {...}, "data": {...}, "training": {...}}``. The diffusion section of a VP model is
  ``{"T", "beta_schedule", "prediction", "learned_variance"}``; of a rectified-flow model
  ``{"process": "flow", "T", "prediction": "flow", "shift", "learned_variance": false}`` (the network sees the time
  as ``T·t``; ``shift`` is the SD3 time shift its sampling grid uses by default). A section without ``"process"``
  is a VP model (every checkpoint written before flow models existed). An EDM-preconditioned model (PFGM++ for a
  finite ``pfgm_D``, EDM's Gaussian kernel for ``pfgm_D`` null) has ``{"process": "edm", "prediction": "edm",
  "learned_variance": false, "pfgm_D", "sigma_min", "sigma_max", "sigma_data", "time_scale", "P_mean", "P_std"}``
  (:class:`~diffusion_es.core.pfgm.EDMSchedule`).
* ``model.safetensors``: the EMA weights under ``ema.<name>`` and (optionally) the raw weights under
  ``model.<name>``.
* ``train_state.safetensors`` (written by :mod:`diffusion_es.training.train`): everything needed to resume exactly.

Loading never executes code: weights are read with safetensors (or, for a plain ``model.pt`` state dict,
``torch.load(weights_only=True)``); anything corrupt, foreign or inconsistent raises
:class:`~diffusion_es.errors.UsageError` with one line that says what is wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import UsageError
from ..io import atomic_path, json_text, read_json, read_safetensors
from ..core.pfgm import EDMSchedule
from ..core.schedules import FlowSchedule, VPSchedule
from .config import ModelConfig

__all__ = [
    "SHIPPED",
    "shipped_path",
    "FORMAT",
    "MODEL_FORMS",
    "PREDICTIONS",
    "BETA_SCHEDULES",
    "build_model",
    "diffusion_config",
    "save_checkpoint",
    "read_config",
    "read_weights",
    "resolve_checkpoint",
    "LoadedModel",
    "load_model",
]

# every form --model takes, for help texts and errors (load_model accepts exactly these)
FORMAT = "diffusion-es/checkpoint"
FORMAT_VERSION = 1
PREDICTIONS = ("eps", "v", "x0", "flow", "edm")
EDM_KEYS = ("pfgm_D", "sigma_min", "sigma_max", "sigma_data", "time_scale", "P_mean", "P_std")
BETA_SCHEDULES = ("linear", "cosine")


def build_model(config: ModelConfig) -> nn.Module:
    """A fresh network for a config (float32, train mode)."""
    if config.arch == "mlp":
        from .mlp import ResMLP

        return ResMLP(config)
    from .unet import UNet

    return UNet(config)


def _edm_config(learned_variance, shift, **edm) -> dict:
    if learned_variance:
        raise UsageError("an EDM-preconditioned / PFGM++ model has no learned variance; drop --learned-variance")
    if shift is not None:
        raise UsageError("shift is the time shift of rectified-flow models; an EDM / PFGM++ model has none")
    try:
        sched = EDMSchedule(**{k: v for k, v in edm.items() if v is not None})
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    return {"process": "edm", "prediction": "edm", "learned_variance": False, **sched.to_dict()}


def diffusion_config(T: int = 1000, beta_schedule: str = "linear", prediction: str = "eps",
                     learned_variance: bool = False, shift: Optional[float] = None,
                     process: Optional[str] = None, **edm) -> dict:
    """The diffusion half of ``config.json``, validated (``prediction="flow"``: a rectified-flow model;
    ``prediction="edm"`` or ``process="edm"``: an EDM-preconditioned model, PFGM++ with a finite ``pfgm_D``; its
    other keyword options are :class:`~diffusion_es.core.pfgm.EDMSchedule`'s)."""
    unknown = sorted(set(edm) - set(EDM_KEYS))
    if unknown:
        raise UsageError(f"unknown diffusion option {unknown[0]!r}")
    if prediction == "edm" or process == "edm" or edm.get("pfgm_D") is not None:
        if prediction not in ("edm", "eps") or process not in (None, "edm"):
            raise UsageError(f"an EDM-preconditioned / PFGM++ model has prediction 'edm' and process 'edm' (got "
                             f"prediction {prediction!r}, process {process!r})")
        return _edm_config(learned_variance, shift, **edm)
    if any(v is not None for v in edm.values()):
        raise UsageError(f"{sorted(k for k, v in edm.items() if v is not None)[0]} applies to EDM / PFGM++ models "
                         "(--prediction edm or --pfgm-D)")
    if int(T) < 1:
        raise UsageError(f"T must be >= 1, got {T}")
    if process not in (None, "vp", "flow"):
        raise UsageError(f"unknown process {process!r}: use vp, flow or edm")
    if prediction == "flow" or process == "flow":
        if prediction != "flow" or process not in (None, "flow"):
            raise UsageError(f"a rectified-flow model predicts the velocity: prediction must be 'flow' with "
                             f"process 'flow' (got prediction {prediction!r}, process {process!r})")
        if learned_variance:
            raise UsageError("a rectified-flow model (prediction flow) has no learned variance; drop --learned-variance")
        shift = 1.0 if shift is None else float(shift)
        if not (math.isfinite(shift) and shift > 0):
            raise UsageError(f"shift must be finite and > 0, got {shift}")
        return {"process": "flow", "T": int(T), "prediction": "flow", "shift": shift, "learned_variance": False}
    if shift is not None:
        raise UsageError("shift is the time shift of rectified-flow models (prediction flow); a VP model has none")
    if beta_schedule not in BETA_SCHEDULES:
        raise UsageError(f"unknown beta schedule {beta_schedule!r}: use one of {', '.join(BETA_SCHEDULES)}")
    if prediction not in PREDICTIONS:
        raise UsageError(f"unknown prediction {prediction!r}: use one of {', '.join(PREDICTIONS)}")
    return {"T": int(T), "beta_schedule": beta_schedule, "prediction": prediction,
            "learned_variance": bool(learned_variance)}


def _state(net: nn.Module) -> dict:
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in net.state_dict().items()}


def save_checkpoint(out_dir, config: dict, ema: nn.Module, net: Optional[nn.Module] = None) -> Path:
    """Write ``model.safetensors`` (EMA, plus raw weights if ``net`` is given) and then ``config.json``,
    each atomically. ``config`` is the full ``config.json`` dict (``format`` keys are added)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"ema.{k}": v for k, v in _state(ema).items()}
    if net is not None:
        tensors.update({f"model.{k}": v for k, v in _state(net).items()})
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION}
    cfg.update({k: v for k, v in config.items() if k not in cfg})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json_text(cfg) + "\n")
    return out


# the models shipped in diffusion_es/assets, by the names --model takes
SHIPPED = {"default": "digits_default", "digits": "digits_default", "digits-ip": "digits_ip", "mnist": "mnist_default",
           "digits-flow": "digits_flow", "digits-pfgm": "digits_pfgm", "digits-edm": "digits_edm"}
MODEL_FORMS = ("a folder written by 'diffusion-es train', a diffusers UNet2DModel or pipeline folder "
               f"(save_pretrained), or a shipped model: {', '.join(SHIPPED)}")


def shipped_path(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("diffusion_es") / "assets" / SHIPPED[name]))


def resolve_checkpoint(path) -> Path:
    """A shipped model's name (``default``, ``mnist`` ...) -> its folder; a file inside a checkpoint folder -> that
    folder."""
    if str(path) in SHIPPED:
        p = shipped_path(str(path))
        if not (p / "config.json").exists():
            raise UsageError(f"the shipped model {str(path)!r} is not installed with this copy of diffusion-es "
                             f"(assets/{SHIPPED[str(path)]} missing); train one with 'diffusion-es train' and pass "
                             "--model PATH")
        return p
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such checkpoint; --model takes {MODEL_FORMS}")
    if p.is_file():  # a file of a checkpoint folder (model.safetensors, config.json) stands for the folder
        if not (p.parent / "config.json").exists():
            raise UsageError(f"{p}: a file, not a model folder; --model takes {MODEL_FORMS}")
        p = p.parent
    return p


def read_config(ckpt_dir) -> dict:
    d = Path(ckpt_dir)
    f = d / "config.json"
    if not f.exists():
        raise UsageError(f"{d}: not a model folder (no config.json); give {MODEL_FORMS}")
    cfg = read_json(f, "a checkpoint's config.json", "retrain or restore the checkpoint")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise UsageError(f"{f}: not a diffusion-es checkpoint (no \"format\": \"{FORMAT}\"); "
                         "foreign checkpoints need an adapter (diffusion_es.adapters)")
    version = cfg.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{f}: format_version must be a whole number, got {version!r}; retrain or restore the checkpoint")
    if version > FORMAT_VERSION:
        raise UsageError(f"{f}: checkpoint format version {cfg.get('format_version')} is newer than this diffusion-es "
                         f"understands ({FORMAT_VERSION}); upgrade diffusion-es")
    for key in ("model", "diffusion"):
        if not isinstance(cfg.get(key), dict):
            raise UsageError(f"{f}: config.json has no {key!r} section; the checkpoint is incomplete")
    return cfg


def read_weights(ckpt_dir) -> dict:
    """All tensors of ``model.safetensors`` (or a plain ``model.pt`` state dict), read without executing code."""
    d = Path(ckpt_dir)
    st, pt = d / "model.safetensors", d / "model.pt"
    if st.exists():
        return read_safetensors(st, "a checkpoint's weights", "retrain or restore the checkpoint")[0]
    if pt.exists():
        import pickle
        import warnings

        try:
            with warnings.catch_warnings():  # (torch warns about the pickle protocol before refusing: the one line
                warnings.simplefilter("ignore")  # below says it all)
                obj = torch.load(str(pt), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as e:
            raise UsageError(f"{pt}: refused: not a plain tensor state dict ({e.__class__.__name__}); "
                             "only weights are loaded, never code") from None
        if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
            raise UsageError(f"{pt}: not a flat state dict of tensors")
        return obj
    raise UsageError(f"{d}: no model.safetensors; the checkpoint is incomplete")


@dataclass
class LoadedModel:
    """A network ready for sampling, with the diffusion process it was trained for."""

    net: nn.Module
    schedule: object  # VPSchedule, FlowSchedule (rectified flow) or EDMSchedule (EDM / PFGM++)
    prediction: str
    learned_variance: bool
    data_shape: Tuple[int, ...]
    config: dict = field(default_factory=dict)
    path: Optional[Path] = None
    clip_x0: Optional[float] = 1.0  # VP models: the x̂_0 clipping they are sampled with (VPDenoiser.clip_x0)

    def data_spec(self, override: Optional[str] = None) -> str:
        """The data to evaluate this model on: ``override`` if given, else the ``--data`` spec recorded when it was
        trained (a recorded ``mnist:PATH`` whose file is gone becomes ``mnist``, the default places), else digits."""
        if override:
            return override
        spec = (self.config.get("data") or {}).get("spec") if isinstance(self.config, dict) else None
        if spec and spec.startswith("mnist:") and not Path(spec.partition(":")[2]).exists():
            return "mnist"
        return spec or "digits"

    @property
    def process(self) -> str:
        if isinstance(self.schedule, EDMSchedule):
            return "edm"
        return "flow" if isinstance(self.schedule, FlowSchedule) else "vp"

    def denoiser(self):
        """The network as a sigma-space denoiser (:class:`~diffusion_es.core.param.VPDenoiser`, or
        :class:`~diffusion_es.core.param.FlowDenoiser` for a rectified-flow model,
        :class:`~diffusion_es.core.pfgm.EDMDenoiser` for an EDM / PFGM++ model)."""
        from ..core.param import FlowDenoiser, VPDenoiser
        from ..core.pfgm import EDMDenoiser

        if self.process == "edm":
            return EDMDenoiser(self.net, self.schedule)
        if self.process == "flow":
            return FlowDenoiser(self.net, self.schedule, time_scale=float(self.schedule.T))
        return VPDenoiser(self.net, self.schedule, prediction=self.prediction, learned_variance=self.learned_variance,
                          clip_x0=self.clip_x0)


def _split_weights(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _is_diffusers_folder(p: Path) -> bool:
    """A diffusers pipeline folder (model_index.json) or a UNet2DModel folder saved with save_pretrained."""
    if (p / "model_index.json").is_file():
        return True
    if (p / "model.safetensors").is_file():  # our weights beside a foreign config: ours to explain
        return False
    try:  # (a UNet folder whose weights are missing is still one: the loader then says what is missing)
        return json.loads((p / "config.json").read_text()).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError, AttributeError):
        return False


def _load_diffusers(p: Path, device) -> LoadedModel:
    from .diffusers_unet import load_diffusers_unet

    try:
        den = load_diffusers_unet(p, device=device, require_scheduler=True)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        # a config that does not fit its weights (RuntimeError), an unknown beta_schedule (NotImplementedError), ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        raise UsageError(f"{p}: could not load it as a diffusers UNet ({first})") from None
    cfg = den.net.unet.config if hasattr(den.net, "unet") else den.net.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size, cfg.sample_size)
    return LoadedModel(net=den.net, schedule=den.schedule, prediction=den.prediction,
                       learned_variance=den.learned_variance, data_shape=(int(cfg.in_channels), *map(int, size)),
                       config={"diffusers": str(p)}, path=p, clip_x0=den.clip_x0)


def load_model(path="default", use_ema: bool = True, device="cpu") -> LoadedModel:
    """Load a checkpoint folder (or 'default', the shipped digits model) for sampling: eval mode, float32.

    A diffusers UNet2DModel / pipeline folder saved with ``save_pretrained`` is loaded too (needs the
    ``diffusers`` extra), so every command that takes ``--model`` works on it."""
    if str(path) not in SHIPPED and Path(path).is_dir() and _is_diffusers_folder(Path(path)):
        if not use_ema:
            raise UsageError(f"{path} is a diffusers folder: it holds one set of weights, so --raw-weights "
                             f"(use_ema=False) has nothing to choose; drop it")
        return _load_diffusers(Path(path), device)
    d = resolve_checkpoint(path)
    cfg = read_config(d)
    where = f"{d}/config.json"
    try:
        mcfg = ModelConfig.from_dict(cfg["model"])
    except (UsageError, TypeError, ValueError) as e:
        raise UsageError(f"{where}: bad model section ({e})") from None
    dcfg = cfg["diffusion"]
    try:
        edm = {k: dcfg.get(k) for k in EDM_KEYS} if dcfg.get("process") == "edm" else {}
        dif = diffusion_config(dcfg.get("T", 1000), dcfg.get("beta_schedule", "linear"), dcfg.get("prediction", "eps"),
                               dcfg.get("learned_variance", False), dcfg.get("shift"), dcfg.get("process"), **edm)
    except (UsageError, TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None
    if dif["learned_variance"] != mcfg.learned_variance:
        raise UsageError(f"{where}: model and diffusion sections disagree about learned_variance")
    tensors = read_weights(d)
    state = _split_weights(tensors, "ema." if use_ema else "model.")
    if not state:
        if any(k.startswith(("ema.", "model.")) for k in tensors):
            which = "EMA" if use_ema else "raw (non-EMA)"
            how = "drop --raw-weights (use_ema=True)" if not use_ema else "pass --raw-weights (use_ema=False)"
            raise UsageError(f"{d}: the checkpoint holds no {which} weights; {how}")
        state = tensors  # a plain state dict without prefixes
    net = build_model(mcfg)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise UsageError(f"{d}: weights do not match config.json (missing {missing[:2]}, unexpected {extra[:2]}); "
                         "the checkpoint is corrupt or from another model")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise UsageError(f"{d}: weight {k} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}")
        if not torch.isfinite(v.float()).all():
            raise UsageError(f"{d}: weight {k} holds NaN or inf; the checkpoint is corrupt")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net = net.to(device=device, dtype=torch.float32).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if dif.get("process") == "edm":
        schedule = EDMSchedule(**{k: dif[k] for k in EDM_KEYS})
    elif dif.get("process") == "flow":
        schedule = FlowSchedule(dif["T"], dif["shift"])
    else:
        schedule = VPSchedule.from_name(dif["beta_schedule"], dif["T"])
    return LoadedModel(net=net, schedule=schedule, prediction=dif["prediction"],
                       learned_variance=dif["learned_variance"], data_shape=mcfg.data_shape, config=cfg, path=d)
