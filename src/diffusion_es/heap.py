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
at 500 images a batch here). :func:`batch_for` sizes a batch to keep the largest operation output within
:data:`BATCH_BYTES`, from :func:`item_bytes`; the feature extractors and the CPU default of the sampling commands
use it. The size depends on the network, the input shape and the torch version (which operations a network's
``forward`` dispatches), never on the machine's memory or load, so with one torch version the same arguments give
the same batches, and bytes, on every run. It was measured on Linux with glibc; other allocators (macOS, Windows,
musl) have their own rules for large blocks, and there the smaller batch is simply what the commands use.
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
    """Per item of a batch, the bytes of the largest operation output that grows with the batch in ``run(n)``
    (which computes a batch of ``n`` items, making its own input). After one unrecorded ``run(1)`` (so that work
    done only on a first call, a cache filled or a lazy module built, does not count), ``run(2)`` and ``run(3)``
    are recorded op by op at the dispatcher and compared (not ``run(1)``: with one item some reshapes are views
    that copy for more): a tensor made inside a module's ``forward`` counts (a
    ``torch.cat`` of skip connections, an attention matrix made by its own operation) and one that does not grow
    with the batch (a weight's transpose, a constant table) does not. Not seen: scratch buffers a kernel allocates
    for itself (a fused attention kernel's, a float64 convolution's column buffer). If the two recorded runs make
    different operations, 0 is returned (nothing measured: :func:`batch_for` then gives its cap)."""
    run(1)
    two, three = _op_sizes(run, 2), _op_sizes(run, 3)
    if [f for f, _ in two] != [f for f, _ in three]:
        return 0
    return max((b - a for (_, a), (_, b) in zip(two, three)), default=0)


def _op_sizes(run, n: int) -> list:
    """(operation, bytes) of every tensor each torch operation returns while ``run(n)`` runs, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    sizes = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend((func, t.numel() * t.element_size()) for t in tree_flatten(out)[0]
                         if isinstance(t, torch.Tensor))
            return out

    with torch.no_grad(), Watch():
        run(n)
    return sizes


def batch_for(item_bytes: int, cap: int) -> int:
    """The largest batch, at most ``cap``, whose largest tensor stays within :data:`BATCH_BYTES`, given that of one
    item (1 if even one item is bigger: its tensors are faulted in per call anyway, and memory stays smallest)."""
    return max(1, min(int(cap), BATCH_BYTES // max(1, int(item_bytes))))
