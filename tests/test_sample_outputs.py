"""`sample`'s outputs (issue 17 item 1, issue 14 concurrency): a folder of PNGs (one per seed, EDM's
``seed%06d.png``) holding exactly the images of the ``.npz``; ``--rgb``; `fid` / `fid-ref` read both forms alike;
a killed run resumes to the same files; one writer per output; no hidden temporary files left behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffusion_es.cli import main
from diffusion_es.io import load_images, read_png

COMMON = ["sample", "--model", "default", "--sampler", "ddim", "--steps", "3", "--seeds", "0-9", "--batch-size", "4",
          "--shard-size", "4", "--no-progress"]


def _hidden(d: Path) -> list:
    return sorted(str(p) for p in d.rglob(".*") if not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("outs")
    assert main([*COMMON, "--out", str(d / "s.npz")]) == 0
    assert main([*COMMON, "--out", str(d / "pngs") + "/"]) == 0
    assert main([*COMMON, "--out", str(d / "rgb"), "--rgb", "--grid", str(d / "g.png")]) == 0
    assert main([*COMMON, "--out", str(d / "rgb.npz"), "--rgb"]) == 0
    return d


def test_png_folder_layout(runs):
    names = sorted(p.name for p in (runs / "pngs").iterdir())
    assert names == [f"seed{s:06d}.png" for s in range(10)]  # one file per seed, EDM's names, nothing else
    assert not (runs / "pngs.parts").exists() and not (runs / "s.npz.parts").exists()  # markers/shards removed
    assert _hidden(runs) == []
    with np.load(runs / "s.npz") as f:
        arr, seeds = f["arr_0"], f["seeds"]
    np.testing.assert_array_equal(seeds, np.arange(10))
    for s in range(10):  # the PNG of a seed is that seed's row of the .npz, byte for byte
        np.testing.assert_array_equal(read_png(runs / "pngs" / f"seed{s:06d}.png"), arr[s])
    np.testing.assert_array_equal(load_images(runs / "pngs"), arr)


def test_rgb_output_repeats_the_grey_channel(runs):
    grey = load_images(runs / "s.npz")
    for name in ("rgb", "rgb.npz"):
        rgb = load_images(runs / name)
        assert rgb.shape == (10, 8, 8, 3)
        np.testing.assert_array_equal(rgb, np.repeat(grey, 3, axis=-1))
    assert (runs / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_fid_and_fid_ref_read_both_forms_alike(runs, tmp_path, capsys):
    import json

    ref = tmp_path / "held.npz"
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(ref), "--no-progress"]) == 0
    capsys.readouterr()
    fds = []
    for samples in ("s.npz", "pngs", "rgb", "rgb.npz"):  # grey stored as RGB is the same image
        assert main(["fid", str(runs / samples), "--ref", str(ref), "--json", "--no-progress"]) == 0
        fds.append(json.loads(capsys.readouterr().out)["fd"])
    assert fds[0] == fds[1] == fds[2] == fds[3], fds
    # a reference from any of the four forms records grey 8x8x1 (the --rgb ones were recorded 8x8x3, and `fid` then
    # refused the very images the reference was made from) and holds the same statistics
    forms = ("s.npz", "pngs", "rgb", "rgb.npz")
    for i, data in enumerate(forms):
        assert main(["fid-ref", "--data", str(runs / data), "--out", str(tmp_path / f"r{i}.npz"), "--json",
                     "--no-progress"]) == 0
        assert json.loads(capsys.readouterr().out)["image_shape"] == [8, 8, 1], data
    for i in range(1, len(forms)):
        with np.load(tmp_path / "r0.npz") as a, np.load(tmp_path / f"r{i}.npz") as b:
            np.testing.assert_array_equal(a["mu"], b["mu"])
            np.testing.assert_array_equal(a["sigma"], b["sigma"])
    for samples in forms:  # every form against a reference made from every other
        for i in range(len(forms)):
            assert main(["fid", str(runs / samples), "--ref", str(tmp_path / f"r{i}.npz"), "--json",
                         "--no-progress"]) == 0, (samples, forms[i])
            capsys.readouterr()


def test_killed_png_run_resumes_to_the_same_files(runs, tmp_path, monkeypatch, capsys):
    import diffusion_es.samplers as samplers

    real = samplers.sample
    calls = []

    def dies_on_the_second_chunk(*a, **kw):
        calls.append(list(a[4]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(samplers, "sample", dies_on_the_second_chunk)
    out = tmp_path / "p"
    assert main([*COMMON, "--out", str(out)]) == 130
    assert sorted(p.name for p in out.iterdir()) == [f"seed{s:06d}.png" for s in range(4)]  # the first chunk
    assert _hidden(tmp_path) == []
    ref = tmp_path / "held.npz"
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(ref), "--no-progress"]) == 0
    for command in (["fid", str(out), "--ref", str(ref)], ["fid-ref", "--data", str(out), "--out",
                                                                     str(tmp_path / "r.npz")]):
        capsys.readouterr()
        assert main([*command, "--no-progress"]) == 2  # an unfinished folder is not read as samples
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "an unfinished sample folder (p.parts/ beside it" in err[0], err
    calls.clear()

    def counts(*a, **kw):
        calls.append(list(a[4]))
        return real(*a, **kw)

    monkeypatch.setattr(samplers, "sample", counts)
    assert main([*COMMON, "--out", str(out)]) == 0
    assert calls == [[4, 5, 6, 7], [8, 9]]  # only what was missing
    for s in range(10):
        assert (out / f"seed{s:06d}.png").read_bytes() == (runs / "pngs" / f"seed{s:06d}.png").read_bytes()
    assert not (tmp_path / "p.parts").exists()
    assert main(["fid", str(out), "--ref", str(ref), "--no-progress"]) == 0  # finished: read again


def test_png_folder_with_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "seed999999.png").write_bytes(b"an older run's sample")
    assert main([*COMMON, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not this run's samples (seed999999.png" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["seed999999.png"] and not (tmp_path / "p.parts").exists()


def test_second_writer_is_refused_and_debris_of_a_killed_writer_is_removed(tmp_path, capsys):
    from diffusion_es.store import output_lock

    out = tmp_path / "s.npz"
    with output_lock(out):  # another process writing this output (flock: also held against this process)
        assert main([*COMMON, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another diffusion-es process is writing this output now" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before any shard or lock file stays
    # leftovers of a writer killed by SIGKILL inside its atomic writes
    (tmp_path / ".s.npz.abc123.tmp.npz").write_bytes(b"half")
    (tmp_path / "s.npz.parts").mkdir()
    (tmp_path / "s.npz.parts" / ".seeds0-3-x.npz.def.tmp.npz").write_bytes(b"half")
    assert main([*COMMON, "--out", str(out)]) == 0
    assert _hidden(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_leaves_no_temporary_files(tmp_path):
    """`kill PID` while shards are being written: the command ends like Ctrl-C (exit 130), its atomic writers
    remove their temporary files, and the finished shards stay for the resume."""
    import diffusion_es

    env = {**os.environ, "PYTHONPATH": str(Path(diffusion_es.__file__).resolve().parents[1])}
    out = tmp_path / "s.npz"
    p = subprocess.Popen([sys.executable, "-m", "diffusion_es", "sample", "--model", "default", "--sampler", "ddpm",
                          "--steps", "20", "--seeds", "0-99999", "--batch-size", "8", "--shard-size", "8",
                          "--threads", "1", "--no-progress", "--out", str(out)],
                         env=env, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "s.npz.parts"
    deadline = time.time() + 300
    while time.time() < deadline and not (parts.is_dir() and any(parts.glob("seeds*.npz"))):
        time.sleep(0.2)
    assert p.poll() is None, p.stderr.read()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert _hidden(tmp_path) == [] and any(parts.glob("seeds*.npz")) and not out.exists()


def test_batch_size_defaults_to_the_models_auto_batch(tmp_path, capsys, monkeypatch):
    import json

    import diffusion_es.samplers as samplers
    from diffusion_es.models import load_model
    from diffusion_es.samplers import auto_batch_size

    m = load_model("mnist")
    auto = auto_batch_size(m.denoiser(), m.data_shape)
    seen, run = [], samplers.sample
    monkeypatch.setattr(samplers, "sample", lambda *a, **k: (seen.append(k["batch_size"]), run(*a, **k))[1])
    args = ["sample", "--model", "mnist", "--sampler", "ddim", "--steps", "1", "--seeds", f"0-{auto + 1}",
            "--shard-size", "1000", "--no-progress", "--json"]
    assert main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == auto < 500  # the MNIST UNet: below the old 500
    assert seen == [auto]  # what the sampler got: batches of auto and 2
    assert main([*args, "--out", str(tmp_path / "b.npz"), "--batch-size", str(auto)]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == auto and seen == [auto, auto]
    # the same batches either way: the same bytes
    np.testing.assert_array_equal(load_images(tmp_path / "a.npz"), load_images(tmp_path / "b.npz"))


@pytest.mark.parametrize("flags, clip", [([], True), (["--no-clip"], False)])
def test_the_shard_key_holds_the_clipping_the_sampler_applies(flags, clip, tmp_path, monkeypatch):
    """The key of OUT.parts/ holds the resolved clipping: True for [-1, 1] as before clip defaulted to the model's
    own (so runs interrupted under earlier versions resume), False for none."""
    import diffusion_es.store as store

    seen = {}
    real = store.ShardedRun

    def spy(ctx, out, identity, *a, **kw):
        seen.update(identity)
        return real(ctx, out, identity, *a, **kw)

    monkeypatch.setattr(store, "ShardedRun", spy)  # cmd_sample imports it from the store at run time
    assert main(["sample", "--sampler", "ddim", "--steps", "2", "--seeds", "0-1", "--out", str(tmp_path / "s.npz"),
                 "--no-progress", *flags]) == 0
    assert seen["clip"] is clip


def test_a_complete_output_removes_the_stale_shards_of_other_settings(tmp_path):
    """A run interrupted with one λ, then finished with another: the first run's shards cannot be used any more
    (the output they were for is written), so the shard folder goes; a foreign file in it is kept."""
    out = tmp_path / "x.npz"
    parts = tmp_path / "x.npz.parts"
    parts.mkdir()
    (parts / "seeds0-3-95a34fedb347b9de.npz").write_bytes(b"an earlier run's shard")
    assert main(["sample", "--sampler", "ddim", "--steps", "2", "--seeds", "0-3", "--es", "1.1", "--out", str(out),
                 "--no-progress"]) == 0
    assert out.exists() and not parts.exists()
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    assert main(["sample", "--sampler", "ddim", "--steps", "2", "--seeds", "0-3", "--out", str(out),
                 "--no-progress"]) == 0
    assert [p.name for p in parts.iterdir()] == ["notes.txt"]


def test_png_rerun_never_keeps_pngs_that_other_settings_overwrote(runs, tmp_path, monkeypatch):
    """Run A (3 steps) killed after its first chunk, run B (2 steps) killed after its first chunk (it overwrote
    seeds 0-3), then A resumed: A's marker for seeds 0-3 used to stand, and A kept B's PNGs with exit 0."""
    import diffusion_es.samplers as samplers

    real = samplers.sample
    calls = []

    def dies_on_the_second_chunk(*a, **kw):
        calls.append(list(a[4]))
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(samplers, "sample", dies_on_the_second_chunk)
    out = tmp_path / "p"
    assert main([*COMMON, "--out", str(out)]) == 130                     # A: seeds 0-3 written
    other = [a if a != "3" else "2" for a in COMMON]                      # B: --steps 2
    assert main([*other, "--out", str(out)]) == 130                      # B: seeds 0-3 overwritten
    monkeypatch.setattr(samplers, "sample", real)
    assert main([*COMMON, "--out", str(out)]) == 0                       # A again
    for s in range(10):  # every PNG is A's, as in the uninterrupted run
        assert (out / f"seed{s:06d}.png").read_bytes() == (runs / "pngs" / f"seed{s:06d}.png").read_bytes(), s


def test_shard_keys_change_only_for_step_counts_the_adm_fix_moved(tmp_path, monkeypatch):
    """spacing 'adm' became guided-diffusion's own rule, which moves the grid at 278 step counts (21 among them):
    shards of those counts written before must not be resumed into a new run; every other key stays as it was."""
    import diffusion_es.store as store

    seen = []
    real = store.ShardedRun

    def spy(ctx, out, identity, *a, **kw):
        seen.append(identity)
        return real(ctx, out, identity, *a, **kw)

    monkeypatch.setattr(store, "ShardedRun", spy)
    for steps in ("20", "21"):
        assert main(["sample", "--model", "default", "--sampler", "ddim", "--steps", steps, "--seeds", "0-1",
                     "--out", str(tmp_path / f"s{steps}.npz"), "--no-progress"]) == 0
    assert "adm_rule" not in seen[0] and seen[1]["adm_rule"] == 2
    from diffusion_es.core.schedules import VPSchedule
    from diffusion_es.experiments.common import grid_key

    vp = VPSchedule.linear()
    assert grid_key("ddpm", 21, vp) == {"adm_rule": 2} and grid_key("ddim", 23, vp) == {"adm_rule": 2}
    # the paper's counts (repro's and compare's columns), EDM grids and other spacings keep their keys
    assert [grid_key("ddim", n, vp) for n in (10, 20, 50, 100)] == [{}] * 4
    assert grid_key("euler", 21, vp) == {} and grid_key("ddim", 21, vp, "linspace") == {}


def test_a_run_refused_by_the_sampler_leaves_no_parts_folder(tmp_path, capsys):
    """The sampler refuses churn on a PFGM++ model only when it starts; the empty OUT.parts/ made just before was
    left behind ("before any work and without partial files"). A finished chunk of a later failure stays."""
    out = tmp_path / "y.npz"
    assert main(["sample", "--seeds", "0-3", "--model", "digits-pfgm", "--sampler", "heun", "--churn", "1",
                 "--steps", "3", "--out", str(out), "--no-progress"]) == 2
    assert "churn" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
