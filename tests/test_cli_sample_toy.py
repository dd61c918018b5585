"""A 2-D toy model end to end: train, sample with a scatter plot, float samples in the .npz."""

import numpy as np

from diffusion_es.cli import main


def test_toy_train_and_sample_with_plot(tmp_path):
    m = tmp_path / "toy"
    assert main(["train", "--data", "toy:moons", "--out", str(m), "--steps", "50", "--width", "32", "--blocks", "1",
                 "--no-progress", "--threads", "1"]) == 0
    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    assert main(["sample", "--model", str(m), "--sampler", "euler", "--steps", "5", "--seeds", "0-63",
                 "--out", str(out), "--grid", str(grid)]) == 0
    with np.load(out) as f:
        assert f["arr_0"].shape == (64, 2)
    assert grid.read_bytes()[:4] == b"\x89PNG"
