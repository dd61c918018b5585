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

A single block above that ceiling is always mmapped and faulted in afresh, whatever the thresholds: callers that
choose their own batch size (the feature extractors) keep their largest activation below :data:`BATCH_BYTES`.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["settle_heap", "BATCH_BYTES"]

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
