"""A diffusers UNet2DModel saved on disk works with our commands: sample, measure, calibrate, repro."""

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from _tiny_diffusers import tiny_unet  # noqa: E402
from _tol import cumprod_rtol  # noqa: E402

from diffusion_es.cli import main  # noqa: E402
from diffusion_es.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    from diffusers import DDPMPipeline, DDPMScheduler

    d = tmp_path_factory.mktemp("dunet")
    DDPMPipeline(unet=tiny_unet(in_ch=1, size=8), scheduler=DDPMScheduler()).save_pretrained(d)
    return d


def test_loads_as_a_model_with_its_schedule(unet_dir):
    m = load_model(unet_dir)
    assert m.data_shape == (1, 8, 8) and m.prediction == "eps" and not m.learned_variance
    assert m.schedule.T == 1000
    from diffusion_es.core.schedules import VPSchedule

    # the scheduler's own (float32) ᾱ table, i.e. DDPM's linear β
    lin = VPSchedule.linear()
    np.testing.assert_allclose(m.schedule.alphas_cumprod, lin.alphas_cumprod, rtol=cumprod_rtol(lin.betas), atol=0)


def test_commands_run_on_it(unet_dir, tmp_path, capsys):
    m = str(unet_dir)
    assert main(["sample", "--model", m, "--sampler", "ddim", "--steps", "3", "--seeds", "0-3",
                 "--out", str(tmp_path / "s.npz"), "--es", "1.01"]) == 0
    assert main(["measure", "--model", m, "--sampler", "ddim", "--steps", "3", "--n", "8",
                 "--out", str(tmp_path / "m"), "--json"]) == 0
    assert main(["calibrate", "--model", m, "--sampler", "ddim", "--steps", "2", "--n", "12", "--sets", "1",
                 "--val-sets", "2", "--coarse", "2", "--refine", "0", "--json"]) == 0
    capsys.readouterr()
    assert main(["repro", "--model", m, "--quick", "--samplers", "ddim", "--nfe", "2,3", "--samples", "12",
                 "--seeds", "2", "--out", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert r["model"] == m and len(r["table"]) == 2
    assert all(c["lambda1_equals_baseline"] for c in r["table"])
