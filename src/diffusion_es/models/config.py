"""Network sizes as a typed config that round-trips through JSON.

One :class:`ModelConfig` describes the network (architecture, data shape, widths); the diffusion process the
network was trained for (T, beta schedule, prediction type, learned variance) lives beside it in the checkpoint's
``config.json`` (see :mod:`diffusion_es.models.checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Tuple

from ..errors import UsageError

__all__ = ["ModelConfig", "ARCHS"]

ARCHS = ("mlp", "unet")


@dataclass
class ModelConfig:
    """Sizes of a denoising network.

    * ``arch='mlp'``: a residual MLP over the flattened input (vectors (D,) or small images (C, H, W)):
      ``blocks`` residual blocks of width ``width``; the time embedding is added inside every block.
    * ``arch='unet'``: a small UNet for images (C, H, W): ``channels`` base width, one level per entry of
      ``channel_mult`` (H and W must be divisible by 2**(levels-1)), ``num_res_blocks`` per level, self-attention
      at the resolutions in ``attention_resolutions``.
      ``input_skip`` adds ``g(t)·x_t`` to the (ε or v) output, a per-timestep gate: the part of the target that
      is the input itself then needs no room in the ``width``-wide trunk.
    * ``out_channels`` is C (or 2C with ``learned_variance``: ε then ADM's variance interpolation value).
    """

    arch: str = "mlp"
    data_shape: Tuple[int, ...] = (1, 8, 8)
    learned_variance: bool = False
    # MLP
    width: int = 512
    blocks: int = 4
    input_skip: bool = False  # a time-gated skip from the input to the output (ε ≈ x_t/σ needs it when width < dim)
    # UNet
    channels: int = 64
    channel_mult: Tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = ()
    num_heads: int = 4
    # shared
    time_embed_dim: int = 0  # 0: 128 (MLP) or 4*channels (UNet)
    dropout: float = 0.0

    def __post_init__(self):
        self.data_shape = tuple(int(s) for s in self.data_shape)
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.arch not in ARCHS:
            raise UsageError(f"unknown model arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        if not self.data_shape or any(s < 1 for s in self.data_shape):
            raise UsageError(f"bad data_shape {self.data_shape}: expected (D,) or (C, H, W) with positive sizes")
        if self.arch == "unet":
            if len(self.data_shape) != 3:
                raise UsageError(f"the UNet needs image data (C, H, W), got data_shape {self.data_shape}; use --arch mlp")
            down = 2 ** (len(self.channel_mult) - 1)
            if self.data_shape[1] % down or self.data_shape[2] % down:
                raise UsageError(f"image size {self.data_shape[1:]} is not divisible by {down} "
                                 f"({len(self.channel_mult)} UNet levels); use fewer channel_mult entries")
        for name in ("width", "blocks", "channels", "num_res_blocks", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if not (0.0 <= self.dropout < 1.0):
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def data_dim(self) -> int:
        return math.prod(self.data_shape)

    def representation_problem(self, prediction: str):
        """Why this network cannot represent the training target of ``prediction``, or None.

        An ε- or v-target contains the noise itself, a full-dimensional function of the input at low noise; a
        residual MLP narrower than the data, without a skip from input to output, cannot carry it through its
        trunk (its ε-MSE cannot fall below about 1 − width/dim at low noise)."""
        if self.arch != "mlp" or self.input_skip or prediction not in ("eps", "v", "flow", "edm"):
            return None
        if self.width < self.data_dim:
            return (f"an MLP of width {self.width} cannot represent the {self.data_dim}-dimensional {prediction} target "
                    f"(its error cannot fall below about 1 − {self.width}/{self.data_dim} = "
                    f"{1 - self.width / self.data_dim:.2f} at low noise): use input_skip (train --input-skip on, "
                    f"the default), a width >= {self.data_dim}, or arch unet")
        return None

    @property
    def in_channels(self) -> int:
        return self.data_shape[0]

    @property
    def out_channels(self) -> int:
        return self.data_shape[0] * (2 if self.learned_variance else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise UsageError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown model config keys {unknown}; this checkpoint was written by another tool or version")
        try:
            return cls(**d)
        except TypeError as e:
            raise UsageError(f"bad model config: {e}") from None
