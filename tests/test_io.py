"""Atomic writers and sample file formats."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from diffusion_es.errors import UsageError
from diffusion_es.io import atomic_path, from_uint8, load_images, save_grid, save_npz, to_uint8, write_json


def test_atomic_write_leaves_no_partial_file_and_plain_permissions(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text().strip() == '{\n  "x": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_npz_round_trip_and_uint8_conversion(tmp_path):
    x = np.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    u = to_uint8(x)
    assert u.shape == (2, 4, 5, 3) and u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    save_npz(tmp_path / "s.npz", u, seeds=np.arange(2))
    assert np.array_equal(load_images(tmp_path / "s.npz"), u)
    assert np.abs(from_uint8(u) - x).max() <= 1 / 127.5
    save_grid(tmp_path / "g.png", u)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_sample_files_are_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_images(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not an .npz file"):
        load_images(tmp_path / "bad.npz")
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(UsageError, match="uint8 NHWC"):
        load_images(tmp_path / "f.npz")


PROC = Path("/proc")


@pytest.mark.skipif(not (PROC / "self").exists(), reason="needs /proc (Linux): a folder nobody can create files in")
def test_check_output_tries_the_folder_and_creates_nothing(tmp_path):
    from diffusion_es.io import check_output

    with pytest.raises(UsageError, match="--out /proc/x/y.npz: (cannot write|no permission to write) in /proc"):
        check_output("/proc/x/y.npz", "file", (".npz",))  # os.access says yes to root there: the probe refuses
    assert check_output(tmp_path / "new" / "deeper" / "o.npz", "file", (".npz",)) == tmp_path / "new" / "deeper" / "o.npz"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder was made


def test_the_write_probe_refuses_what_permissions_allow(tmp_path, monkeypatch):
    """When os.access says yes (root, a read-only mount) but a file cannot be made, the probe refuses."""
    import tempfile

    from diffusion_es.io import check_output

    def no_room(*a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", no_room)
    with pytest.raises(UsageError, match="--out .*o.npz: cannot write in .* \\(Read-only file system\\)"):
        check_output(tmp_path / "o.npz", "file", (".npz",))


@pytest.mark.skipif(not (PROC / "self").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("argv", [
    ["measure", "--n", "64", "--steps", "20", "--out", "/proc/x"],
    ["calibrate", "--sampler", "ddim", "--steps", "5", "--out", "/proc/x/lam.json"],
    ["fid-ref", "--data", "digits", "--out", "/proc/x.npz"],
    ["train-features", "--epochs", "1", "--out", "/proc/x.safetensors"],
    ["train", "--steps", "2", "--out", "/proc/x"],
    ["sample", "--seeds", "0-3", "--out", "OUT/x.npz", "--grid", "/proc/x/g.png"],
    ["repro", "--quick", "--out", "/proc/x"],
    ["export", "--model", "default", "--out", "/proc/x"],
], ids=lambda a: a[0])
def test_every_command_refuses_an_unwritable_output_before_any_work(argv, tmp_path, capsys):
    from diffusion_es.cli import main

    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("cannot write in /proc" in err[0] or "no permission to write in /proc" in err[0])
    assert "--out" in err[0] or "--grid" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["calibrate", "--sampler", "ddim", "--steps", "3", "--n", "10", "--sets", "1", "--val-sets", "2", "--out", ""],
    ["sample", "--seeds", "0-1", "--steps", "2", "--out", "OUT/x.npz", "--grid", ""],
], ids=["calibrate", "sample-grid"])
def test_an_empty_output_name_is_refused(argv, tmp_path, capsys):
    """calibrate --out '' ran the whole search, wrote nothing and exited 0 (the empty string read as 'no --out')."""
    from diffusion_es.cli import main

    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is empty" in err[0], err
    assert list(tmp_path.iterdir()) == []


def _strict(text):
    """json.loads that refuses NaN / Infinity / -Infinity as bare numbers (as JavaScript's JSON.parse does)."""
    import json

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_json_files_and_json_stdout_are_strict(tmp_path, capsys):
    """Python's json writes bare NaN / Infinity, which JSON.parse, jq and most parsers refuse: `sample --json` printed
    "S_tmax": Infinity and calibrate "lam_spread": NaN. NaN is now null and ±∞ "Infinity" / "-Infinity"."""
    import math

    import torch

    from diffusion_es.cli import main
    from diffusion_es.io import json_ready, json_text

    obj = {"nan": float("nan"), "inf": math.inf, "ninf": -math.inf, "np": np.float32(0.5), "i": np.int64(3),
           "b": np.bool_(True), "list": [np.float64("nan"), (1.0, -math.inf)], "t": torch.tensor(2.5)}
    want = {"nan": None, "inf": "Infinity", "ninf": "-Infinity", "np": 0.5, "i": 3, "b": True,
            "list": [None, [1.0, "-Infinity"]], "t": 2.5}
    assert _strict(json_text(obj)) == want and json_ready(1.25) == 1.25
    assert float(json_ready(math.inf)) == math.inf  # Python reads the strings back
    write_json(tmp_path / "x.json", obj)
    assert _strict((tmp_path / "x.json").read_text()) == want
    capsys.readouterr()
    assert main(["sample", "--sampler", "euler", "--steps", "2", "--seeds", "0-1", "--out", str(tmp_path / "s.npz"),
                 "--json", "--no-progress"]) == 0
    out = _strict(capsys.readouterr().out)
    assert "Infinity" in json_text(out)  # EDM's S_tmax = ∞ is in the echoed settings


def test_an_output_that_another_command_wrote_is_refused(tmp_path, capsys):
    """sample --out replaced a reference file with samples, fid-ref a sample file with statistics; repro wrote its
    report and parts into a PNG sample folder (whose next `fid` then read the report's PNGs); measure wrote into a
    training checkpoint, train into a repro folder. Each is refused before any work, and nothing is touched.
    repro, compare and measure may share a folder (repro --compare writes both reports into one)."""
    import shutil

    from diffusion_es.cli import main
    from diffusion_es.models.checkpoint import shipped_path

    assert main(["sample", "--seeds", "0-3", "--steps", "2", "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    assert main(["sample", "--seeds", "0-3", "--steps", "2", "--out", str(tmp_path / "pngs"), "--no-progress"]) == 0
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(tmp_path / "ref.npz"),
                 "--no-progress"]) == 0
    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped_path("default"), ckpt)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# a repro report\n")
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        (["sample", "--seeds", "0-3", "--steps", "2", "--out", "ref.npz"], "reference statistics file"),
        (["fid-ref", "--data", "digits", "--out", "s.npz"], "holds samples"),
        (["repro", "--quick", "--out", "pngs"], "holds samples (`diffusion-es sample`) (seed000000.png)"),
        (["measure", "--n", "4", "--steps", "2", "--out", "ckpt"], "holds a model checkpoint"),
        (["train", "--steps", "2", "--out", "report"], "holds a report"),
        (["export", "--model", "default", "--out", "report"], "holds a report"),
    ]
    for argv, says in cases:
        argv = [str(tmp_path / a) if a in ("ref.npz", "s.npz", "pngs", "ckpt", "report") else a for a in argv]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (argv, err)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # the report family shares a folder
    assert main(["measure", "--n", "4", "--steps", "2", "--out", str(report), "--no-progress"]) == 0
