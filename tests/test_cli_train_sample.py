"""The train and sample commands end to end: reproducible sample files, ES changing only ES outputs, exact
resume through the CLI, and one error line with exit code 2 for bad input."""

import json

import numpy as np
import pytest

from diffusion_es.cli import main

TINY = ["--width", "16", "--blocks", "1", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", "digits", "--out", str(d), "--steps", "40", *TINY]) == 0
    return d


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_train_writes_a_loadable_checkpoint(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["training"]["step"] == 40 and cfg["data"]["spec"] == "digits"
    assert cfg["model"]["width"] == 16 and cfg["diffusion"]["T"] == 1000
    import shlex  # the command as typed is the run's provenance (--no-progress / --json only change what is shown)
    typed = [a for a in ["train", "--data", "digits", "--out", str(ckpt), "--steps", "40", *TINY]
             if a != "--no-progress"]
    assert cfg["training"]["commands"] == ["diffusion-es " + shlex.join(typed)]


def test_same_seeds_same_files_and_es_changes_only_es_outputs(tmp_path, capsys):
    common = ["sample", "--model", "default", "--sampler", "ddim", "--steps", "5", "--seeds", "0-5", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a.npz"), "--grid", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.npz")]) == 0
    assert main([*common, "--out", str(tmp_path / "c.npz"), "--batch-size", "4"]) == 0
    capsys.readouterr()  # (the human summaries)
    assert main([*common, "--out", str(tmp_path / "e.npz"), "--es", "1.05", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["es"] is not None and summary["n"] == 6 and summary["nfe"] == 5
    # the guarantee: same seeds and batch size, same bytes; another batch size may move a pixel by 1 (float kernels)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    c = _npz(tmp_path / "c.npz")["arr_0"].astype(int)
    assert np.abs(c - _npz(tmp_path / "a.npz")["arr_0"].astype(int)).max() <= 1
    a, e = _npz(tmp_path / "a.npz"), _npz(tmp_path / "e.npz")
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(a["seeds"], np.arange(6))
    assert not np.array_equal(a["arr_0"], e["arr_0"])
    assert (tmp_path / "a.png").stat().st_size > 0
    # lambda = 1 is the baseline exactly
    assert main([*common, "--out", str(tmp_path / "one.npz"), "--es", "1.0"]) == 0
    np.testing.assert_array_equal(_npz(tmp_path / "one.npz")["arr_0"], a["arr_0"])


def test_es_linear_and_schedule_file(ckpt, tmp_path):
    common = ["sample", "--model", str(ckpt), "--sampler", "ddpm", "--steps", "4", "--seeds", "3,7", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "l.npz"), "--es-linear", "0.01,1.0"]) == 0
    (tmp_path / "lam.json").write_text(json.dumps({"kind": "linear", "k": 0.01, "b": 1.0}))
    from diffusion_es.core.scaling import Linear, save_schedule

    save_schedule(tmp_path / "lam.json", Linear(0.01, 1.0))
    assert main([*common, "--out", str(tmp_path / "f.npz"), "--es-schedule", str(tmp_path / "lam.json")]) == 0
    np.testing.assert_array_equal(_npz(tmp_path / "l.npz")["arr_0"], _npz(tmp_path / "f.npz")["arr_0"])


