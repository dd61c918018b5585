"""Our UNet exported to diffusers: the UNet2DModel computes what ours computes, the DDPMPipeline folder samples
what our DDPM sampler samples (same noise), and the folder works with our own commands.

Network against network and sampler against sampler are compared in float64 (both networks converted after the
export): two implementations of one float32 network differ by reordered sums whose size depends on the
network, not only on the dtype. The float32 pieces of the export itself (diffusers' ᾱ table) are checked
against their own rounding bound (``cumprod_rtol``).
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notices inside diffusers

import diffusers.pipelines.ddpm.pipeline_ddpm as pipeline_ddpm  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm  # noqa: E402
from diffusers import DDPMPipeline, UNet2DModel  # noqa: E402

from diffusion_es.adapters import diffusers_export as dx  # noqa: E402
from diffusion_es.cli import main  # noqa: E402
from diffusion_es.errors import UsageError  # noqa: E402
from diffusion_es.models import ModelConfig, build_model, load_model  # noqa: E402
from diffusion_es.models.checkpoint import diffusion_config, save_checkpoint  # noqa: E402
from diffusion_es.samplers import SeedNoise, sample  # noqa: E402
from diffusion_es.core.schedules import respace  # noqa: E402

from _tol import F64, cumprod_rtol, loop_tol, mag, net_tol  # noqa: E402

SMALL = dict(arch="unet", channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=4)


def random_unet(seed=0, **kw):
    """Our UNet with every weight random (a fresh one has zero output convolutions, which would hide errors)."""
    net = build_model(ModelConfig(**{**SMALL, **kw})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def in_float64(net):
    """Our network in float64. Its timestep embedding is computed in float32, as diffusers computes its own, and
    cast to the network's dtype before the time MLP (as diffusers does)."""
    net.to(F64)
    net.time_mlp.register_forward_pre_hook(lambda m, args: (args[0].to(F64),) + tuple(args[1:]))
    return net


def write_checkpoint(d, net, prediction="eps", beta_schedule="linear", T=1000):
    cfg = {"model": net.config.to_dict(),
           "diffusion": diffusion_config(T, beta_schedule, prediction, net.config.learned_variance),
           "data": {"spec": "digits", "range": [-1.0, 1.0]}}
    save_checkpoint(d, cfg, net, net)  # EMA and raw weights
    return d


