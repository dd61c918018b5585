"""Feature extraction speed and peak memory with the digits extractor, for 2,000 and 20,000 images.

Each count runs in a fresh subprocess (one torch thread) that streams uint8 batches through the extractor into
:class:`FeatureStats`, so peak memory can be compared between counts: it must not grow with the count. Reported:
features/second, tracemalloc peak (Python/numpy allocations made during extraction) and the process's peak RSS.

    python benchmarks/bench_features.py            # 2000 and 20000
    python benchmarks/bench_features.py 2000 50000
"""

from __future__ import annotations

import json
import subprocess
import sys


def _child(n: int) -> dict:
    import resource
    import time
    import tracemalloc

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from diffusion_es.data import load_digits
    from diffusion_es.io import to_uint8
    from diffusion_es.metrics.features import extract_stats, get_extractor

    ex = get_extractor("digits")
    base = to_uint8(load_digits("all"))  # 1797 real digits, cycled; images are made batch by batch

    def batches(bs=ex.batch_size):
        for i in range(0, n, bs):
            idx = np.arange(i, min(n, i + bs)) % len(base)
            yield base[idx]

    ex(base[:10])  # warm-up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    stats, _ = extract_stats(ex, batches(), total=n, progress=False)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert stats.n == n
    return {"images": n, "seconds": dt, "features_per_s": n / dt, "tracemalloc_peak_mib": peak / 2**20,
            "peak_rss_mib": rss1 / 1024, "rss_growth_during_extraction_mib": (rss1 - rss0) / 1024}


def main(argv) -> int:
    if argv and argv[0] == "--child":
        print(json.dumps(_child(int(argv[1]))))
        return 0
    counts = [int(a) for a in argv] or [2000, 20000]
    rows = []
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'images':>8} {'seconds':>8} {'feat/s':>9} {'tracemalloc peak MiB':>21} {'peak RSS MiB':>13} {'RSS growth MiB':>15}")
    for r in rows:
        print(f"{r['images']:>8} {r['seconds']:>8.2f} {r['features_per_s']:>9.0f} {r['tracemalloc_peak_mib']:>21.2f} "
              f"{r['peak_rss_mib']:>13.1f} {r['rss_growth_during_extraction_mib']:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
