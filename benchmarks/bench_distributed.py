"""Samples per second of ``diffusion-es sample`` in one process and under torchrun with two processes, with the
same total number of CPU threads (fair on a 2-core machine): 2 threads x 1 process vs 1 thread x 2 processes.

    python benchmarks/bench_distributed.py [--seeds 0-799] [--steps 50] [--batch-size 100] [--threads 2]

Both runs sample the same seeds with the same options, so the two files must be identical (checked). The
rate is the command's own ``samples_per_s`` (sampling, shard writing and the merge; not the start-up), and the
wall time of the whole command (start-up included) is printed beside it. One process with one thread is run
too: on a loaded machine OpenMP threads that spin-wait for a busy core can make "2 threads" slower than 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, env):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--seeds", default="0-599")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="total CPU threads for each configuration")
    ap.add_argument("--nproc", type=int, default=2)
    a = ap.parse_args()
    common = ["sample", "--model", a.model, "--steps", str(a.steps), "--seeds", a.seeds, "--batch-size",
              str(a.batch_size), "--no-progress", "--json"]
    per_proc = max(1, a.threads // a.nproc)
    des = [sys.executable, "-m", "diffusion_es"]
    with tempfile.TemporaryDirectory() as d:
        one_out, many_out = Path(d) / "one.npz", Path(d) / "many.npz"
        env1 = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        one, wall1 = _run([*des, *common, "--threads", str(a.threads), "--out", str(one_out)], env1)
        env_1t = {**os.environ, "OMP_NUM_THREADS": "1"}
        solo, wall_1t = _run([*des, *common, "--threads", "1", "--out", str(one_out)], env_1t)
        envn = {**os.environ, "OMP_NUM_THREADS": str(per_proc)}
        many, walln = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.nproc),
                            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "--", "diffusion_es",
                            *common,
                            "--threads", str(per_proc), "--out", str(many_out)], envn)
        same = one_out.read_bytes() == many_out.read_bytes()  # one_out: the last one-process file
    r1, rn = one["samples_per_s"], many["samples_per_s"]
    print(f"model {a.model}, {one['n']} samples, {a.steps} steps, batch {a.batch_size}, {os.cpu_count()} CPUs")
    print(f"1 process  x {a.threads} threads: {r1:8.1f} samples/s   (command wall time {wall1:.1f} s)")
    print(f"{a.nproc} processes x {per_proc} thread{'s' if per_proc > 1 else ''}: {rn:8.1f} samples/s   "
          f"(command wall time {walln:.1f} s)")
    print(f"1 process  x 1 thread:  {solo['samples_per_s']:8.1f} samples/s   (command wall time {wall_1t:.1f} s; "
          "reference: what one core gives)")
    print(f"ratio {a.nproc} processes / 1 process (same {a.threads} threads): {rn / r1:.2f}x   "
          f"(wall-time ratio {wall1 / walln:.2f}x)")
    print(f"ratio {a.nproc} processes / 1 process x 1 thread: {rn / solo['samples_per_s']:.2f}x")
    print(f"files identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
