"""Networks, configs and checkpoints: shapes, JSON round trips, exact weight round trips, and loading that never
runs code and fails with one clear line on corrupt or foreign files."""

import json
import os
import pickle

import pytest
import torch

from diffusion_es.errors import UsageError
from diffusion_es.models import ModelConfig, build_model, diffusion_config, load_model, save_checkpoint, timestep_embedding

from _tol import F32, tol


def _ckpt(tmp_path, learned_variance=False, arch="mlp"):
    cfg = ModelConfig(arch=arch, data_shape=(1, 8, 8), width=16, blocks=1, channels=8, channel_mult=(1, 2),
                      num_res_blocks=1, learned_variance=learned_variance)
    torch.manual_seed(0)
    net, ema = build_model(cfg), build_model(cfg)
    with torch.no_grad():  # non-trivial weights (the output layers start at zero)
        for p in list(net.parameters()) + list(ema.parameters()):
            p.normal_(0, 0.1)
    d = tmp_path / "ck"
    save_checkpoint(d, {"model": cfg.to_dict(), "diffusion": diffusion_config(learned_variance=learned_variance),
                        "data": {"spec": "digits"}, "training": {"step": 1}}, ema, net)
    return d, net, ema


@pytest.mark.parametrize("cfg", [
    ModelConfig(width=32, blocks=2),
    ModelConfig(width=32, blocks=1, learned_variance=True),
    ModelConfig(data_shape=(2,), width=32, blocks=1),
    ModelConfig(arch="unet", data_shape=(1, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,)),
    ModelConfig(arch="unet", data_shape=(3, 16, 16), channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                learned_variance=True),
])
def test_shapes_and_config_round_trip(cfg):
    net = build_model(cfg)
    x = torch.randn(3, *cfg.data_shape)
    y = net(x, torch.tensor([0.0, 499.5, 999.0]))
    c = cfg.data_shape[0]
    assert y.shape == (3, 2 * c, *cfg.data_shape[1:]) if cfg.learned_variance else y.shape == x.shape
    assert y.dtype == torch.float32
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_time_embedding_is_continuous_and_distinguishes_steps():
    e = timestep_embedding(torch.tensor([10.0, 10.5, 11.0]), 64)
    assert e.shape == (3, 64)
    # float32 cos/sin of arguments t·f <= 11: the argument's rounding (u·11) and the function's own, per side
    assert 0 < (e[1] - e[0]).abs().max() < (e[2] - e[0]).abs().max() + tol(F32, 1 + 11, 4)
    assert timestep_embedding(torch.tensor([3.0]), 7).shape == (1, 7)


def test_config_validation():
    with pytest.raises(UsageError, match="unknown model arch"):
        ModelConfig(arch="transformer")
    with pytest.raises(UsageError, match="divisible"):
        ModelConfig(arch="unet", data_shape=(1, 6, 6), channel_mult=(1, 2, 2))
    with pytest.raises(UsageError, match="unknown model config keys"):
        ModelConfig.from_dict({"arch": "mlp", "depth": 3})
    with pytest.raises(UsageError, match="prediction"):
        diffusion_config(prediction="score")


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_checkpoint_round_trip_is_exact(tmp_path, arch):
    d, net, ema = _ckpt(tmp_path, learned_variance=True, arch=arch)
    for use_ema, ref in ((True, ema), (False, net)):
        m = load_model(d, use_ema=use_ema)
        sd = m.net.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(sd[k], v), k
        assert not m.net.training and all(not p.requires_grad for p in m.net.parameters())
    assert m.learned_variance and m.prediction == "eps" and m.data_shape == (1, 8, 8) and m.schedule.T == 1000
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 900.0])
    assert torch.equal(m.net(x, t), net.eval()(x, t))


def test_denoiser_of_loaded_model(tmp_path):
    d, _, _ = _ckpt(tmp_path)
    den = load_model(d).denoiser()
    from diffusion_es.core.param import VPDenoiser

    assert isinstance(den, VPDenoiser)
    out = den(torch.randn(2, 1, 8, 8, dtype=torch.float64), 1.0)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_default_model_loads():
    m = load_model("default")
    assert m.data_shape == (1, 8, 8) and m.prediction == "eps" and not m.learned_variance
    assert m.config["diffusion"] == {"T": 1000, "beta_schedule": "linear", "prediction": "eps", "learned_variance": False}
    assert m.config["training"]["step"] >= 40000
    with pytest.raises(UsageError, match="no raw"):
        load_model("default", use_ema=False)  # the shipped folder holds the EMA weights only


def _one_line(e):
    return "\n" not in str(e.value) and len(str(e.value)) < 300


