"""Sampling and feature extraction keep a network's freed activations on the heap between its calls (glibc;
``diffusion_es.heap``).

Without the settling, glibc's start thresholds hand the freed top of the heap back to the system after a forward
pass, and the next pass page-faults it in again (zeroed): measured as 2–4 % of a sampling run of the benchmark
network. A single activation above glibc's 32 MiB ceiling is mapped afresh whatever the thresholds, so the feature
extractors size their batches below it: MNIST features in batches of 1000 (100 MB activations) spent as much time
in page faults as in the network. The tests count minor page faults in a fresh interpreter, as the library runs and,
as the control, with the settling switched off (and, for features, the old batch); samples are compared too (the
settling must not change a byte).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from diffusion_es import heap
from diffusion_es.heap import BATCH_BYTES, batch_for, item_bytes
from diffusion_es.metrics.features import get_extractor

SCRIPT = r"""
import resource, sys
import torch
from diffusion_es import heap
from diffusion_es.samplers import sample
from diffusion_es.core.param import VPDenoiser
from diffusion_es.core.schedules import VPSchedule

torch.set_num_threads(1)
if sys.argv[1] == "off":  # the control: glibc's start thresholds (128 KiB), kept
    heap._HEAP_SETTLED = True  # as if done already
    # set by hand as well: an import that frees a large block raises them on its own, and then whether the
    # control page-faults depends on which modules were imported and in what order
    import ctypes
    libc = ctypes.CDLL(None)
    assert libc.mallopt(-1, 128 * 1024) == 1 and libc.mallopt(-3, 128 * 1024) == 1  # M_TRIM_, M_MMAP_THRESHOLD


class Net(torch.nn.Module):
    # an ε-network whose forward pass allocates a few MiB of activations, counting the page faults it takes
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out = torch.nn.Linear(16, 2048), torch.nn.Linear(2048, 16)
        self.faults = []

    def forward(self, x, t):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        h = self.inp(x)
        h = torch.tanh(torch.nn.functional.silu(h) + h)
        out = torch.tanh(self.out(h))
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return out


net = Net()
with torch.no_grad():
    x = sample(VPDenoiser(net, VPSchedule.linear()), "ddpm", 20, (16,), range(256), clip=False)
print(sum(net.faults[4:]), x.double().sum().item().hex())
"""


FEATURES_SCRIPT = r"""
import resource, sys
import numpy as np
import torch
from diffusion_es import heap
from diffusion_es.metrics.features import extract, get_extractor

torch.set_num_threads(1)
ex = get_extractor("mnist")
if sys.argv[1] == "off":  # the control: start thresholds and the old batch of 1000 images
    heap._HEAP_SETTLED = True
    ex.batch_size = 1000
