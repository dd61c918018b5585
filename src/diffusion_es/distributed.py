"""Run ``sample``, ``fid`` and ``calibrate`` over several processes and machines with torch.distributed.

Launch any of them with ``torchrun --nproc_per_node N diffusion-es ...`` (see ``docs/distributed.md``). Without
torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op and a command runs as one process.

* :func:`session`: joins the process group from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT): gloo for CPU tensors, plus NCCL for CUDA tensors when the command samples on CUDA.
* Every collective starts with a **status exchange** (:meth:`Context.exchange`): each rank sends "ok" or its
  error. A rank that fails sends its one-line message at the next exchange; the others stop there, so an error
  on any rank ends the run (its message printed once, every process exiting with code 2) instead of a hang. All
  collectives have a timeout (``DIFFUSION_ES_DIST_TIMEOUT`` seconds, default 1800) for a rank that dies silently.
* :class:`ShardedRun`: seeds are cut into fixed chunks of whole batches (independent of the number of processes),
  each chunk written atomically to ``OUT.parts/`` under a name keyed by a hash of everything that determines
  its samples. Rank 0 merges them into the one file a single-process run writes. A killed run restarted with the
  same arguments (and any number of processes) samples only the chunks that are missing.
* :meth:`Context.all_reduce_stats`: Fréchet feature statistics are combined by summing their three sums
  (``n``, ``sum``, ``sum_outer``) across ranks, never by gathering features.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from .errors import UsageError

__all__ = ["Context", "session", "split", "span", "ShardedRun", "ShardedMetric", "extract_stats",
           "model_fingerprint", "shard_seeds_per_chunk", "DEFAULT_SHARD_SIZE"]

DEFAULT_SHARD_SIZE = 256          # seeds per shard, at least (rounded up to whole batches)
TIMEOUT_ENV = "DIFFUSION_ES_DIST_TIMEOUT"
_USAGE_TYPES = (UsageError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class _PeerFailed(Exception):
    """Another rank failed (it prints the message); this rank ends quietly with code 2."""


class _Timeout(Exception):
    """A collective did not complete in time: a rank died or hung."""


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# ---- splitting work ----------------------------------------------------------------------------------------
def span(n: int, world: int, rank: int, align: int = 1):
    """The contiguous index range [lo, hi) of ``n`` items that ``rank`` of ``world`` takes.

    Boundaries fall on multiples of ``align`` (e.g. the batch size, so every batch is the batch a one-process run
    forms) whenever there are at least ``world`` such blocks; otherwise the items are split evenly."""
    if align > 1 and n >= world * align:
        units = math.ceil(n / align)
        return min(n, (rank * units // world) * align), min(n, ((rank + 1) * units // world) * align)
    return rank * n // world, (rank + 1) * n // world


def split(items: Sequence, world: int, rank: int, mode: str = "contiguous", align: int = 1) -> list:
    """This rank's part of ``items``: a contiguous block (see :func:`span`) or every ``world``-th item."""
    if mode == "strided":
        return list(items[rank::world])
    if mode != "contiguous":
        raise ValueError(f"unknown split mode {mode!r}: use contiguous or strided")
    lo, hi = span(len(items), world, rank, align)
    return list(items[lo:hi])