def test_corrupt_weights_give_one_clear_line(tmp_path):
    d, _, _ = _ckpt(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated, damaged or not a .safetensors file") as e:
        load_model(d)
    assert _one_line(e)
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UsageError, match="corrupt"):
        load_model(d)


def test_missing_raw_or_ema_weights_say_which_option_to_use(tmp_path):
    d, _, ema = _ckpt(tmp_path)
    save_checkpoint(d, json.loads((d / "config.json").read_text()), ema)  # EMA weights only
    with pytest.raises(UsageError, match=r"no raw \(non-EMA\) weights; drop --raw-weights") as e:
        load_model(d, use_ema=False)
    assert _one_line(e)
    from safetensors.torch import load_file, save_file

    raw_only = {k.replace("ema.", "model."): v for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(raw_only, str(d / "model.safetensors"))
    with pytest.raises(UsageError, match="no EMA weights; pass --raw-weights"):
        load_model(d)


def test_corrupt_or_foreign_config(tmp_path):
    d, _, _ = _ckpt(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="config.json: not valid JSON") as e:
        load_model(d)
    assert _one_line(e)
    (d / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))  # a diffusers config
    with pytest.raises(UsageError, match="not a diffusion-es checkpoint") as e:
        load_model(d)
    assert _one_line(e)
    cfg["model"]["width"] = 32  # weights no longer match the config
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="shape"):
        load_model(d)
    with pytest.raises(UsageError, match="no such checkpoint"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        load_model(tmp_path / "empty")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_loading_never_executes_code(tmp_path):
    d, net, _ = _ckpt(tmp_path)
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    (d / "model.safetensors").unlink()
    with open(d / "model.pt", "wb") as f:
        pickle.dump({"inp.weight": _Evil()}, f)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's pickle-protocol warning is not shown before the one line
        with pytest.raises(UsageError, match="refused") as e:
            load_model(d)
    assert _one_line(e)
    assert not marker.exists()
    # a pickle renamed to .safetensors is not parsed as a pickle either
    os.replace(d / "model.pt", d / "model.safetensors")
    with pytest.raises(UsageError, match="truncated, damaged or not a .safetensors file"):
        load_model(d)
    assert not marker.exists()
    # a plain tensor state dict in model.pt is accepted (torch.load with weights_only=True)
    (d / "model.safetensors").unlink()
    torch.save(net.state_dict(), d / "model.pt")
    m = load_model(d)
    assert all(torch.equal(m.net.state_dict()[k], v) for k, v in net.state_dict().items())


# ---- an MLP that can represent its target ------------------------------------------------------------------
def test_narrow_mlp_without_skip_is_refused_and_the_skip_fixes_it(tmp_path):
    from diffusion_es.errors import UsageError
    from diffusion_es.training.train import TrainConfig, train

    narrow = ModelConfig(data_shape=(1, 8, 8), width=16, blocks=1)
    assert "cannot represent the 64-dimensional eps target" in narrow.representation_problem("eps")
    assert narrow.representation_problem("x0") is None          # x0 lives on the data, not the noise
    assert ModelConfig(width=64, blocks=1).representation_problem("eps") is None
    with pytest.raises(UsageError, match="1 − 16/64 = 0.75"):
        train(tmp_path / "a", TrainConfig(data="digits", steps=2, batch_size=8), narrow, progress=False)
    skip = ModelConfig(data_shape=(1, 8, 8), width=16, blocks=1, input_skip=True)
    assert skip.representation_problem("eps") is None
    train(tmp_path / "b", TrainConfig(data="digits", steps=2, batch_size=8), skip, progress=False)


def test_input_skip_is_a_time_gated_identity_on_the_prediction_channels():
    torch.manual_seed(0)
    for lv in (False, True):
        cfg = ModelConfig(data_shape=(1, 4, 4), width=8, blocks=1, input_skip=True, learned_variance=lv)
        net = build_model(cfg).eval()
        x, t = torch.randn(3, 1, 4, 4), torch.tensor([0.0, 500.0, 999.0])
        base = net(x, t)
        with torch.no_grad():
            net.skip_gate.bias.fill_(2.0)  # gate 2 at every t: the output gains exactly 2·x on the ε channels
        out = net(x, t)
        torch.testing.assert_close(out[:, :1], base[:, :1] + 2 * x, rtol=0, atol=1e-6)  # float32, |x| ~ 1
        if lv:
            assert torch.equal(out[:, 1:], base[:, 1:])  # the variance channels are untouched


def test_old_configs_without_input_skip_still_load():
    d = ModelConfig().to_dict()
    d.pop("input_skip")
    assert ModelConfig.from_dict(d).input_skip is False