def test_default_model_samples_with_every_sampler(tmp_path):
    for s in ("ddpm", "euler", "heun"):
        assert main(["sample", "--sampler", s, "--steps", "3", "--seeds", "0-1", "--out", str(tmp_path / "d.npz"),
                     "--no-progress"]) == 0
        assert _npz(tmp_path / "d.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_resume_through_the_cli_is_exact(tmp_path):
    from safetensors.torch import load_file

    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--out", str(a), "--steps", "30", "--ckpt-every", "10", *TINY]) == 0
    assert main(["train", "--out", str(b), "--steps", "20", "--ckpt-every", "10", *TINY]) == 0
    assert main(["train", "--out", str(b), "--steps", "30", "--resume", "--no-progress"]) == 0
    sa, sb = load_file(str(a / "train_state.safetensors")), load_file(str(b / "train_state.safetensors"))
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_toy_vectors(tmp_path):
    d = tmp_path / "toy"
    assert main(["train", "--data", "toy:moons", "--toy-n", "256", "--out", str(d), "--steps", "10", *TINY]) == 0
    assert main(["sample", "--model", str(d), "--steps", "3", "--seeds", "0-9", "--out", str(tmp_path / "t.npz"),
                 "--grid", str(tmp_path / "t.png"), "--no-progress"]) == 0
    assert _npz(tmp_path / "t.npz")["arr_0"].shape == (10, 2)


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-es: error: "), err
    return err[0]


def test_bad_input_is_one_line_exit_2(ckpt, tmp_path, capsys):
    out = ["--out", str(tmp_path / "x.npz"), "--no-progress"]
    assert main(["sample", "--model", str(tmp_path / "missing"), *out]) == 2
    assert "no such checkpoint; --model takes" in _err(capsys)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((ckpt / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x80\x04garbage")
    assert main(["sample", "--model", str(bad), *out]) == 2
    assert "damaged or not a .safetensors file" in _err(capsys)
    (bad / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    assert main(["sample", "--model", str(bad), *out]) == 2
    assert "not a diffusion-es checkpoint" in _err(capsys)
    assert main(["sample", "--model", str(ckpt), "--es", "-1", *out]) == 2
    _err(capsys)
    assert main(["sample", "--model", str(ckpt), "--es-linear", "abc", *out]) == 2
    assert "argument --es-linear: 'abc': give two numbers" in _err(capsys)
    assert main(["sample", "--model", str(ckpt), "--seeds", "5-1", *out]) == 2
    _err(capsys)
    assert main(["train", "--out", str(ckpt), "--steps", "5", *TINY]) == 2
    assert "already holds a training run" in _err(capsys)
    assert main(["train", "--out", str(tmp_path / "new"), "--resume", "--no-progress"]) == 2
    assert "nothing to resume" in _err(capsys)
    assert main(["train", "--out", str(ckpt), "--resume", "--lr", "0.5", "--no-progress"]) == 2
    assert "differs from the run being resumed" in _err(capsys)
    assert main(["train", "--data", "toy:circles", "--out", str(tmp_path / "t"), *TINY]) == 2
    assert "unknown toy" in _err(capsys)


def test_unet_v_prediction_learned_variance(tmp_path):
    d = tmp_path / "u"
    assert main(["train", "--out", str(d), "--arch", "unet", "--channels", "8", "--channel-mult", "1,2",
                 "--num-res-blocks", "1", "--attention-resolutions", "4", "--prediction", "v", "--learned-variance",
                 "--steps", "3", "--batch-size", "8", "--no-progress"]) == 0
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["diffusion"] == {"T": 1000, "beta_schedule": "linear", "prediction": "v", "learned_variance": True}
    assert cfg["model"]["arch"] == "unet" and cfg["model"]["learned_variance"] is True
    assert main(["sample", "--model", str(d), "--steps", "2", "--seeds", "0-1", "--out", str(tmp_path / "u.npz"),
                 "--no-progress"]) == 0


@pytest.mark.parametrize("command,argv,says", [
    ("train", ["--out", "r", "--steps", "5"], "no checkpoint was written yet: rerun without --resume"),
    ("sample", ["--out", "s.npz"], "finished work was kept (rerun with the same arguments to continue"),
    ("repro", ["--quick"], "finished work was kept"),
    ("calibrate", [], "this command does not resume: rerun it to start again"),  # it kept nothing: not "kept"
    ("fid-ref", ["--data", "digits", "--out", "r.npz"], "does not resume")])
def test_an_interrupt_says_what_was_kept(command, argv, says, tmp_path, monkeypatch, capsys):
    import importlib

    mod, name = {"fid-ref": ("fid", "run_fid_ref")}.get(command, (command, "run"))
    mod = importlib.import_module(f"diffusion_es.cli.cmd_{mod}")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, name, interrupted)
    interrupted.__module__ = mod.__name__
    monkeypatch.chdir(tmp_path)
    assert main([command, *argv]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_an_interrupt_while_the_command_line_starts_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the first second (the parser imports torch) is one line and exit 130, not a traceback."""
    import diffusion_es.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["sample", "--out", "s.npz"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["diffusion-es: interrupted before the command started; nothing was written"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_torch_is_imported_is_held_until_the_imports_are_done(signame, tmp_path, monkeypatch, capsys):
    """torch imports numpy from C, where a KeyboardInterrupt raised inside the import was swallowed (the Ctrl-C
    lost, the whole job run) or left numpy half-imported (a traceback). While the parser is built a signal is
    recorded, not raised: the imports finish, then the command stops in one line, and the handlers are restored."""
    import os
    import signal
    import time

    import diffusion_es.cli as cli

    sig = getattr(signal, signame)
    real, finished = cli.build_parser, []

    def build_parser_hit_by_a_signal():
        os.kill(os.getpid(), sig)  # arrives "inside the imports"
        time.sleep(0.05)  # Python runs the handler here: without deferral KeyboardInterrupt (or death) here
        finished.append(True)
        return real()

    monkeypatch.setattr(cli, "build_parser", build_parser_hit_by_a_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "s.npz"
    assert cli.main(["sample", "--seeds", "0-3", "--steps", "2", "--out", str(out)]) == 130
    assert finished == [True] and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["diffusion-es: interrupted before the command started; nothing was written"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_the_package_and_the_command_line_reach_main_without_torch():
    """`import diffusion_es` and `import diffusion_es.cli` (what the console script runs before main()) do not
    import torch, so an interrupt while torch loads lands in main's handler; the public names still resolve
    (on first use) to the objects of their modules, and `import *` gives all of them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import diffusion_es

    code = ("import sys, diffusion_es, diffusion_es.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "ns = {}; exec('from diffusion_es import *', ns); "
            "assert sorted(k for k in ns if not k.startswith('__')) == sorted(set(diffusion_es.__all__) - "
            "{'__version__'}); "
            "from diffusion_es.samplers import sample; from diffusion_es.core.scaling import Uniform; "
            "assert diffusion_es.sample is sample and diffusion_es.Uniform is Uniform; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(Path(diffusion_es.__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    for name in diffusion_es.__all__:
        assert getattr(diffusion_es, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffusion_es.nope
    # in a fresh interpreter, every subpackage and module is reachable as an attribute after `import diffusion_es`
    # alone, as after the eager import it replaced
    code = ("import importlib, pkgutil, diffusion_es as d; names = [i.name for i in pkgutil.iter_modules(d.__path__) "
            "if not i.name.startswith('_')]; assert len(names) > 10; "
            "assert all(getattr(d, n) is importlib.import_module('diffusion_es.' + n) and n in dir(d) "
            "for n in names), names; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_calibrate_with_out_stopped_while_it_loads_says_it_resumes(tmp_path, monkeypatch, capsys):
    """calibrate --out keeps its scored candidates; stopped while the model loaded (minutes for the MNIST metric) it
    said 'this command does not resume', although a rerun resumes."""
    import diffusion_es.cli.cmd_calibrate as cal

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "load_model_arg", interrupted)
    assert main(["calibrate", "--out", str(tmp_path / "lam.json")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finished work was kept (rerun with the same arguments" in err[0], err
    assert main(["calibrate"]) == 130  # without --out nothing is kept, and it says so
    assert "does not resume" in capsys.readouterr().err
