"""sample / fid / calibrate under torchrun (CPU, gloo, 2 processes) against the same commands in one process:
the merged sample file is byte-identical, FD from all-reduced statistics equals the one-process FD, a run killed
midway resumes to the identical file (with any number of processes), and an error on one rank ends the run with
its one message and exit code 2 instead of a hang."""

import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_es.cli import main
from diffusion_es.distributed import span, split
from diffusion_es.store import shard_seeds_per_chunk
from diffusion_es.io import load_images
from diffusion_es.metrics.features import extract, get_extractor
from diffusion_es.metrics.frechet import FeatureStats
from diffusion_es.metrics.reference import load_reference

from _tol import fd_rounding_tol, stats_tols

pytest.importorskip("torch.distributed")

# 240 seeds in batches of 7 (7 does not divide 240); shards of 21 seeds: 12 shards, the last one 9 seeds
SAMPLE = ["sample", "--model", "default", "--sampler", "ddpm", "--steps", "50", "--seeds", "0-239",
          "--batch-size", "7", "--shard-size", "20", "--threads", "1", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_cmd(args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), "-m", "--", "diffusion_es", *args]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "DIFFUSION_ES_DIST_TIMEOUT": "60"}


def _why(r) -> str:
    """A failed launch's stderr: its start (the ranks' own errors) and its end (torchrun's summary)."""
    e = r.stderr
    return e if len(e) <= 6000 else e[:4000] + "\n[...]\n" + e[-2000:]


