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


@pytest.mark.parametrize("config,bound", [({"clip_sample": False}, None), ({}, 1.0),
                                          ({"clip_sample_range": 0.5}, 0.5)], ids=["off", "default", "range"])
def test_the_schedulers_clipping_is_the_default(config, bound, tmp_path):
    """A diffusers pipeline's scheduler says how x̂_0 is clipped (clip_sample, clip_sample_range): the loaded model
    samples with that clipping unless told otherwise, through the library and the CLI (test_vs_diffusers checks
    each clipping against diffusers' own DDPM / DDIM step)."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler

    from diffusion_es.adapters import load_diffusers_unet
    from diffusion_es.samplers import sample

    d = tmp_path / "p"
    DDPMPipeline(unet=tiny_unet(in_ch=1, size=8), scheduler=DDPMScheduler(**config)).save_pretrained(d)
    den = load_diffusers_unet(d)
    assert den.clip_x0 == bound and load_model(d).denoiser().clip_x0 == bound
    from diffusion_es.experiments.common import fingerprint

    fp = fingerprint(load_model(d))  # repro / compare parts: a clipping other than [-1, 1] is part of the model
    assert fp.get("clip_x0", 1.0) == bound and (("clip_x0" in fp) == (bound != 1.0))
    kw = dict(shape=(1, 8, 8), seeds=range(4), batch_size=4, es=1.02)
    for sampler in ("ddpm", "ddim"):
        own = sample(den, sampler, 3, **kw)
        told = sample(den, sampler, 3, clip=False if bound is None else bound, **kw)
        assert torch.equal(own, told), sampler
        other = sample(den, sampler, 3, clip=0.25, **kw)  # a bound that bites: the clipping is not vacuous
        assert not torch.equal(own, other), sampler
    assert main(["sample", "--model", str(d), "--sampler", "ddim", "--steps", "3", "--seeds", "0-3",
                 "--batch-size", "4", "--es", "1.02", "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    from diffusion_es.io import to_uint8

    with np.load(tmp_path / "s.npz") as z:  # uint8 NHWC
        np.testing.assert_array_equal(z["arr_0"], to_uint8(sample(den, "ddim", 3, **kw)))
        assert not np.array_equal(z["arr_0"], to_uint8(sample(den, "ddim", 3, clip=0.25, **kw)))


def test_raw_weights_on_a_diffusers_folder_is_refused(unet_dir, tmp_path, capsys):
    """A diffusers folder holds one set of weights: --raw-weights has nothing to choose (it was ignored)."""
    assert main(["sample", "--model", str(unet_dir), "--raw-weights", "--seeds", "0", "--out",
                 str(tmp_path / "s.npz")]) == 2
    assert "--raw-weights" in capsys.readouterr().err and not (tmp_path / "s.npz").exists()


def test_dynamic_thresholding_is_refused(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    d = tmp_path / "p"
    DDPMPipeline(unet=tiny_unet(in_ch=1, size=8), scheduler=DDPMScheduler(thresholding=True)).save_pretrained(d)
    from diffusion_es.adapters import load_diffusers_unet

    with pytest.raises(ValueError, match="thresholding=True"):
        load_diffusers_unet(d)
    assert main(["sample", "--model", str(d), "--sampler", "ddim", "--steps", "2", "--seeds", "0",
                 "--out", str(tmp_path / "s.npz")]) == 2


@pytest.mark.parametrize("damage", ["channels", "beta_schedule"])
def test_a_damaged_diffusers_folder_is_one_line(unet_dir, tmp_path, capsys, damage):
    """A unet config that does not fit its weights, or a scheduler config diffusers cannot build, gave a 100-line
    traceback (RuntimeError / NotImplementedError) with exit 1."""
    import shutil

    d = tmp_path / "d"
    shutil.copytree(unet_dir, d)
    sub, key, value = {"channels": ("unet", "in_channels", 3),
                       "beta_schedule": ("scheduler", "beta_schedule", "nope")}[damage]
    cfg_file = next((d / sub).glob("*config.json"))
    cfg = json.loads(cfg_file.read_text())
    cfg[key] = value
    cfg_file.write_text(json.dumps(cfg))
    assert main(["sample", "--model", str(d), "--sampler", "ddim", "--steps", "2", "--seeds", "0-1",
                 "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not load it as a diffusers UNet" in err[0], err


def test_a_damaged_npz_that_starts_like_a_zip_is_named_so(tmp_path, capsys):
    """'PK' and then garbage got numpy's advice about pickled data ('if you trust the file ...')."""
    bad = tmp_path / "s.npz"
    bad.write_bytes(b"PK" + b"\x00" * 64)
    ref = tmp_path / "r.npz"
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(ref), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["fid", str(bad), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an .npz file (not a zip archive)" in err[0] and "pickle" not in err[0], err


def test_a_folder_that_no_longer_says_its_schedule_is_refused(unet_dir, tmp_path, capsys):
    """A pipeline folder without scheduler/ was sampled with diffusers' default linear table (a cosine model then
    gave a σ column of 157 / 3.4 / 0.01 instead of 2.0e4 / 1.0 / 0.0064), with no word; so was a bare UNet folder
    from the CLI. Both are refused in one line that says how to restore the schedule; the library still reads a bare
    UNet folder with the documented defaults unless told to require a scheduler."""
    import shutil

    from diffusion_es.models.diffusers_unet import load_diffusers_unet

    pipe = tmp_path / "pipe"
    shutil.copytree(unet_dir, pipe)
    shutil.rmtree(pipe / "scheduler")
    bare = tmp_path / "bare"
    shutil.copytree(unet_dir / "unet", bare)
    capsys.readouterr()
    for d in (pipe, bare):
        assert main(["measure", "--model", str(d), "--sampler", "ddim", "--steps", "2", "--n", "4",
                     "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no scheduler_config.json" in err[0] and "save_config" in err[0], err
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        load_diffusers_unet(pipe)
    assert load_diffusers_unet(bare).schedule.T == 1000  # the library's documented default
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        load_diffusers_unet(bare, require_scheduler=True)


def test_a_folder_without_its_weights_is_one_line(unet_dir, tmp_path, capfd):
    """diffusers logged two lines of its own beside our error; a bare UNet folder without weights was called 'not a
    diffusion-es checkpoint'."""
    import shutil

    pipe, bare = tmp_path / "pipe", tmp_path / "bare"
    shutil.copytree(unet_dir, pipe)
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copytree(pipe / "unet", bare)
    shutil.copy(pipe / "scheduler" / "scheduler_config.json", bare)
    capfd.readouterr()
    for d in (pipe, bare):
        assert main(["measure", "--model", str(d), "--n", "4", "--steps", "2", "--out", str(tmp_path / "m")]) == 2
        captured = capfd.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "no weights in" in err[0] and "could not load it as a diffusers UNet" in err[0], err


def test_a_shape_with_other_channels_than_the_unet_is_refused(unet_dir):
    """(4, 4) for a 1-channel UNet read the seeds as channels, (3, 8, 8) failed inside a conv."""
    from diffusion_es.models.diffusers_unet import load_diffusers_unet
    from diffusion_es.samplers import sample

    den = load_diffusers_unet(unet_dir)
    for bad in ((4, 4), (3, 8, 8)):
        with pytest.raises(ValueError, match=r"the network takes 1-channel images, i.e. a shape \(1, H, W\)"):
            sample(den, "ddim", 2, bad, [0, 1])
    assert sample(den, "ddim", 2, (1, 8, 8), [0, 1]).shape == (2, 1, 8, 8)


def test_a_dtype_may_be_given_by_name(unet_dir):
    """load_diffusers_unet(dtype="float16") said 'Invalid device string' (the name went to .to() as a device)."""
    import torch

    from diffusion_es.models.diffusers_unet import load_diffusers_unet

    assert load_diffusers_unet(unet_dir, dtype="float16")._net_dtype() == torch.float16
    assert load_diffusers_unet(unet_dir, dtype="torch.bfloat16")._net_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match="'int8' is not a torch floating-point dtype"):
        load_diffusers_unet(unet_dir, dtype="int8")
