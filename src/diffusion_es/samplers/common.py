"""What every sampler shares: the per-step callback record and per-seed noise."""

from __future__ import annotations

import operator
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..heap import batch_for, item_bytes, settle_heap
from ..progress import advance as _advance, task as _task
from ..core.param import as_denoiser, sigma_to_flow_space, sigma_to_vp_space
from ..core.pfgm import check_D, seed_scales

__all__ = ["StepInfo", "SeedNoise", "NOISE_BLOCK", "over_seed_batches", "check_seeds", "check_seed_aliases", "MAX_SEED", "SEED_PERIOD",
           "default_noise_workers", "auto_batch_size", "resolve_batch_size", "DEFAULT_BATCH"]

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


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed, but the CPU generator (mt19937)
SEED_PERIOD = 2**32   # keeps only its low 32 bits: seeds s and s + 2^32 draw the same noise


def check_seeds(seeds) -> list:
    """Seeds as a list of distinct whole numbers in [0, 2^63 − 1]; anything else is refused with one line. Seeds
    equal modulo 2^32 are refused together: torch's CPU generator keeps only a seed's low 32 bits, so they would
    be the same sample."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__") or getattr(seeds, "ndim", 1) == 0:
        n = seeds.item() if getattr(seeds, "ndim", 1) == 0 and hasattr(seeds, "item") else seeds  # a 0-d tensor
        raise ValueError(f"seeds must be a collection of whole numbers, e.g. range({n!r}) for that many samples, "
                         f"got {type(seeds).__name__} {seeds!r}"[:200])
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int,)) and not (hasattr(s, "__index__")):
            raise ValueError(f"seeds must be whole numbers, got {s!r}")
        try:
            v = int(s.__index__()) if not isinstance(s, int) else s
        except (TypeError, ValueError, RuntimeError):  # e.g. an element of a float tensor
            raise ValueError(f"seeds must be whole numbers, got {s!r}") from None
        if not 0 <= v <= MAX_SEED:
            raise ValueError(f"seeds must lie in [0, 2^63 − 1], got {v}")
        out.append(v)
    if not out:
        raise ValueError("no seeds given: sample at least one")
    if len(set(out)) != len(out):
        raise ValueError("seeds must be distinct: a repeated seed gives a repeated sample")
    check_seed_aliases(out)
    return out


def check_seed_aliases(seeds: Sequence[int]) -> None:
    """Refuse seeds equal modulo 2^32 (distinct seeds assumed): the same sample twice."""
    if max(seeds) < SEED_PERIOD or len({v & (SEED_PERIOD - 1) for v in seeds}) == len(seeds):
        return
    first = {}
    for v in seeds:
        if first.setdefault(v & (SEED_PERIOD - 1), v) != v:
            raise ValueError(f"seeds {first[v & (SEED_PERIOD - 1)]} and {v} give the same sample: torch's CPU "
                             f"generator keeps only the low 32 bits of a seed (use seeds below 2^32)")


_POOL: Optional[ThreadPoolExecutor] = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _noise_pool(workers: int) -> ThreadPoolExecutor:
    """The shared threads that draw noise for SeedNoise(workers > 0) (created on first use, grown on demand)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)  # its queued work still runs; new work goes to the larger pool
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="diffusion-es-noise")
            _POOL_SIZE = workers
        return _POOL


def _fill(rows, gens) -> None:
    for row, g in zip(rows, gens):
        row.normal_(generator=g)  # = torch.randn(row.shape, generator=g, out=row): rows are contiguous