def torchrun(args, nproc=2, timeout=120):
    return subprocess.run(_torchrun_cmd(args, nproc), capture_output=True, text=True, env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process sample file (written in this process, one torch thread)."""
    out = tmp_path_factory.mktemp("ref") / "one.npz"
    assert main([*SAMPLE, "--out", str(out)]) == 0
    assert not Path(str(out) + ".parts").exists()  # shards are removed once merged
    return out


def test_split_is_deterministic_and_covers_everything():
    for n, world, align in [(240, 2, 7), (10, 3, 1), (5, 4, 7), (1000, 8, 64)]:
        spans = [span(n, world, r, align) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        if n >= world * align:  # whole batches: every batch is the one a single process forms
            assert all(lo % align == 0 for lo, _ in spans)
    assert split(list(range(7)), 3, 1, mode="strided") == [1, 4]
    assert shard_seeds_per_chunk(7, 20) == 21 and shard_seeds_per_chunk(500, 256) == 500


def test_two_processes_write_the_one_process_file_byte_for_byte(reference, tmp_path):
    out = tmp_path / "two.npz"
    r = torchrun([*SAMPLE, "--out", str(out), "--json"])
    assert r.returncode == 0, _why(r)
    assert out.read_bytes() == reference.read_bytes()
    assert json.loads(r.stdout)["n"] == 240  # one summary, from rank 0 only
    assert not Path(str(out) + ".parts").exists()


def test_fd_from_all_reduced_statistics_equals_one_process_fd(reference, tmp_path, capsys):
    ref = tmp_path / "digits_ref.npz"
    assert main(["fid-ref", "--data", "digits", "--out", str(ref)]) == 0
    capsys.readouterr()
    fid = ["fid", str(reference), "--ref", str(ref), "--batch-size", "50", "--json"]
    torch.set_num_threads(1)  # as in each rank (the suite may run with more; conftest restores it)
    assert main(fid) == 0
    one = json.loads(capsys.readouterr().out)
    r = torchrun(fid)
    assert r.returncode == 0, _why(r)
    two = json.loads(r.stdout)
    assert two["n_samples"] == one["n_samples"] == 240
    # the statistics differ only in the order of float64 additions over the samples; each distance is within its
    # own float64 rounding (fd_rounding_tol) of the exact distance of its statistics
    ex = get_extractor("digits")
    feats = extract(ex, load_images(reference))
    cov, cov_ref = FeatureStats.from_features(feats).cov, load_reference(ref).stats.cov
    mean_tol, cov_tol, fd_tol = stats_tols(0.0, feats, cov)
    assert abs(two["fd"] - one["fd"]) <= 2 * fd_rounding_tol(cov, cov_ref) + fd_tol
    assert (two["precision"], two["recall"]) == (one["precision"], one["recall"])  # features gathered in order


def _shards(parts: Path):
    return sorted(parts.glob("seeds*.npz")) if parts.is_dir() else []


def test_killed_run_resumes_to_the_same_file_and_a_failing_rank_stops_the_run(reference, tmp_path, capsys):
    out = tmp_path / "killed.npz"
    parts = Path(str(out) + ".parts")
    p = subprocess.Popen(_torchrun_cmd([*SAMPLE, "--out", str(out)]), env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while len(_shards(parts)) < 2 and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the launcher and both workers, as a crash would
        p.wait()
    done = _shards(parts)
    assert 2 <= len(done) < 12 and not out.exists(), "the run was not killed midway"

    # restart with a rank that cannot write its shard: chunk 1 goes to rank 1 and a folder blocks its file
    blocked = next(s for s in done if s.name.startswith("seeds21-41-"))
    next(s for s in done if s.name.startswith("seeds0-20-")).unlink()
    blocked.unlink()
    blocked.mkdir()
    t0 = time.time()
    r = torchrun([*SAMPLE, "--out", str(out)])
    assert r.returncode != 0 and time.time() - t0 < 60  # ended, not hung
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("diffusion-es: error:")]
    assert len(errors) == 1 and errors[0].startswith("diffusion-es: error: rank 1:") and "is a directory" in errors[0].lower()
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", r.stderr)
    assert codes and set(codes) <= {"2", "-15"}  # rank 1 exits 2; rank 0 exits 2 unless torchrun stopped it first
    assert not out.exists()

    # restart with the same arguments in ONE process: reuses the 2-process shards, same file, nothing left over
    blocked.rmdir()
    capsys.readouterr()
    assert main([*SAMPLE, "--out", str(out)]) == 0
    assert "resuming:" in capsys.readouterr().err
    assert out.read_bytes() == reference.read_bytes()
    assert not parts.exists()


def test_calibrate_under_torchrun_matches_one_process(tmp_path, capsys):
    cal = ["calibrate", "--model", "default", "--sampler", "ddim", "--steps", "3", "--n", "140", "--sets", "1",
           "--val-sets", "2", "--coarse", "2", "--refine", "0", "--batch-size", "35", "--json"]
    torch.set_num_threads(1)  # as in each rank (the suite may run with more; conftest restores it)
    assert main(cal) == 0
    one = json.loads(capsys.readouterr().out)
    r = torchrun(cal)
    assert r.returncode == 0, _why(r)
    two = json.loads(r.stdout)
    assert two["nfe"] == one["nfe"] and two["candidate"] == one["candidate"]
    np.testing.assert_allclose(two["baseline_val"], one["baseline_val"], rtol=1e-9)
    np.testing.assert_allclose([e["mean"] for e in two["evaluations"]], [e["mean"] for e in one["evaluations"]],
                               rtol=1e-9)


def test_calibrate_under_torchrun_resumes_from_stored_scores(tmp_path, monkeypatch, capsys):
    """calibrate --out keeps its scores under torchrun as in one process: rank 0 writes them, and every rank
    serves those present when it started (so all of them sample the same candidates and no collective waits
    alone). Here a one-process run is interrupted after 3 scores, one stored score is replaced by a marker value,
    and the torchrun run must take the marker from disk, finish, and remove the parts."""
    from diffusion_es.hashing import json_hash
    from diffusion_es.store import _SHA

    cal_mod = importlib.import_module("diffusion_es.diagnostics.calibrate")  # (a module named like its function)
    out = tmp_path / "lam.json"
    cal = ["calibrate", "--model", "default", "--sampler", "ddim", "--steps", "3", "--n", "140", "--sets", "1",
           "--val-sets", "2", "--coarse", "2", "--refine", "0", "--batch-size", "35", "--out", str(out)]
    real, calls = cal_mod.sample, []

    def dies(*a, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(cal_mod, "sample", dies)
    torch.set_num_threads(1)
    assert main([*cal, "--no-progress"]) == 130
    capsys.readouterr()
    parts = sorted(Path(str(out) + ".parts").glob("score-*.json"))
    assert len(parts) == 3 and not out.exists()
    part = json.loads(parts[0].read_text())
    part.pop(_SHA)
    part["value"] = 12345.678
    parts[0].write_text(json.dumps({**part, _SHA: json_hash(part)}))
    r = torchrun([*cal, "--json"])
    assert r.returncode == 0, _why(r)
    evals = json.loads(r.stdout)["evaluations"]
    assert any(12345.678 in e["values"] for e in evals), evals
    assert out.is_file() and not Path(str(out) + ".parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lam.json"]
