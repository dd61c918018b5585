"""The shipped MNIST model (``--model mnist``): what the package holds, that it loads without executing code and
samples, and that repro / compare evaluate it on MNIST's test split with the MNIST profiles."""

import json

import torch
from safetensors import safe_open

from diffusion_es.cli import main
from diffusion_es.experiments.common import model_data
from diffusion_es.experiments.repro import PROFILES, ReproConfig
from diffusion_es.models import load_model
from diffusion_es.models.checkpoint import shipped_path
from diffusion_es.samplers import sample


def test_the_package_holds_the_model_its_card_and_ema_weights_only():
    d = shipped_path("mnist")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["data"]["spec"] == "mnist" and "path" not in cfg["data"]  # no path of the machine that trained it
    assert cfg["model"]["arch"] == "unet" and cfg["model"]["data_shape"] == [1, 28, 28]
    assert cfg["diffusion"]["prediction"] == "eps" and cfg["training"]["commands"]
    card = (d / "MODEL_CARD.md").read_text()
    for needle in ("## Command", "FD vs test", "FD vs train", "recall", "nearest training image", "per 1,000 samples",
                   "held-out loss", "CPU"):
        assert needle in card, needle
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("ema.") for k in keys)


def test_loads_and_samples():
    m = load_model("mnist")
    assert tuple(m.data_shape) == (1, 28, 28) and model_data(m, None) == "mnist"
    assert sum(p.numel() for p in m.net.parameters()) == json.loads(
        (shipped_path("mnist") / "config.json").read_text())["training"]["params"]
    x = sample(m.denoiser(), "ddim", 3, m.data_shape, [0, 1], schedule=m.schedule)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_repro_and_compare_take_the_mnist_profiles():
    for quick in (True, False):
        c = ReproConfig(model="mnist", quick=quick).resolved("mnist")
        prof = PROFILES["mnist"]["quick" if quick else "full"]
        assert (c.n_samples, c.samplers, c.nfe) == (prof["n_samples"], prof["samplers"], prof["nfe"])
        assert c.ref == "heldout"


def test_sample_by_name(tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", "mnist", "--sampler", "ddim", "--steps", "2", "--seeds", "0-1", "--out",
                 str(out), "--no-progress"]) == 0
    import numpy as np

    with np.load(out) as z:
        arr = z[z.files[0]]
    assert arr.dtype == np.uint8 and arr.shape in ((2, 28, 28, 1), (2, 1, 28, 28), (2, 28, 28))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-es: error:"), err
    return err[0]


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    assert main(["repro", "--quick", "--model", "nonesuch", "--out", str(out), "--no-progress"]) == 2
    assert "no such checkpoint" in _one_line(capsys) and not out.exists()
    monkeypatch.setenv("DIFFUSION_ES_MNIST", str(tmp_path / "missing.pkl.gz"))
    for cmd in ("repro", "compare"):
        assert main([cmd, "--quick", "--model", "mnist", "--out", str(out), "--no-progress"]) == 2
        assert "DIFFUSION_ES_MNIST" in _one_line(capsys) and not out.exists()


def test_features_of_another_image_size_are_refused(tmp_path, capsys):
    """digit features (an 8x8 classifier) of resized 28x28 samples would give a number that means nothing."""
    import numpy as np

    from diffusion_es.io import save_npz

    x = (np.arange(6 * 28 * 28) % 256).astype(np.uint8).reshape(6, 28, 28, 1)
    save_npz(tmp_path / "d.npz", x)
    out = tmp_path / "r"
    assert main(["repro", "--quick", "--model", "mnist", "--data", f"npz:{tmp_path / 'd.npz'}", "--features", "digits", "--ref", "train",
                 "--out", str(out), "--no-progress"]) == 2
    assert "--features digits is a classifier of 8x8 images" in _one_line(capsys) and not out.exists()


def test_repro_on_mnist_end_to_end_small(tmp_path, monkeypatch):
    """The quick MNIST reproduction's every stage (power pilot, calibration, validation, exposure curves, report) on
    tiny sizes: MNIST's test split as the reference and the MNIST classifier's features. MNIST itself is cut to its
    first 2,000 training and 500 test images here (the reference statistics of all 70,000 take minutes on 2 cores)."""
    import dataclasses

    import diffusion_es.data as data
    from diffusion_es.experiments.repro import run_repro

    full = data.load_dataset

    def small(spec, *a, **kw):
        ds = full(spec, *a, **kw)
        if str(spec) == "mnist":
            ds = dataclasses.replace(ds, train=ds.train[:2000], heldout=ds.heldout[:500])
        return ds

    monkeypatch.setattr(data, "load_dataset", small)

    cfg = ReproConfig(model="mnist", quick=True, samplers=["ddim"], nfe=[4], n_samples=20, n_measure=12,
                      out=str(tmp_path / "r"), batch_size=20)
    res = run_repro(cfg, log=lambda m: None)
    assert res["data"] == "mnist" and res["metric"] == "FD-mnist vs heldout"
    assert [(c["sampler"], c["nfe_cell"]) for c in res["table"]] == [("ddim", 4)]
    assert res["power"]["n_samples"] == 20 and res["power"]["sets_needed"] >= 2
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "exposure_ddim.png").is_file()


def test_repro_cli_leaves_rows_columns_and_sizes_to_the_profile():
    """A default on the command line would override the dataset's profile (MNIST ran the digits rows once)."""
    from diffusion_es.cli import build_parser

    a = build_parser().parse_args(["repro", "--model", "mnist"])
    assert (a.samplers, a.nfe, a.samples, a.seeds) == (None, None, None, None)
    c = ReproConfig(model="mnist", samplers=a.samplers, nfe=a.nfe, n_samples=a.samples).resolved("mnist")
    assert c.samplers == PROFILES["mnist"]["full"]["samplers"]