# ---- the process group -------------------------------------------------------------------------------------
class Context:
    """Where this process stands in the run. A single-process run has rank 0 of 1 and no process group."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, timeout: float = 1800.0,
                 cuda: bool = False, owned: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.timeout, self.cuda, self.owned = timeout, cuda, owned

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``) in a distributed run."""
        if self.is_distributed and requested == "cuda":
            return f"cuda:{self.local_rank}"
        return requested

    def part(self, items: Sequence, align: int = 1) -> list:
        """This rank's contiguous part of ``items`` (all of them in a single-process run)."""
        return list(items) if not self.is_distributed else split(items, self.world_size, self.rank, align=align)

    # -- collectives: every one starts with a status exchange ---------------------------------------------------
    def _gather(self, obj) -> list:
        import torch.distributed as dist

        out = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj)
        except Exception as e:  # gloo raises on timeout or when a peer's connection drops
            raise _Timeout(f"rank {self.rank}: lost contact with the other processes ({_one_line(e)[:200]}); "
                           f"one of them died or hung (waited up to {self.timeout:.0f} s, set {TIMEOUT_ENV})") from None
        return out

    def exchange(self, payload=None) -> list:
        """Everyone's ``payload``, in rank order; raises if any rank reported an error instead."""
        if not self.is_distributed:
            return [payload]
        got = self._gather(("ok", payload))
        if any(status != "ok" for status, _ in got):
            raise _PeerFailed()
        return [p for _, p in got]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        return self.exchange(obj if self.is_main else None)[0]

    def barrier(self) -> None:
        self.exchange()

    def all_reduce_stats(self, stats):
        """:class:`~diffusion_es.metrics.frechet.FeatureStats` summed over ranks (n, sum, sum_outer)."""
        if not self.is_distributed:
            return stats
        import torch
        import torch.distributed as dist

        from .metrics.frechet import FeatureStats

        d = stats.dim
        flat = torch.from_numpy(np.concatenate([[float(stats.n)], stats.sum, stats.sum_outer.ravel()]))
        if self.cuda:
            flat = flat.to(f"cuda:{torch.cuda.current_device()}")  # reduced by NCCL
        dims = self.exchange(d)  # status exchange (and a check that the feature networks agree)
        if len(set(dims)) != 1:
            raise UsageError(f"ranks disagree about the feature dimension: {dims}")
        try:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        except Exception as e:
            raise _Timeout(f"rank {self.rank}: feature-statistics all-reduce failed ({_one_line(e)[:200]})") from None
        flat = flat.cpu().numpy()
        out = FeatureStats(d)
        out.n = int(round(flat[0]))
        out.sum = flat[1:1 + d].copy()
        out.sum_outer = flat[1 + d:].reshape(d, d).copy()
        return out

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - best effort on the way out
                pass
            self.owned = False


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    try:
        return int(v) if v not in (None, "") else default
    except ValueError:
        raise UsageError(f"environment variable {name}={v!r} is not an integer; launch with torchrun") from None


def init(device: str = "cpu") -> Context:
    """A :class:`Context` from the torchrun environment; joins the process group if WORLD_SIZE > 1."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Context()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV, "1800"))
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed; install a torch with distributed support")
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if dist.is_initialized():  # a caller's own process group: use it, leave it open
        return Context(dist.get_rank(), dist.get_world_size(), local_rank, timeout, cuda, owned=False)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise UsageError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun (see docs/distributed.md)")
    if cuda and device == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    return Context(rank, world, local_rank, timeout, cuda, owned=True)


class session:
    """``with session(device) as ctx:`` a command's body, with error propagation across ranks.

    In a distributed run an exception on this rank is announced at the next status exchange; the lowest rank
    with a given message re-raises it (prefixed ``rank R:``; the CLI prints one line, exit 2), every other rank
    exits with code 2 without printing the same line again."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.ctx: Optional[Context] = None

    def __enter__(self) -> Context:
        self.ctx = init(self.device)
        return self.ctx

    def __exit__(self, et, e, tb):
        ctx = self.ctx
        if not ctx.is_distributed:
            return False
        if et is None:
            try:
                ctx.exchange()  # the last sync: a rank that failed at the very end still stops the others
            except (_PeerFailed, _Timeout) as err:
                return self._stop(err)
            ctx.close()
            return False
        if isinstance(e, (_PeerFailed, _Timeout)):
            return self._stop(e)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            ctx.close()
            return False
        msg = _one_line(e)
        try:
            got = ctx._gather(("error", msg))
        except _Timeout:
            got = None
        ctx.close()
        if got is not None and any(s == "error" and m == msg for s, m in got[:ctx.rank]):
            raise SystemExit(2)  # a lower rank prints the same message
        if isinstance(e, _USAGE_TYPES):
            raise UsageError(f"rank {ctx.rank}: {msg}") from None
        return False  # an unexpected error: its traceback, as in a single-process run

    def _stop(self, err):
        self.ctx.close()
        if isinstance(err, _Timeout):
            raise UsageError(str(err)) from None
        raise SystemExit(2)