def default_noise_workers(device) -> int:
    """Threads drawing step noise ahead of the sampler: none on the CPU (the draws would compete with the network
    for its cores), up to 4 when the network runs on an accelerator and the CPU would otherwise wait."""
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class SeedNoise:
    """Noise that depends only on each sample's seed, never on the batch it is drawn in.

    One ``torch.Generator`` (CPU) per seed. Its first draw is the initial noise ``z`` (shape ``shape``); every later
    draw is step noise, drawn per seed in blocks of ``NOISE_BLOCK`` steps (one draw of shape
    ``(NOISE_BLOCK, *shape)`` per seed and block). Baseline and ES runs with the same seeds therefore see identical
    noise. Draws are float32 (the field's convention) returned as float64 on ``device``, a fresh tensor per call.

    That protocol defines every stochastic sample; *how* the draws are made is free as long as no byte changes
    (``tests/test_seed_noise.py`` checks this against the protocol written out literally):

    * each seed's row is filled in place with ``Tensor.normal_`` on its own generator, which is what
      ``torch.randn(..., generator=g)`` runs inside, without its per-call argument handling (the fixed cost that
      dominated small draws);
    * with ``workers`` > 0 (default on an accelerator, see :func:`default_noise_workers`) the rows of a block are
      split among that many threads, and the next block is drawn in the background as soon as the current one is
      first used, so the CPU draws while the device computes. A generator is only ever used by one thread at a
      time and its draws stay in order, so the bytes do not depend on ``workers``;
    * on CUDA a block is drawn into pinned memory and copied to the device once, in float32 and asynchronously;
      each step is then gathered and cast to float64 on the device.

    ``pfgm_D`` (a PFGM++ model's D; ∞, the default, is the Gaussian): the initial noise is the PFGM++ kernel's draw
    at unit σ, ``z·√w`` with the seed's own mixing variable w (:func:`~diffusion_es.core.pfgm.seed_scales`); for
    D = ∞ it is ``z`` itself, the same bytes as without the option. Step noise stays Gaussian.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device="cpu", *, workers: Optional[int] = None,
                 pfgm_D=None):
        self.seeds = [int(s) for s in seeds]
        if self.seeds:
            check_seed_aliases(self.seeds)  # (the samplers' own entry point checks the rest in check_seeds)
        self.pfgm_D = check_D(pfgm_D)
        self.shape = tuple(int(d) for d in shape)
        self.device = torch.device(device)
        self.workers = default_noise_workers(self.device) if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self._z = self._wait(self._start(self.shape))
        self._block_start, self._block, self._next, self._closed = None, None, None, False
        # drawn in place, one block at a time, on the CPU: every block reuses one buffer (and its row views), as
        # each step is handed out as a float64 copy; drawing ahead needs a fresh buffer per block
        self._reuse = self.workers == 0 and self.device.type == "cpu"
        self._buffer = None

    def _start(self, shape, reuse: bool = False):
        """Begin one float32 draw of ``shape`` per seed into ``(B, *shape)`` (row k from seed k's generator).
        ``reuse``: draw into the buffer of the previous such call (its contents are overwritten)."""
        if reuse and self._buffer is not None:
            out, rows = self._buffer
        else:
            out = torch.empty((len(self.seeds), *shape), pin_memory=self._pin)
            rows = out.unbind(0)
            if reuse:
                self._buffer = out, rows
        if self.workers == 0 or not rows:
            _fill(rows, self._gens)
            return out, []
        n = len(rows)
        w = min(self.workers, n)
        cuts = [n * k // w for k in range(w + 1)]  # contiguous runs of seeds, one per thread
        pool = _noise_pool(w)
        return out, [pool.submit(_fill, rows[a:b], self._gens[a:b]) for a, b in zip(cuts, cuts[1:])]

    @staticmethod
    def _wait(draw) -> torch.Tensor:
        out, futures = draw
        for f in futures:
            f.result()
        return out

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
            if self._closed:
                raise RuntimeError("this SeedNoise was closed: make a new one")
            if self._block_start is not None and start < self._block_start:
                raise RuntimeError("step noise must be requested in increasing step order")
            block_shape = (NOISE_BLOCK, *self.shape)
            while self._block_start is None or self._block_start < start:
                # draw (and, if steps were skipped, discard) blocks so the stream position depends only on i
                draw, self._next = self._next or self._start(block_shape, reuse=self._reuse), None
                block = self._wait(draw)
                self._block_start = 0 if self._block_start is None else self._block_start + NOISE_BLOCK
            # one float32 copy per block (asynchronous from pinned memory); then draw the next one ahead
            self._block = block.to(self.device, non_blocking=self._pin)
            if self.workers:
                self._next = self._start(block_shape)
        return self._block[:, i - start].to(self.device, torch.float64)

    def close(self) -> None:
        """Stop drawing ahead: a block being drawn for a step nobody asked for is dropped (its threads that have not
        started are cancelled), so the next batch's draws do not queue behind it. Steps of the current block stay
        available; a later block cannot be drawn any more (the generators may be part-way through one)."""
        self._closed = True
        if self._next is not None:
            for f in self._next[1]:
                f.cancel()
            self._next = None


DEFAULT_BATCH = 500  # samples per batch off the CPU, and the most auto_batch_size gives on it


def auto_batch_size(denoiser, shape, device="cpu", cap: int = DEFAULT_BATCH) -> int:
    """The batch the sampling commands use unless told: on the CPU, as many samples as keep the largest tensor of
    one network call within :data:`~diffusion_es.heap.BATCH_BYTES` (measured by dry calls for 1, 2 and 3
    samples; see :mod:`diffusion_es.heap`), at most ``cap``; ``cap`` on any other device. It depends on the
    network, the shape and the torch version, never on memory or load, so every rank and every resume agrees.

    On the CPU a larger batch is slower, not faster, once its tensors pass glibc's 32 MiB mmap ceiling: ``sample``
    of 500 images from the shipped MNIST UNet took 29–31 s as one batch, a third of it in the kernel mapping fresh
    pages, and 26 s in its auto batches of 111 (docs/benchmarks.md). The dry calls run the network on zeros at
    σ = 1 without gradients; a network with state that changes when called (BatchNorm in training mode, counters)
    sees them."""
    if torch.device(device).type != "cpu":
        return int(cap)
    den = as_denoiser(denoiser)
    return batch_for(item_bytes(lambda n: den(torch.zeros((n, *shape), dtype=torch.float64), 1.0)), cap)


def resolve_batch_size(batch_size, denoiser, shape, device="cpu") -> int:
    """Samples per batch: ``None`` or ``"auto"`` give :func:`auto_batch_size`, a whole number >= 1 is kept; anything
    else is refused. The one place every sampling entry point (library and commands) turns its option into a size."""
    if batch_size is None or batch_size == "auto":
        return auto_batch_size(denoiser, shape, device)
    try:
        n = operator.index(batch_size)
    except TypeError:
        n = 0
    if isinstance(batch_size, bool) or n < 1:
        raise ValueError(f"batch size must be a whole number >= 1 or 'auto', got {batch_size!r}")
    return n


def over_seed_batches(seeds, shape, batch_size: int, device, run, callback=None, progress=None,
                      pfgm_D=None) -> torch.Tensor:
    """Run ``run(noise, cb) -> samples`` on batches of seeds with per-seed noise; float64 results on the CPU.
    ``pfgm_D``: the initial noise of a PFGM++ model (:class:`SeedNoise`).

    ``callback(info, seeds_of_batch)`` is handed to ``run`` as ``cb(info)``; ``progress(n_done)`` after each batch,
    which is also reported to :mod:`diffusion_es.progress`.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given: sample at least one")
    settle_heap()
    out = []
    with _task(len(seeds)):  # (shown where a caller tracks it: diffusion_es.progress)
        for start in range(0, len(seeds), batch_size):
            batch = seeds[start:start + batch_size]
            noise = SeedNoise(batch, shape, device, pfgm_D=pfgm_D)
            cb = None if callback is None else (lambda info, b=batch: callback(info, b))
            try:
                with torch.no_grad():
                    out.append(run(noise, cb).cpu())
            finally:
                noise.close()
            if progress is not None:
                progress(len(batch))
            _advance(len(batch))
    return torch.cat(out)
