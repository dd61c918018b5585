"""A residual MLP with a sinusoidal time embedding, for vectors (B, D) and flattened small images (B, C, H, W)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig

__all__ = ["timestep_embedding", "ResMLP"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a continuous timestep (B,) -> (B, dim): [cos(t f_k), sin(t f_k)],
    f_k = max_period^(-k/half), k = 0..half-1 (the Transformer / ADM frequencies); an odd dim gets a zero column."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _Block(nn.Module):
    """h + W2 · SiLU(W1 · SiLU(LN(h)) + E · e): pre-norm residual block; the time embedding e enters in the middle."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h, e):
        z = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(e)
        return h + self.fc2(self.drop(nn.functional.silu(z)))


class ResMLP(nn.Module):
    """``net(x_t, t) -> prediction`` with x_t of shape (B, *data_shape) and t (B,) float in [0, T-1].

    The output has the input's shape, or twice its channels (dim 1) with learned variance.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d_in = math.prod(config.data_shape)
        self.d_in = d_in
        w = config.width
        e = config.time_embed_dim or 128
        self.emb_dim = e
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.inp = nn.Linear(d_in, w)
        self.blocks = nn.ModuleList([_Block(w, e, config.dropout) for _ in range(config.blocks)])
        self.out_norm = nn.LayerNorm(w)
        n_out = d_in * (2 if config.learned_variance else 1)
        self.out = nn.Linear(w, n_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if config.input_skip:  # g(t)·x_t added to the prediction channels: the input needs no room in the trunk
            self.skip_gate = nn.Linear(e, 1)
            nn.init.zeros_(self.skip_gate.weight)
            nn.init.zeros_(self.skip_gate.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        if shape != self.config.data_shape:
            raise ValueError(f"model expects inputs of shape (B, {', '.join(map(str, self.config.data_shape))}), got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        e = self.time_mlp(timestep_embedding(t, self.emb_dim))
        h = self.inp(x.reshape(b, -1))
        for blk in self.blocks:
            h = blk(h, e)
        y = self.out(nn.functional.silu(self.out_norm(h)))
        if self.config.input_skip:
            skip = self.skip_gate(e) * x.reshape(b, -1)
            y = torch.cat([y[:, :self.d_in] + skip, y[:, self.d_in:]], dim=1) if self.config.learned_variance \
                else y + skip
        if self.config.learned_variance:
            # channels: [eps (C), var values (C)] along dim 1
            return torch.cat([y[:, : self.d_in].reshape(b, *shape), y[:, self.d_in:].reshape(b, *shape)], dim=1)
        return y.reshape(b, *shape)
