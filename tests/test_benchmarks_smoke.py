"""Smoke tests of the benchmark scripts on the CPU with tiny sizes. Timings are not checked here (speed targets live
in benchmarks/, not in timed tests); what is checked is that they run and that the byte checks inside them pass.

* bench_gpu.py builds the UNet, runs every contender (diffusers' pipeline plain / with per-seed generators / with
  ES, our sample() and its attribution runs) and asserts that its attribution loop is byte for byte sample()'s;
* bench_noise.py asserts that SeedNoise (inline and threaded) gives the literal protocol's bytes;
* bench_sampling.py asserts that its hand-written DDPM reference gives sample()'s bytes;
* bench_calibrate.py, bench_diffusers.py, bench_features.py, bench_train.py and bench_distributed.py run at tiny
  sizes and print what they promise (bench_distributed checks that its one- and two-process files are identical).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
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


def test_bench_sampling_times_a_shipped_model_and_refuses_one_its_reference_does_not_cover(capsys):
    bench = _bench("bench_sampling")
    r = bench.main(["--model", "default", "--steps", "2", "--repeats", "1", "--batch", "3", "--samplers", "ddpm",
                    "--json"])
    # the shipped digits model's own network, schedule and shape; the hand-written DDPM still gives its bytes
    assert r["network"].startswith("default (") and r["shape"] == [1, 8, 8]
    assert math.isfinite(r["samplers"]["ddpm"]["hand_ratio"])
    capsys.readouterr()
    for model, why in (("digits-flow", "is a rectified-flow model"), ("digits-pfgm", "is an EDM / PFGM++ model"),
                       ("no-such-model", "no such checkpoint")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--model", model, "--steps", "2", "--repeats", "1", "--batch", "2"])
        assert why in str(e.value) and str(e.value).startswith("bench_sampling: ")


def test_bench_calibrate_runs(capsys):
    _bench("bench_calibrate").main(["--grid", "3", "--n", "8", "--sets", "1", "--steps", "3", "--threads", "1",
                                    "--json"])
    r = json.loads(capsys.readouterr().out)
    assert {"dense_grid_optimum", "calibrated", "nfe_ratio_search_vs_dense", "calibrated_gain_ci"} <= set(r)
    assert 0 < r["calibrated"] < 2 and 0 < r["dense_grid_optimum"] < 2 and r["nfe_ratio_search_vs_dense"] > 0


def test_bench_diffusers_runs_on_cpu():
    pytest.importorskip("diffusers")
    r = _bench("bench_diffusers").main(["--batch", "2", "--steps", "2", "--size", "8", "--width", "8",
                                        "--repeats", "1", "--threads", "1", "--device", "cpu", "--json"])
    assert r["es_overhead_attributable"] > 0 and math.isfinite(r["es_overhead_attributable"])


def test_bench_features_runs(capsys):
    assert _bench("bench_features").main(["64"]) == 0
    row = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["64"]]
    assert row and float(row[0][2]) > 0  # features per second


def test_bench_train_runs(capsys):
    assert _bench("bench_train").main(["--steps", "3", "--warmup", "1", "--batch", "8", "--repeats", "1",
                                       "--samples", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ours_steps_per_s"] > 0 and r["bare_steps_per_s"] > 0 and math.isfinite(r["ratio"])
    assert set(r["samples_per_s"]) == {"ddpm20", "ddpm100", "ddim20", "ddim100"}
    assert all(v > 0 for v in r["samples_per_s"].values())


@pytest.mark.slow
def test_bench_distributed_runs_and_its_files_agree():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_distributed.py"), "--seeds", "0-7",
                          "--steps", "2", "--batch-size", "4", "--threads", "2", "--nproc", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "files identical: True" in out.stdout
