"""Run ``sample``, ``fid`` and ``calibrate`` over several processes and machines with torch.distributed.

Launch any of them with ``torchrun --nproc_per_node N diffusion-es ...`` (see ``docs/distributed.md``). Without
torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op and a command runs as one process.

* :func:`session`: joins the process group from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT): gloo for CPU tensors, plus NCCL for CUDA tensors when the command samples on CUDA.
* Every collective starts with a **status exchange** (:meth:`Context.exchange`): each rank sends "ok" or its
  error. A rank that fails sends its one-line message at the next exchange; the others stop there, so an error
  on any rank ends the run (its message printed once, every process exiting with code 2) instead of a hang. All
  collectives have a timeout (``DIFFUSION_ES_DIST_TIMEOUT`` seconds, default 1800) for a rank that dies silently.
* :meth:`Context.all_reduce_sum`: arrays summed across ranks (Fréchet feature statistics are combined this way,
  by their three sums, in :mod:`diffusion_es.metrics.sharded`, never by gathering features).

This module is only the process-group protocol. Resumable sharded sampling (:class:`~diffusion_es.store.ShardedRun`)
lives in :mod:`diffusion_es.store`, distributed metrics in :mod:`diffusion_es.metrics.sharded`.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Callable, List, Optional, Sequence

import numpy as np

from .errors import UsageError, user_message

__all__ = ["Context", "session", "init", "split", "span", "seed_splitter"]

TIMEOUT_ENV = "DIFFUSION_ES_DIST_TIMEOUT"


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

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """A float64 array summed elementwise over ranks (NCCL on CUDA runs, else gloo); every rank must pass an
        array of the same shape (checked at the status exchange)."""
        values = np.asarray(values, dtype=np.float64)
        if not self.is_distributed:
            return values
        import torch
        import torch.distributed as dist

        shapes = self.exchange(tuple(values.shape))
        if len(set(shapes)) != 1:
            raise UsageError(f"ranks disagree about the shape of a reduced quantity: {shapes}")
        flat = torch.from_numpy(values.ravel().copy())
        if self.cuda:
            flat = flat.to(f"cuda:{torch.cuda.current_device()}")  # reduced by NCCL
        try:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        except Exception as e:
            raise _Timeout(f"rank {self.rank}: all-reduce failed ({_one_line(e)[:200]})") from None
        return flat.cpu().numpy().reshape(values.shape)

    def close(self) -> None:
        if self.owned:
            import gc

            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - best effort on the way out
                pass
            self.owned = False
            # free now, while the interpreter is whole, what still refers to the group's work: gloo work objects
            # that hold Python references and are destroyed during interpreter finalization take the GIL there
            # and abort the process (pytorch/pytorch#179291); a finished run then ended with SIGABRT on rank 0
            gc.collect()


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
    import faulthandler

    import torch
    import torch.distributed as dist

    if not faulthandler.is_enabled():  # a rank killed by a signal (SIGABRT in a C++ thread) shows where it was
        faulthandler.enable()
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
        msg = user_message(e) or _one_line(e)
        try:
            got = ctx._gather(("error", msg))
        except _Timeout:
            got = None
        ctx.close()
        if got is not None and any(s == "error" and m == msg for s, m in got[:ctx.rank]):
            raise SystemExit(2)  # a lower rank prints the same message
        if user_message(e) is not None:
            raise UsageError(f"rank {ctx.rank}: {msg}") from None
        return False  # an unexpected error: its traceback, as in a single-process run

    def _stop(self, err):
        self.ctx.close()
        if isinstance(err, _Timeout):
            raise UsageError(str(err)) from None
        raise SystemExit(2)


def seed_splitter(ctx: Context, batch_size: int) -> Optional[Callable[[Sequence[int]], List[int]]]:
    """For ``calibrate(shard=...)``: this rank's contiguous part of a seed set (whole batches when possible);
    ``None`` in a single-process run."""
    if not ctx.is_distributed:
        return None
    return lambda seeds: ctx.part(seeds, align=batch_size)