images = np.random.default_rng(0).integers(0, 256, size=(3000, 28, 28, 1), dtype=np.uint8)
extract(ex, images[:1000])  # warm-up: the first batches may grow the heap
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
extract(ex, images)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, 0)
"""


def _run(mode, script=SCRIPT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        env.pop(k, None)  # thresholds set by hand switch glibc's dynamic rule off
    out = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    faults, digest = out.stdout.split()
    return int(faults), digest


def _glibc():
    """64-bit Linux with glibc, found another way than settle_heap does (platform reads the interpreter binary)."""
    return sys.platform.startswith("linux") and sys.maxsize > 2**32 and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the heap thresholds are glibc's (64-bit Linux)")
def test_network_calls_stop_page_faulting_and_samples_are_unchanged():
    off_faults, off_digest = _run("off")
    on_faults, on_digest = _run("on")
    assert on_digest == off_digest  # not a byte of any sample changes
    if off_faults == 0:
        pytest.skip("this glibc did not trim the heap between network calls here: nothing to settle")
    # the control maps its 2 MiB activations afresh at every call (about 2,000 pages a call, 32,000 over calls
    # 5-20 on x86-64 glibc 2.36); settled, the heap keeps them: it still grows now and then while its layout
    # settles (0 or 512 pages a call, about 1,500 in all)
    assert on_faults * 5 <= off_faults, (on_faults, off_faults)


@pytest.mark.skipif(not _glibc(), reason="the heap thresholds are glibc's (64-bit Linux)")
def test_feature_extraction_stops_page_faulting():
    off_faults, _ = _run("off", FEATURES_SCRIPT)
    on_faults, _ = _run("on", FEATURES_SCRIPT)
    # the control maps every layer's output afresh (about 260,000 pages over 3 batches of 1000 images on x86-64
    # glibc 2.36); in batches of 167 the activations stay on the heap (about 2,000 pages, while it grows); the
    # features do not depend on the batch (tests/test_metrics_features.py, in float64)
    assert on_faults * 20 <= off_faults, (on_faults, off_faults)


def test_classifier_batches_keep_the_largest_activation_below_the_budget():
    mnist, digits = get_extractor("mnist"), get_extractor("digits")
    # the largest tensor of one image is the first conv's output: 32 channels at full size, float32 (the fc
    # weight's transpose, made at every call, is larger but does not grow with the batch)
    per = {e.name: item_bytes(lambda n, e=e: e.model.features(torch.zeros(n, 1, e.in_size, e.in_size)))
           for e in (mnist, digits)}
    assert per["mnist"] == 32 * 28 * 28 * 4
    assert per["digits"] == 64 * 8 * 8 * 4  # 8x8 is not pooled before the second conv
    assert mnist.batch_size == BATCH_BYTES // (32 * 28 * 28 * 4) == 167
    assert digits.batch_size == 1000  # the cap: 2048 would fit


def test_settle_heap_runs_once(monkeypatch):
    monkeypatch.setattr(heap, "_HEAP_SETTLED", False)
    first = heap.settle_heap()
    assert first == _glibc()
    assert heap.settle_heap() is False  # once per process


def test_item_bytes_counts_what_grows_with_the_batch():
    w = torch.ones(1000, 1000)  # a weight: its transpose (4 MB) is made at every call but does not grow with n

    def run(n):
        x = torch.zeros(n, 3, 10)
        y = torch.cat([x, torch.zeros(n, 5, 10)], dim=1)  # made inside the call, not a module output: 8·10 floats
        w.t().contiguous()
        return y.sum()

    assert item_bytes(run) == 8 * 10 * 4

    def branching(n):  # other operations for n = 3: nothing can be compared, so nothing is measured (the cap)
        torch.zeros(n, 7)
        if n > 2:
            torch.zeros(3)
        w.t().contiguous()

    assert item_bytes(branching) == 0 and batch_for(item_bytes(branching), cap=500) == 500

    cache = {}

    def first_call_only(n):  # a table built on the first call only, as a lazy module or a cache would
        if not cache:
            cache["table"] = torch.arange(10.0)
        w.t().contiguous()
        return torch.zeros(n, 16)

    assert item_bytes(first_call_only) == 16 * 4
    lazy = torch.nn.LazyLinear(8)
    assert item_bytes(lambda n: lazy(torch.zeros(n, 4))) == 8 * 4  # its output; the weight it makes once does not count


def test_batch_for():
    assert batch_for(BATCH_BYTES // 10, cap=500) == 10
    assert batch_for(BATCH_BYTES // 10 + 1, cap=500) == 9
    assert batch_for(1, cap=500) == 500 and batch_for(0, cap=7) == 7
    assert batch_for(BATCH_BYTES + 1, cap=500) == 1  # even one item is over: the smallest batch


def test_auto_batch_size_of_the_mnist_model():
    from diffusion_es.models import load_model
    from diffusion_es.samplers import DEFAULT_BATCH, auto_batch_size

    m = load_model("mnist")
    den = m.denoiser()
    per = item_bytes(lambda n: den(torch.zeros((n, *m.data_shape), dtype=torch.float64), 1.0))
    auto = auto_batch_size(den, m.data_shape)
    assert auto == BATCH_BYTES // per and 1 <= auto < DEFAULT_BATCH
    assert DEFAULT_BATCH * per > 32 << 20  # the old default's largest tensor was above glibc's mmap ceiling
    assert auto_batch_size(den, m.data_shape, device="cuda") == DEFAULT_BATCH  # off the CPU: the old default
    assert auto_batch_size(load_model("default").denoiser(), (1, 8, 8)) == DEFAULT_BATCH  # 8x8 digits: the cap


def test_sample_takes_auto_and_refuses_other_words(monkeypatch):
    import diffusion_es.samplers as samplers
    from diffusion_es.models import load_model
    from diffusion_es.samplers import auto_batch_size, sample

    m = load_model("mnist")
    den = m.denoiser()
    n = auto_batch_size(den, m.data_shape)
    seen, loop = [], samplers.over_seed_batches
    monkeypatch.setattr(samplers, "over_seed_batches", lambda seeds, shape, bs, *a, **k: (seen.append(bs),
                                                                                         loop(seeds, shape, bs, *a, **k))[1])
    seeds = range(n + 2)  # more seeds than one auto batch: the batches are n and 2
    auto = sample(den, "ddim", 1, m.data_shape, seeds, schedule=m.schedule, batch_size="auto")
    assert seen == [n]
    assert torch.equal(auto, sample(den, "ddim", 1, m.data_shape, seeds, schedule=m.schedule, batch_size=n))
    with pytest.raises(ValueError, match="whole number >= 1 or 'auto'"):
        sample(den, "ddim", 1, m.data_shape, seeds, schedule=m.schedule, batch_size="big")


def test_resolve_batch_size():
    import numpy as np

    from diffusion_es.models import load_model
    from diffusion_es.samplers import auto_batch_size, resolve_batch_size

    m = load_model("mnist")
    den, shape = m.denoiser(), m.data_shape
    auto = auto_batch_size(den, shape)
    assert resolve_batch_size(None, den, shape) == resolve_batch_size("auto", den, shape) == auto
    assert resolve_batch_size(7, den, shape) == 7 and resolve_batch_size(np.int64(7), den, shape) == 7
    for bad in (0, -1, 2.0, True, "big"):
        with pytest.raises(ValueError, match="whole number >= 1 or 'auto'"):
            resolve_batch_size(bad, den, shape)
