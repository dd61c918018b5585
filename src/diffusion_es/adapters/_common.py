"""What every adapter shares: the ES rewrite of one network prediction, in VP coordinates.

A prediction made at a point ``x_t = a·x_0 + b·ε`` of the VP process (``a = sqrt(ᾱ)``, ``b = sqrt(1 - ᾱ)``, one
value per sample) is rewritten so that the ε it implies is divided by λ while ``x_t`` stays put:

* ``eps``:  ε' = ε / λ
* ``x0``:   ε = (x_t - a·x_0) / b,  x_0' = (x_t - b·ε/λ) / a
* ``v``:    ε = a·v + b·x_t,        v' = (ε/λ - b·x_t) / a      (v = a·ε - b·x_0, a² + b² = 1)

A learned-variance output (2C channels for a C-channel input) keeps its last C channels untouched. Samples whose
λ is exactly 1 get their prediction back untouched, so λ = 1 is the baseline bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PREDICTION_ALIASES", "normalize_prediction", "scale_prediction", "as_numpy_1d", "WrapsInner"]

# the names the field uses for the three predictions -> ours (diffusion_es.core.param.PREDICTIONS)
PREDICTION_ALIASES = {
    "eps": "eps", "epsilon": "eps",
    "x0": "x0", "sample": "x0", "x_0": "x0", "start_x": "x0",
    "v": "v", "v_prediction": "v",
}


def normalize_prediction(name: str) -> str:
    try:
        return PREDICTION_ALIASES[name]
    except KeyError:
        raise ValueError(f"Epsilon Scaling does not support prediction type {name!r}: it needs an ε-, x0- or "
                         f"v-prediction (epsilon, sample, v_prediction)") from None


def as_numpy_1d(value) -> np.ndarray:
    """A float, 0-d/(B,)/(B,1,..) tensor or array as a float64 numpy vector (no gradient, on the CPU)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _per_sample(v: np.ndarray, n: int, what: str) -> np.ndarray:
    if v.size == 1:
        return np.full(n, float(v[0]))
    if v.size != n:
        raise ValueError(f"{what} has {v.size} entries for a batch of {n}")
    return v


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # float64 for the conversions, except where the device has none (Apple MPS)
    return torch.float32 if t.device.type == "mps" else torch.float64


def scale_prediction(out: torch.Tensor, x_t: torch.Tensor, lam, alpha_bar, prediction: str) -> torch.Tensor:
    """Rewrite ``out`` (the network's prediction at VP point ``x_t``) so that its ε is divided by ``lam``.

    ``lam`` and ``alpha_bar`` are scalars or one value per sample. ``alpha_bar`` is only used for x0/v.
    Returns ``out`` itself when every λ is 1.
    """
    if isinstance(lam, float) and prediction == "eps" and out.shape == x_t.shape:
        return out if lam == 1.0 else out / lam  # the common case, kept cheap: one λ for the batch
    B, C = x_t.shape[0], x_t.shape[1]
    lam_np = _per_sample(as_numpy_1d(lam), B, "λ")
    if np.all(lam_np == 1.0):
        return out
    if out.shape[0] != B or out.shape[2:] != x_t.shape[2:] or out.shape[1] not in (C, 2 * C):
        raise ValueError(f"cannot apply Epsilon Scaling: the prediction has shape {tuple(out.shape)} but the "
                         f"sample has shape {tuple(x_t.shape)} (expected C or 2C channels for learned variance)")
    pred, rest = (out[:, :C], out[:, C:]) if out.shape[1] == 2 * C else (out, None)
    uniform = bool(np.all(lam_np == lam_np[0]))
    if prediction == "eps" and uniform:
        new = pred / float(lam_np[0])  # exactly what a hand-written loop does: eps / lam
    else:
        wd = _work_dtype(pred)
        shape = (B,) + (1,) * (pred.ndim - 1)
        lam_t = torch.from_numpy(lam_np).to(pred.device, wd).reshape(shape)
        p = pred.to(wd)
        if prediction == "eps":
            new = p / lam_t
        else:
            ab = torch.from_numpy(_per_sample(as_numpy_1d(alpha_bar), B, "ᾱ")).to(pred.device, wd).reshape(shape)
            a, b = ab.sqrt(), (1.0 - ab).sqrt()
            x = x_t.to(wd)
            if prediction == "x0":
                eps = (x - a * p) / b
                new = (x - b * (eps / lam_t)) / a
            elif prediction == "v":
                eps = a * p + b * x
                new = (eps / lam_t - b * x) / a
            else:
                raise ValueError(f"unknown prediction {prediction!r}")
        new = new.to(pred.dtype)
        if not uniform:  # samples with λ = 1 keep their prediction bit for bit
            keep = torch.from_numpy(lam_np == 1.0).to(pred.device).reshape(shape)
            new = torch.where(keep, pred, new)
    return new if rest is None else torch.cat([new, rest], dim=1)


class WrapsInner(torch.nn.Module):
    """A wrapper module whose unknown attributes come from the wrapped network ``self.inner`` (σ range,
    resolution, label dim, ...), after its own parameters, buffers and submodules."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner" or "inner" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["inner"], name)
