"""Smoke tests of the benchmark scripts on the CPU with tiny sizes. Timings are not checked here (speed targets live
in benchmarks/, not in timed tests); what is checked is that they run and that the byte checks inside them pass.

* bench_gpu.py builds the UNet, runs every contender (diffusers' pipeline plain / with per-seed generators / with
  ES, our sample() and its attribution runs) and asserts that its attribution loop is byte for byte sample()'s;
* bench_noise.py asserts that SeedNoise (inline and threaded) gives the literal protocol's bytes;
* bench_sampling.py asserts that its hand-written DDPM reference gives sample()'s bytes.
"""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_noise_runs_and_keeps_the_bytes():
    r = _bench("bench_noise").main(["--steps", "10", "--repeats", "1", "--workers", "3",
                                    "--cases", "5x3,3x2x4x4", "--json"])
    assert set(r["cases"]) == {"5x3", "3x2x4x4"}
    assert r["cases"]["3x2x4x4"]["normals_per_run"] == 3 * 32 * (1 + 16)


@pytest.mark.parametrize("sampler", ["ddpm", pytest.param("ddim", marks=pytest.mark.slow)])
def test_bench_gpu_runs_on_cpu(sampler, capsys):
    pytest.importorskip("diffusers")
    r = _bench("bench_gpu").main(["--device", "cpu", "--sampler", sampler, "--batch", "2", "--size", "8",
                                  "--width", "8", "--steps", "2", "--repeats", "1", "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert '"ratios"' in out and r["device"] == "cpu" and r["dtype"] == "float32" and r["noise_workers"] == 0
    assert set(r["seconds_median"]) >= {"diffusers", "diffusers + ES", "ours", "ours, noise pre-drawn",
                                        "ours, free network", "network alone"}
    for v in list(r["ratios"].values()) + list(r["share_of_ours"].values()):
        assert math.isfinite(v)
    assert all(v > 0 for v in r["seconds_median"].values())


def test_bench_sampling_runs_and_its_hand_written_ddpm_keeps_the_bytes():
    r = _bench("bench_sampling").main(["--steps", "3", "--repeats", "1", "--batch", "4", "--dim", "8",
                                       "--samplers", "ddpm,euler", "--json"])
    assert set(r["samplers"]) == {"ddpm", "euler"}
    ddpm = r["samplers"]["ddpm"]
    assert "hand_ratio" in ddpm and "hand_ratio" not in r["samplers"]["euler"]  # the reference is DDPM's only
    for v in (ddpm["loop_ratio"], ddpm["hand_ratio"], ddpm["base_over_hand"], ddpm["es_ratio"]):
        assert math.isfinite(v) and v > 0
    if "minor_faults" in ddpm:  # where the resource module exists
        assert set(ddpm["minor_faults"]) == {"net", "base", "free"}
