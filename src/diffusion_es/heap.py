"""The process heap under repeated network calls (glibc): keep freed activations instead of faulting them in again.

glibc's malloc serves a block below its *mmap threshold* from the heap and hands the heap's free top back to the
system once it exceeds the *trim threshold*. Both start low (128 KiB and 128 KiB) and rise only when a block that
was mmapped is freed (to its size, and twice its size). A network whose activations add up to a few MiB then often
has them trimmed after a forward pass and page-faulted in again, zeroed, at the next one, depending on how the
caller's own tensors sit on the heap in between: 7–9 thousand minor faults per 20-step run of the sampling
benchmark's network (2–4 % of its time, benchmarks/bench_sampling.py), none for the same network called in a tight
loop. Freeing one untouched mmapped block just under glibc's ceiling for that rule (32 MiB on 64-bit systems) raises
both thresholds as the first large tensor freed in any PyTorch program would; nothing is written and no result
changes. Thresholds a user set (mallopt, MALLOC_*_, GLIBC_TUNABLES) switch the rule off, so theirs are kept.

A single block above that ceiling is always mmapped and faulted in afresh, whatever the thresholds: a batch whose
largest tensor is above it pays for every page of that tensor at every call (a third of the time of MNIST sampling
at 500 images a batch here). :func:`batch_for` sizes a batch to keep the largest tensor within
:data:`BATCH_BYTES`, from :func:`item_bytes`; the feature extractors and the CPU default of
the sampling commands use it. The size depends on the network, the input shape and the torch version (which
operations a network's ``forward`` dispatches), never on the machine's memory or load, so the same arguments give
the same batches, and bytes, on every run.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["settle_heap", "BATCH_BYTES", "item_bytes", "batch_for"]

_GLIBC_DYNAMIC_MMAP_MAX = 32 << 20
# the largest single activation a batch should need: half of the ceiling above, so that it stays on the heap
BATCH_BYTES = _GLIBC_DYNAMIC_MMAP_MAX // 2
_HEAP_SETTLED = False


def settle_heap() -> bool:
    """Once per process, on 64-bit Linux with glibc: let freed memory up to ~62 MiB stay on the heap between network
    calls (see the module's text). Returns whether it did so now. Called by every sampling run and every feature
    extraction."""
    global _HEAP_SETTLED
    if _HEAP_SETTLED:
        return False
    _HEAP_SETTLED = True
    try:
        is_glibc = sys.platform.startswith("linux") and sys.maxsize > 2**32 and bool(
            os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        is_glibc = False
    if not is_glibc:
        return False
    torch.empty(_GLIBC_DYNAMIC_MMAP_MAX - (1 << 20), dtype=torch.uint8)  # mmapped, never touched, freed at once
    return True


def item_bytes(run) -> int:
    """Per item of a batch, the bytes of the largest tensor that grows with the batch in ``run(n)`` (which computes
    a batch of ``n`` items, making its own input). ``run(1)`` and ``run(2)`` are recorded op by op at the
    dispatcher and compared, so a tensor made inside a module's ``forward`` counts (a ``torch.cat`` of skip
    connections, an attention matrix) and one that does not grow with the batch (a weight's transpose, a constant
    table) does not. If the two runs differ in their operations, the largest tensor of ``run(1)`` is taken."""
    one, two = _op_sizes(run, 1), _op_sizes(run, 2)
    if len(one) != len(two):
        return max(one, default=0)
    return max((b - a for a, b in zip(one, two)), default=0)


def _op_sizes(run, n: int) -> list:
    """Bytes of every tensor each torch operation returns while ``run(n)`` runs, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    sizes = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() * t.element_size() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            return out

    with torch.no_grad(), Watch():
        run(n)
    return sizes


def batch_for(item_bytes: int, cap: int) -> int:
    """The largest batch, at most ``cap``, whose largest tensor stays within :data:`BATCH_BYTES`, given that of one
    item (1 if even one item is bigger: its tensors are faulted in per call anyway, and memory stays smallest)."""
    return max(1, min(int(cap), BATCH_BYTES // max(1, int(item_bytes))))
