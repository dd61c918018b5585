"""Atomic writers and sample file formats."""

import os
import stat

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
