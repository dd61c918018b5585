"""A small UNet for images (B, C, H, W): residual blocks with GroupNorm and a time embedding (scale-shift),
strided-conv downsampling, nearest upsampling, optional self-attention at chosen resolutions."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .mlp import timestep_embedding

__all__ = ["UNet"]


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(e))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm = _norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x, e=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).reshape(b, c, h * w)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(a.transpose(-1, -2).reshape(b, c, h * w)).reshape(b, c, h, w)


class UNet(nn.Module):
    """``net(x_t, t) -> prediction`` for images; output has C channels (2C with learned variance)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c_in, res, _ = config.data_shape
        ch0 = config.channels
        e = config.time_embed_dim or 4 * ch0
        self.emb_dim = e
        self.time_mlp = nn.Sequential(nn.Linear(ch0, e), nn.SiLU(), nn.Linear(e, e))
        self.inp = nn.Conv2d(c_in, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch0]
        ch = ch0
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [_ResBlock(ch, ch0 * mult, e, config.dropout)]
                ch = ch0 * mult
                if res in config.attention_resolutions:
                    layers.append(_Attention(ch, config.num_heads))
                self.down.append(nn.ModuleList(layers))
                skips.append(ch)
            if level < len(config.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([_ResBlock(ch, ch, e, config.dropout), _Attention(ch, config.num_heads),
                                  _ResBlock(ch, ch, e, config.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [_ResBlock(ch + skips.pop(), ch0 * mult, e, config.dropout)]
                ch = ch0 * mult
                if res in config.attention_resolutions:
                    layers.append(_Attention(ch, config.num_heads))
                if level > 0 and i == config.num_res_blocks:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(nn.ModuleList(layers))
        self.out_norm = _norm(ch)
        self.out = _zero(nn.Conv2d(ch, config.out_channels, 3, padding=1))

    @staticmethod
    def _run(layers, h, e):
        for layer in layers:
            h = layer(h, e) if isinstance(layer, (_ResBlock, _Attention)) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.config.data_shape:
            raise ValueError(f"model expects inputs of shape (B, {', '.join(map(str, self.config.data_shape))}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        e = self.time_mlp(timestep_embedding(t, self.config.channels))
        h = self.inp(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, e)
            hs.append(h)
        h = self._run(self.mid, h, e)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), e)
        return self.out(F.silu(self.out_norm(h)))