# ---- resumable sharded sampling ----------------------------------------------------------------------------
def model_fingerprint(module) -> str:
    """sha256 of a network's parameters and buffers (names, dtypes, shapes, values)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shard_seeds_per_chunk(batch_size: int, shard_size: int = DEFAULT_SHARD_SIZE) -> int:
    """Seeds per shard: ``shard_size`` rounded up to whole batches, so a shard's batches are exactly the
    batches a one-process run forms (the samples are then equal by construction, not by luck)."""
    return batch_size * max(1, math.ceil(shard_size / batch_size))


class ShardedRun:
    """Sample ``seeds`` chunk by chunk into ``OUT.parts/``; rank 0 merges the chunks in seed order.

    ``identity`` is a JSON-able dict of everything that determines the samples (model fingerprint, sampler
    options, batch size, ...); with each chunk's seeds it keys the shard file, so a changed option never
    reuses a stale shard, and a different number of processes still does."""

    def __init__(self, ctx: Context, out, identity: dict, seeds: Sequence[int], batch_size: int,
                 shard_size: int = DEFAULT_SHARD_SIZE):
        self.ctx, self.out = ctx, Path(out)
        self.dir = self.out.with_name(self.out.name + ".parts")
        self.seeds = [int(s) for s in seeds]
        per = shard_seeds_per_chunk(batch_size, shard_size)
        self.chunks = [self.seeds[i:i + per] for i in range(0, len(self.seeds), per)]
        self.base = json.dumps({"format": 1, **identity, "batch_size": int(batch_size)}, sort_keys=True,
                               default=str)
        self.reused = 0

    def shard_path(self, chunk: Sequence[int]) -> Path:
        h = hashlib.sha256(self.base.encode())
        h.update(np.asarray(chunk, dtype=np.int64).tobytes())
        return self.dir / f"seeds{chunk[0]}-{chunk[-1]}-{h.hexdigest()[:16]}.npz"

    def _complete(self, i: int) -> bool:
        p = self.shard_path(self.chunks[i])
        if not p.is_file():
            return False
        try:
            with np.load(p, allow_pickle=False) as f:
                return np.array_equal(f["seeds"], np.asarray(self.chunks[i], dtype=np.int64))
        except Exception:  # unreadable: sample it again
            return False

    def execute(self, run_chunk: Callable, progress: Optional[Callable[[int], None]] = None) -> Optional[np.ndarray]:
        """Sample every missing chunk (``run_chunk(seeds, per_batch_progress) -> array``, one row per seed) and
        return the merged array on rank 0 (``None`` on other ranks). ``progress(n)`` is called on rank 0."""
        ctx = self.ctx
        pending = ([i for i in range(len(self.chunks)) if not self._complete(i)] if ctx.is_main else None)
        pending = ctx.broadcast(pending)
        done_before = sum(len(self.chunks[i]) for i in set(range(len(self.chunks))) - set(pending))
        self.reused = done_before
        if ctx.is_main and progress and done_before:
            progress(done_before)
        if ctx.is_main and done_before:
            print(f"resuming: {done_before} of {len(self.seeds)} seeds already sampled in {self.dir}",
                  file=sys.stderr)
        self.dir.mkdir(parents=True, exist_ok=True)
        W = ctx.world_size
        for r in range(math.ceil(len(pending) / W)):  # round r: chunk pending[r*W + rank] on each rank
            mine = r * W + ctx.rank
            n = 0
            if mine < len(pending):
                chunk = self.chunks[pending[mine]]
                arr = run_chunk(chunk, progress if W == 1 else None)
                if len(arr) != len(chunk):
                    raise RuntimeError(f"sampling returned {len(arr)} rows for {len(chunk)} seeds")
                self._write(chunk, arr)
                n = len(chunk)
            counts = ctx.exchange(n)  # the per-round sync: progress, and a failure anywhere stops everyone
            if ctx.is_main and progress and W > 1:
                progress(sum(counts))
        return self._merge() if ctx.is_main else None

    def _write(self, chunk, arr) -> None:
        from .io import atomic_path

        with atomic_path(self.shard_path(chunk), suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=arr, seeds=np.asarray(chunk, dtype=np.int64))

    def _merge(self) -> np.ndarray:
        parts = []
        for chunk in self.chunks:
            p = self.shard_path(chunk)
            if not p.is_file():
                raise UsageError(f"{p}: shard missing after all processes finished; in a multi-machine run put "
                                 "--out on a filesystem that every machine shares")
            with np.load(p, allow_pickle=False) as f:
                arr, s = f["arr_0"], f["seeds"]
            if not np.array_equal(s, np.asarray(chunk, dtype=np.int64)) or len(arr) != len(chunk):
                raise UsageError(f"{p}: shard does not hold seeds {chunk[0]}..{chunk[-1]}; delete it and rerun")
            parts.append(arr)
        return np.concatenate(parts)

    def cleanup(self) -> None:
        """Remove this run's shards (rank 0, after the merged file is written) and the folder if empty."""
        if not self.ctx.is_main:
            return
        for chunk in self.chunks:
            self.shard_path(chunk).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:  # other runs' shards, or already gone
            pass


