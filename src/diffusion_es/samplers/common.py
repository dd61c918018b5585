"""What every sampler shares: the per-step callback record and per-seed noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..core.param import sigma_to_flow_space, sigma_to_vp_space
from ..core.pfgm import check_D, seed_scales

__all__ = ["StepInfo", "SeedNoise", "NOISE_BLOCK", "over_seed_batches", "check_seeds", "MAX_SEED"]

# Step noise is drawn per seed in blocks of this many steps. It is part of the noise protocol (changing it
# changes every stochastic sample), so it is a constant, never derived from memory or batch size.
NOISE_BLOCK = 8


@dataclass
class StepInfo:
    """What a sampler reports at every network evaluation (``callback(info)``).

    ``x`` is the network input in sigma space (``x = x_t / sqrt(ᾱ)``), ``denoised`` the x_0 estimate the sampler
    uses (after ES, before any clipping), ``eps = (x - denoised) / sigma`` the ε the sampler uses (ε_θ / λ under
    ES). ``i`` is the sampling step (0 = first, noisiest), ``stage`` is ``"step"`` or, for Heun's second
    evaluation, ``"correction"``. ``t`` is the VP timestep for VP samplers, the flow time for flow samplers (None
    for EDM samplers). ``process`` names the sampler's own state (:attr:`x_state`): ``"vp"`` (also for EDM samplers,
    whose training-style comparisons are made in VP space) or ``"flow"``. At σ = ∞ (t = 1, ᾱ = 0) ``x`` is the
    state itself and ``eps = x`` (the σ = ∞ convention of :mod:`diffusion_es.core.param`).
    """

    i: int
    n: int
    sigma: float
    x: torch.Tensor
    denoised: torch.Tensor
    eps: torch.Tensor
    t: Optional[float] = None
    stage: str = "step"
    process: str = "vp"

    @property
    def x_vp(self) -> torch.Tensor:
        """The same input in VP space: x_t = x / sqrt(1 + σ²)."""
        return sigma_to_vp_space(self.x, self.sigma)

    @property
    def x_state(self) -> torch.Tensor:
        """The input as a point of the sampler's process: ``a(σ)·x`` (VP ``x / sqrt(1 + σ²)``, flow ``x / (1 + σ)``)."""
        return self.x_vp if self.process == "vp" else sigma_to_flow_space(self.x, self.sigma)


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def check_seeds(seeds) -> list:
    """Seeds as a list of distinct whole numbers in [0, 2^63 − 1]; anything else is refused with one line."""
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int,)) and not (hasattr(s, "__index__")):
            raise ValueError(f"seeds must be whole numbers, got {s!r}")
        v = int(s.__index__()) if not isinstance(s, int) else s
        if not 0 <= v <= MAX_SEED:
            raise ValueError(f"seeds must lie in [0, 2^63 − 1], got {v}")
        out.append(v)
    if not out:
        raise ValueError("no seeds given: sample at least one")
    if len(set(out)) != len(out):
        raise ValueError("seeds must be distinct: a repeated seed gives a repeated sample")
    return out


class SeedNoise:
    """Noise that depends only on each sample's seed, never on the batch it is drawn in.

    One ``torch.Generator`` per seed. Its first draw is the initial noise ``z`` (shape ``shape``); every later draw
    is step noise, drawn per seed in blocks of ``NOISE_BLOCK`` steps. Baseline and ES runs with the same seeds
    therefore see identical noise. Draws are float32 (the field's convention) returned as float64.

    ``pfgm_D`` (a PFGM++ model's D; ∞, the default, is the Gaussian): the initial noise is the PFGM++ kernel's draw
    at unit σ, ``z·√w`` with the seed's own mixing variable w (:func:`~diffusion_es.core.pfgm.seed_scales`); for
    D = ∞ it is ``z`` itself, the same bytes as without the option. Step noise stays Gaussian.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device="cpu", pfgm_D=None):
        self.seeds = [int(s) for s in seeds]
        self.pfgm_D = check_D(pfgm_D)
        self.shape = tuple(int(d) for d in shape)
        self.device = torch.device(device)
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self._z = torch.empty((len(self.seeds), *self.shape))
        for k, g in enumerate(self._gens):
            torch.randn(self.shape, generator=g, out=self._z[k])
        self._block_start, self._block = None, None

    def initial(self) -> torch.Tensor:
        z = self._z.to(self.device, torch.float64)
        if self.pfgm_D == float("inf"):
            return z
        scale = torch.from_numpy(seed_scales(self.seeds, self.pfgm_D)).to(self.device)
        return z * scale.reshape(-1, *([1] * (z.ndim - 1)))

    def __call__(self, i: int) -> torch.Tensor:
        """Step noise for sampling step ``i`` (steps must be requested in increasing order)."""
        start = (i // NOISE_BLOCK) * NOISE_BLOCK
        if self._block_start != start:
            if self._block_start is not None and start < self._block_start:
                raise RuntimeError("step noise must be requested in increasing step order")
            while self._block_start is None or self._block_start < start:
                # draw (and, if steps were skipped, discard) blocks so the stream position depends only on i
                if self._block is None:
                    self._block = torch.empty((len(self.seeds), NOISE_BLOCK, *self.shape))
                for k, g in enumerate(self._gens):
                    torch.randn((NOISE_BLOCK, *self.shape), generator=g, out=self._block[k])
                self._block_start = 0 if self._block_start is None else self._block_start + NOISE_BLOCK
        return self._block[:, i - start].to(self.device, torch.float64)


def over_seed_batches(seeds, shape, batch_size: int, device, run, callback=None, progress=None,
                      pfgm_D=None) -> torch.Tensor:
    """Run ``run(noise, cb) -> samples`` on batches of seeds with per-seed noise; float64 results on the CPU.
    ``pfgm_D``: the initial noise of a PFGM++ model (:class:`SeedNoise`).

    ``callback(info, seeds_of_batch)`` is handed to ``run`` as ``cb(info)``; ``progress(n_done)`` after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given: sample at least one")
    out = []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start:start + batch_size]
        noise = SeedNoise(batch, shape, device, pfgm_D)
        cb = None if callback is None else (lambda info, b=batch: callback(info, b))
        with torch.no_grad():
            out.append(run(noise, cb).cpu())
        if progress is not None:
            progress(len(batch))
    return torch.cat(out)