CONFIGS = {
    "attn-low-res": {},
    "learned-var-3-levels": dict(channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(), num_heads=2,
                                 learned_variance=True, time_embed_dim=48),
    "rgb-attn-everywhere": dict(channels=64, channel_mult=(1, 1), attention_resolutions=(8, 4), data_shape=(3, 8, 8)),
    "rectangular": dict(data_shape=(1, 8, 16), dropout=0.1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_unet_computes_what_ours_computes(name):
    net = random_unet(**CONFIGS[name])
    theirs = dx.unet_to_diffusers(net)
    assert isinstance(theirs, UNet2DModel) and theirs.config.out_channels == net.config.out_channels
    net, theirs = in_float64(net), theirs.to(F64)
    g = torch.Generator().manual_seed(5)
    x = torch.randn((3, *net.config.data_shape), generator=g, dtype=F64)
    with torch.no_grad():
        for t in (torch.tensor([0.0, 250.5, 999.0]), torch.tensor(37.0)):  # per-sample and scalar timesteps
            ours = net(x, t)
            assert ours.abs().max() > 0.5
            torch.testing.assert_close(theirs(x, t).sample, ours, rtol=0, atol=net_tol(F64, 1 + mag(ours)))


def test_the_self_check_catches_a_wrong_mapping(monkeypatch):
    convert = dx._convert_state

    def swapped_q_k(state, config):
        out = convert(state, config)
        q, k = "mid_block.attentions.0.to_q.weight", "mid_block.attentions.0.to_k.weight"
        out[q], out[k] = out[k], out[q]
        return out

    monkeypatch.setattr(dx, "_convert_state", swapped_q_k)
    with pytest.raises(RuntimeError, match="differs from ours"):
        dx.unet_to_diffusers(random_unet())


@pytest.mark.parametrize("kw,match", [
    (dict(arch="mlp"), "only UNet"),
    (dict(channels=16), "multiples of 32"),
    (dict(attention_resolutions=(8,)), "head sizes"),  # 32/4 at 8x8 vs 64/4 in the middle block
])
def test_architectures_diffusers_cannot_express_are_refused(kw, match):
    with pytest.raises(UsageError, match=match):
        dx.diffusers_unet_config(ModelConfig(**{**SMALL, **kw}))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A v-prediction learned-variance checkpoint on a cosine schedule, exported (the least default case)."""
    d = tmp_path_factory.mktemp("export")
    net = random_unet(seed=3, learned_variance=True)
    ckpt = write_checkpoint(d / "ckpt", net, prediction="v", beta_schedule="cosine", T=200)
    info = dx.export_diffusers(ckpt, d / "out")
    return ckpt, d / "out", info


def test_export_folder_is_a_ddpm_pipeline_with_our_process(exported):
    ckpt, out, info = exported
    # the self-check ran and is recorded (it is float32; how close the export is: float64 tests here)
    assert 0 <= info["check_relative_max_difference"] <= dx.EXPORT_TOLERANCE
    ours = load_model(ckpt)
    pipe = DDPMPipeline.from_pretrained(out)
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.variance_type, sc.num_train_timesteps) == ("v_prediction", "learned_range", 200)
    assert sc.beta_schedule == "squaredcos_cap_v2" and len(sc.trained_betas) == 200  # the table itself wins
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod.double().numpy(), ours.schedule.alphas_cumprod,
                               rtol=cumprod_rtol(ours.schedule.betas))  # diffusers' float32 cumulative product
    meta = json.loads((out / dx.EXPORT_INFO).read_text())
    assert meta["weights"] == "ema" and meta["source"] == str(ckpt) and meta["diffusion"]["prediction"] == "v"
    # and back through our loader: same process, same network
    back = load_model(out)
    assert (back.prediction, back.learned_variance, back.data_shape) == ("v", True, (1, 8, 8))
    np.testing.assert_allclose(back.schedule.alphas_cumprod, ours.schedule.alphas_cumprod,
                               rtol=cumprod_rtol(ours.schedule.betas))  # float32 cumprod
    # the loaded network with the loaded prediction and variance, on our exact table, in float64
    back, ours = float64_on_our_table(back, ours)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for s in (0.3, 4.0):
        d_back, ex_back = back.denoiser().forward_full(x, s)
        d_ours, ex_ours = ours.denoiser().forward_full(x, s)
        torch.testing.assert_close(d_back, d_ours, rtol=0, atol=net_tol(F64, 1 + mag(x, d_ours)))
        torch.testing.assert_close(ex_back["var_values"], ex_ours["var_values"], rtol=0,
                                   atol=net_tol(F64, 1 + mag(ex_ours["var_values"])))


def float64_on_our_table(back, ours):
    """``back`` (the export loaded by our loader) on ``ours``' float64 ᾱ table (its own is diffusers' float32 one,
    checked separately), both networks in float64."""
    back.net.to(F64)
    in_float64(ours.net)
    return dataclasses.replace(back, schedule=ours.schedule), ours


def test_ddpm_pipeline_samples_what_our_ddpm_sampler_samples(exported, monkeypatch):
    """The exported DDPMPipeline, run as diffusers runs it (in float64, on our exact ᾱ table: diffusers' own
    float32 table is checked above), against our DDPM sampler on the original checkpoint, both fed the same
    per-seed noise."""
    ckpt, out, _ = exported
    seeds, steps = [0, 1, 2], 8
    noise = SeedNoise(seeds, (1, 8, 8))
    draws = iter([noise(k) for k in range(steps - 1)])  # diffusers draws no noise at t = 0, nor do we
    monkeypatch.setattr(pipeline_ddpm, "randn_tensor", lambda shape, **kw: noise.initial().to(kw["dtype"]))
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: next(draws).to(kw["dtype"]))
    pipe = DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    model = load_model(ckpt)
    in_float64(model.net)
    pipe.unet.to(F64)
    s, table = pipe.scheduler, model.schedule
    s.betas, s.alphas_cumprod = torch.from_numpy(table.betas.copy()), torch.from_numpy(table.alphas_cumprod.copy())
    s.alphas, s.one = 1.0 - s.betas, torch.tensor(1.0, dtype=F64)
    theirs = pipe(batch_size=len(seeds), num_inference_steps=steps, output_type="np").images
    ours = sample(model.denoiser(), "ddpm", steps, (1, 8, 8), seeds, spacing="leading", clip=True)
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert next(draws, None) is None and ours.std() > 0.05
    # images in [0, 1]; our σ-space state is x_t/√ᾱ: magnitudes up to 1/√ᾱ of the first step
    cond = 1 / float(table.alphas_cumprod[respace(table.T, steps, "leading")].min()) ** 0.5
    np.testing.assert_allclose(theirs, ours, atol=loop_tol(F64, 1.0, steps, cond=cond), rtol=0)


def test_cli_export_then_use_the_folder(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ckpt", random_unet(seed=7))
    out = tmp_path / "exported"
    assert main(["export", "--model", str(ckpt), "--out", str(out)]) == 0
    assert "DDPMPipeline" in capsys.readouterr().out
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["sample", "--model", str(out), "--sampler", "ddim", "--steps", "3", "--seeds", "0-3",
                 "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    capsys.readouterr()
    # an existing folder is not touched without --overwrite; with it, it is replaced
    assert main(["export", "--model", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert main(["export", "--model", str(ckpt), "--out", str(out), "--overwrite", "--raw-weights", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prediction_type"] == "epsilon" and info["variance_type"] == "fixed_small"
    assert json.loads((out / dx.EXPORT_INFO).read_text())["weights"] == "raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "exported", "s.npz"]  # no temporary folders
    # --overwrite replaces an earlier export only: pointed at the source training folder (or any other folder) it
    # used to delete it whole, checkpoints and all
    before = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*"))
    assert main(["export", "--model", str(ckpt), "--out", str(ckpt), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it holds a model checkpoint" in err[0], err  # (refused before export looks)
    assert sorted(p.relative_to(ckpt) for p in ckpt.rglob("*")) == before
    with pytest.raises(UsageError, match="not an earlier export"):  # (the CLI refuses a file before this)
        dx.export_diffusers(ckpt, tmp_path / "s.npz", overwrite=True)
    assert (tmp_path / "s.npz").is_file()


@pytest.mark.parametrize("model,match", [("default", "only UNet"), ("missing", "no such checkpoint")])
def test_cli_refuses_what_it_cannot_export(tmp_path, capsys, model, match):
    m = model if model == "default" else str(tmp_path / model)
    assert main(["export", "--model", m, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not (tmp_path / "o").exists()


def test_an_interrupted_export_leaves_the_old_folder_and_no_debris(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "ckpt", random_unet(seed=8))
    out = tmp_path / "out"
    dx.export_diffusers(ckpt, out)
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    save = DDPMPipeline.save_pretrained

    def dies_half_way(self, path, **kw):
        save(self, path, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        dx.export_diffusers(ckpt, out, use_ema=False, overwrite=True)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


def test_without_diffusers_the_cli_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    ckpt = write_checkpoint(tmp_path / "ckpt", random_unet(seed=9))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    assert main(["export", "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'diffusion-es[diffusers]'" in err[0]
    with pytest.raises(ImportError):  # and library code can still catch it as an ImportError
        dx.unet_to_diffusers(random_unet())


@pytest.mark.parametrize("prediction,beta_schedule", [("eps", "linear"), ("v", "linear"), ("x0", "cosine")])
def test_every_prediction_type_round_trips_through_the_export(tmp_path, prediction, beta_schedule):
    ckpt = write_checkpoint(tmp_path / "ckpt", random_unet(seed=10), prediction=prediction,
                            beta_schedule=beta_schedule, T=100)
    info = dx.export_diffusers(ckpt, tmp_path / "out")
    assert info["prediction_type"] == {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction]
    back, ours = load_model(tmp_path / "out"), load_model(ckpt)
    assert back.prediction == prediction and back.schedule.T == 100
    back, ours = float64_on_our_table(back, ours)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    want = ours.denoiser()(x, 2.0)
    # x0 from ε or v: σ = 2 keeps the conversions' condition below 3
    torch.testing.assert_close(back.denoiser()(x, 2.0), want, rtol=0, atol=net_tol(F64, 3 * (1 + mag(x, want))))


def test_an_export_killed_between_its_renames_is_tidied_by_the_next(tmp_path, monkeypatch):
    """SIGKILL inside the swap left the previous export as a hidden .OUT.old-PID folder (and a half-built
    .OUT.tmp-PID) for good, with OUT missing. The next export puts the old one back, then replaces it."""
    import shutil

    ckpt = write_checkpoint(tmp_path / "ckpt", random_unet(seed=8))
    out = tmp_path / "out"
    dx.export_diffusers(ckpt, out)
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    os.replace(out, tmp_path / ".out.old-99999")                      # the state after the first rename
    shutil.copytree(tmp_path / ".out.old-99999", tmp_path / ".out.tmp-99998")

    def fails(*a, **kw):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:  # an export that fails after the sweep: OUT is the previous export again
        m.setattr(dx, "_write_export", fails)
        with pytest.raises(RuntimeError):
            dx.export_diffusers(ckpt, out, use_ema=False)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]
    os.replace(out, tmp_path / ".out.old-99999")
    dx.export_diffusers(ckpt, out, use_ema=False)                     # no --overwrite needed: OUT was missing
    assert json.loads((out / dx.EXPORT_INFO).read_text())["weights"] == "raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]