# ---- distributed metrics -----------------------------------------------------------------------------------
def extract_stats(ctx: Context, extractor, images: np.ndarray, keep_features: int = 0, desc: str = "features"):
    """:func:`diffusion_es.metrics.features.extract_stats` with the images split over ranks in whole feature
    batches (so every feature vector is computed exactly as in one process), the statistics all-reduced and the
    first ``keep_features`` features (for precision/recall) collected in order. Same result on every rank."""
    from .metrics.features import extract_stats as _extract

    if not ctx.is_distributed:
        return _extract(extractor, images, keep_features=keep_features, desc=desc)
    lo, hi = span(len(images), ctx.world_size, ctx.rank, align=extractor.batch_size)
    stats, kept = _extract(extractor, images[lo:hi], keep_features=max(0, keep_features - lo),
                           progress=ctx.is_main, desc=desc)
    stats = ctx.all_reduce_stats(stats)
    parts = [k for k in ctx.exchange(kept if lo < keep_features else None) if k is not None]
    return stats, (np.concatenate(parts)[:keep_features] if parts else None)


class ShardedMetric:
    """A sample-quality metric fed with this rank's part of the samples; returns the value of the whole set.

    An :class:`~diffusion_es.quality.FDMetric` reduces feature statistics (sums) across ranks; any other metric
    gathers the samples. Every rank returns rank 0's value, so all ranks take the same decisions."""

    def __init__(self, ctx: Context, metric):
        self.ctx, self.metric = ctx, metric
        self.name = getattr(metric, "name", "metric")

    def __call__(self, x_local) -> float:
        import torch

        ctx = self.ctx
        if not ctx.is_distributed:
            return float(self.metric(x_local))
        if hasattr(self.metric, "features") and hasattr(self.metric, "ref_stats"):
            from .metrics.frechet import FeatureStats, frechet_distance

            feats = self.metric.features(x_local)
            stats = ctx.all_reduce_stats(FeatureStats(feats.shape[1]).update(feats))
            value = float(frechet_distance(stats, self.metric.ref_stats))
        else:
            parts = ctx.exchange(x_local.cpu().numpy())
            value = float(self.metric(torch.from_numpy(np.concatenate(parts))))
        return float(ctx.broadcast(value))


def seed_splitter(ctx: Context, batch_size: int) -> Optional[Callable[[Sequence[int]], List[int]]]:
    """For ``calibrate(shard=...)``: this rank's contiguous part of a seed set (whole batches when possible);
    ``None`` in a single-process run."""
    if not ctx.is_distributed:
        return None
    return lambda seeds: ctx.part(seeds, align=batch_size)
