"""Rectified-flow models through the command line: train (digits, MNIST, exact resume), checkpoints that load as
flow denoisers (old VP checkpoints unchanged), sample / measure / calibrate with the flow samplers, and one error
line with exit code 2 for what does not fit."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffusion_es.cli import main
from diffusion_es.core.param import FlowDenoiser, VPDenoiser
from diffusion_es.core.schedules import FlowSchedule
from diffusion_es.models import load_model

TINY = ["--width", "16", "--blocks", "1", "--batch-size", "32", "--no-progress"]
MNIST = Path(__file__).resolve().parent.parent / ".cache" / "mnist" / "mnist.pkl.gz"


@pytest.fixture(scope="module")
def flow_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", "--data", "digits", "--prediction", "flow", "--shift", "2.0", "--out", str(d),
                 "--steps", "40", *TINY]) == 0
    return d


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_flow_checkpoint_config_and_loading(flow_ckpt):
    cfg = json.loads((flow_ckpt / "config.json").read_text())
    assert cfg["diffusion"] == {"process": "flow", "T": 1000, "prediction": "flow", "shift": 2.0,
                                "learned_variance": False}
    assert cfg["training"]["heldout_loss_ema"] > 0
    m = load_model(flow_ckpt)
    assert m.process == "flow" and m.schedule == FlowSchedule(1000, 2.0)
    den = m.denoiser()
    assert isinstance(den, FlowDenoiser) and den.time_scale == 1000.0
    old = load_model("default")  # a checkpoint written before flow models: still a VP model
    assert old.process == "vp" and isinstance(old.denoiser(), VPDenoiser)


def test_flow_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    a, b = tmp_path / "a", tmp_path / "b"
    common = ["train", "--prediction", "flow", "--ckpt-every", "10", *TINY]
    assert main([*common, "--out", str(a), "--steps", "30"]) == 0
    assert main([*common, "--out", str(b), "--steps", "20"]) == 0
    assert main(["train", "--out", str(b), "--steps", "30", "--resume", "--no-progress"]) == 0
    sa, sb = load_file(str(a / "train_state.safetensors")), load_file(str(b / "train_state.safetensors"))
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


@pytest.mark.skipif(not MNIST.exists(), reason="MNIST is unpacked by scripts/setup.sh into .cache/mnist")
def test_flow_training_on_mnist(tmp_path):
    d = tmp_path / "mnist"
    assert main(["train", "--data", f"mnist:{MNIST}", "--prediction", "flow", "--out", str(d), "--steps", "3",
                 "--eval-every", "0", *TINY]) == 0
    m = load_model(d)
    assert m.process == "flow" and tuple(m.data_shape) == (1, 28, 28)
    assert main(["sample", "--model", str(d), "--sampler", "flow_euler", "--steps", "2", "--seeds", "0-1",
                 "--out", str(tmp_path / "m.npz"), "--no-progress"]) == 0
    assert _npz(tmp_path / "m.npz")["arr_0"].shape == (2, 28, 28, 1)


def test_sample_with_flow_samplers_and_es(flow_ckpt, tmp_path):
    for sampler in ("flow_euler", "flow_heun"):
        common = ["sample", "--model", str(flow_ckpt), "--sampler", sampler, "--steps", "4", "--seeds", "0-3",
                  "--no-progress"]
        assert main([*common, "--out", str(tmp_path / "a.npz")]) == 0
        assert main([*common, "--out", str(tmp_path / "one.npz"), "--es", "1.0"]) == 0
        assert main([*common, "--out", str(tmp_path / "e.npz"), "--es-linear", "0.05,1.0"]) == 0
        assert main([*common, "--out", str(tmp_path / "s.npz"), "--shift", "1.0"]) == 0
        a = _npz(tmp_path / "a.npz")["arr_0"]
        assert a.shape == (4, 8, 8, 1) and np.array_equal(_npz(tmp_path / "one.npz")["arr_0"], a)
        assert not np.array_equal(_npz(tmp_path / "e.npz")["arr_0"], a)


def test_measure_and_calibrate_on_a_flow_model(flow_ckpt, tmp_path, capsys):
    assert main(["measure", "--model", str(flow_ckpt), "--sampler", "flow_euler", "--steps", "5", "--n", "20",
                 "--es", "1.02", "--out", str(tmp_path / "m"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    base = json.loads((tmp_path / "m" / "exposure_flow_euler5_baseline.json").read_text())
    assert base["t"][0] == 1.0 and base["sigma"][0] == "Infinity"  # step 0 is t = 1 (σ = ∞; strict JSON)
    assert base["lam"] == [1.0] * 5 and len(s["runs"]) == 2
    es = json.loads((tmp_path / "m" / "exposure_flow_euler5_es.json").read_text())
    assert es["lam"][0] == 1.0 and es["lam"][1:] == [1.02] * 4
    assert (tmp_path / "m" / "exposure_flow_euler5.png").stat().st_size > 0
    np.testing.assert_array_equal(base["t"], FlowSchedule(shift=2.0).grid(5)[:-1])  # the model's own shift
    assert main(["measure", "--model", str(flow_ckpt), "--sampler", "flow_euler", "--steps", "5", "--n", "20",
                 "--shift", "3", "--out", str(tmp_path / "m3"), "--json"]) == 0
    capsys.readouterr()
    t3 = json.loads((tmp_path / "m3" / "exposure_flow_euler5_baseline.json").read_text())["t"]
    np.testing.assert_array_equal(t3, FlowSchedule(shift=3.0).grid(5)[:-1])  # --shift changes the grid
    assert main(["calibrate", "--model", str(flow_ckpt), "--sampler", "flow_euler", "--steps", "3", "--n", "20",
                 "--sets", "1", "--val-sets", "2", "--coarse", "3", "--refine", "1", "--extend", "0",
                 "--ref", "heldout", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["sampler"] == "flow_euler" and len(r["baseline_val"]) == 2 and r["nfe"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["sample", "--sampler", "flow_euler", "--steps", "3", "--seeds", "0", "--out", "x.npz"],
     "--sampler 'flow_euler' needs a rectified-flow model"),
    (["sample", "--sampler", "ddim", "--shift", "3", "--steps", "3", "--seeds", "0", "--out", "x.npz"],
     "--shift is the time shift of rectified-flow models"),
    (["train", "--prediction", "flow", "--beta-schedule", "cosine", "--out", "unused"],
     "--beta-schedule applies to VP models"),
    (["train", "--prediction", "flow", "--learned-variance", "--out", "unused"], "has no learned variance"),
    (["train", "--shift", "3", "--out", "unused"], "shift is the time shift of rectified-flow models"),
])
def test_errors_are_one_line_exit_2(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("diffusion-es: error:") and msg in err[-1], err


def test_flow_model_refuses_vp_samplers_and_export(flow_ckpt, tmp_path, capsys):
    assert main(["sample", "--model", str(flow_ckpt), "--sampler", "ddpm", "--steps", "3", "--seeds", "0",
                 "--out", str(tmp_path / "x.npz"), "--no-progress"]) == 2
    assert "use flow_euler or flow_heun" in capsys.readouterr().err
    pytest.importorskip("diffusers")
    assert main(["export", "--model", str(flow_ckpt), "--out", str(tmp_path / "exp")]) == 2
    assert "rectified-flow model" in capsys.readouterr().err
