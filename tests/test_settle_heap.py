"""Sampling keeps a network's freed activations on the heap between its calls (glibc; ``samplers.common.settle_heap``).

Without it, glibc's start thresholds hand the freed top of the heap back to the system after a forward pass, and the
next pass page-faults it in again (zeroed): measured as 2–4 % of a sampling run of the benchmark network. The test
counts minor page faults inside the network's calls in a fresh interpreter, with the settling done (as sampling does
it) and, as the control, switched off; samples are compared too (the settling must not change a byte).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from diffusion_es.samplers import common

SCRIPT = r"""
import resource, sys
import torch
from diffusion_es.samplers import common, sample
from diffusion_es.core.param import VPDenoiser
from diffusion_es.core.schedules import VPSchedule

torch.set_num_threads(1)
if sys.argv[1] == "off":
    common._HEAP_SETTLED = True  # as if done already: glibc keeps its start thresholds (the control)


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


def _run(mode):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        env.pop(k, None)  # thresholds set by hand switch glibc's dynamic rule off
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=300)
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


def test_settle_heap_runs_once(monkeypatch):
    monkeypatch.setattr(common, "_HEAP_SETTLED", False)
    first = common.settle_heap()
    assert first == _glibc()
    assert common.settle_heap() is False  # once per process
