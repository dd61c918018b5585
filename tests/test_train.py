"""The training loop: the loss falls, the variational term matches its formulas, DDPM-IP with γ = 0 is plain
training bit for bit, and a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

import math
import os
import signal
import subprocess
import sys
import textwrap
from argparse import Namespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats
from scipy.integrate import quad

from diffusion_es.cli.cmd_train import interrupted_message
from diffusion_es.errors import UsageError
from diffusion_es.models import ModelConfig, build_model, diffusion_config
from diffusion_es.core.schedules import VPSchedule
from diffusion_es.training.losses import (diffusion_loss, diffusion_tables, discretized_gaussian_log_likelihood,
                                          normal_kl)
from diffusion_es.training.train import TrainConfig, lr_at, train

from _tol import F32, F64, mag, tol

TINY = ModelConfig(width=32, blocks=1, input_skip=True)


def _weights(d):
    return load_file(str(d / "train_state.safetensors"))


def test_loss_goes_down(tmp_path):
    s = train(tmp_path / "r", TrainConfig(steps=300, batch_size=64, warmup=20, log_every=50, ckpt_every=1000),
              ModelConfig(width=64, blocks=2), progress=False)
    lines = [__import__("json").loads(l) for l in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 50 and lines[-1]["step"] == 300
    assert lines[-1]["loss"] < 0.6 * lines[0]["loss"]
    assert s["step"] == 300 and math.isfinite(s["heldout_loss_ema"])
    for name in ("config.json", "model.safetensors", "train_state.safetensors"):
        assert (tmp_path / "r" / name).exists()


def test_normal_kl_matches_numeric_integral():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
    p, q = stats.norm(m1, math.exp(lv1 / 2)), stats.norm(m2, math.exp(lv2 / 2))
    ref, _ = quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -20, 20)
    got = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2)))
    assert float(got) == pytest.approx(ref, rel=1e-7)
    # float32: -1 + (0.2 - 0.2) + exp(0) + 0, a few roundings on terms of size 1
    assert float(normal_kl(*(torch.tensor(v) for v in (0.1, 0.2, 0.1, 0.2)))) == pytest.approx(0.0, abs=tol(F32, 1, 4))


def test_discretized_likelihood_is_a_distribution_over_the_grid():
    levels = 17
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    half = 1.0 / (levels - 1)
    for mean, log_scale in ((0.0, math.log(0.3)), (0.8, math.log(0.05)), (-1.3, math.log(2.0))):
        lp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale), half)
        assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-10)
        # interior bins: Φ((x+h-μ)/s) - Φ((x-h-μ)/s); edge bins reach to ±∞
        s = math.exp(log_scale)
        ref = stats.norm.cdf((grid.numpy() + half - mean) / s) - stats.norm.cdf((grid.numpy() - half - mean) / s)
        ref[0] = stats.norm.cdf((grid[0].item() + half - mean) / s)
        ref[-1] = stats.norm.sf((grid[-1].item() - half - mean) / s)
        np.testing.assert_allclose(lp.exp().numpy(), ref, rtol=1e-9, atol=1e-15)


def test_variational_term_matches_the_formulas_and_freezes_the_mean(monkeypatch):
    """vb at t = 0 is the decoder NLL, elsewhere the posterior KL, in bits per dimension; computed here
    independently in float64 with scipy from the schedule, with a fixed network output. The loss runs in float64
    too, on the tables' float64 coefficients (``diffusion_tables`` rounds them to float32 for training)."""
    sch = VPSchedule.linear(1000)
    with monkeypatch.context() as m:  # keep the coefficients in float64
        m.setattr(torch, "tensor", lambda v, dtype=None, device=None: torch.as_tensor(v, dtype=F64, device=device))
        tables = diffusion_tables(sch, "cpu")
    assert all(v.dtype == F64 for v in tables.values())
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 17, (3, 1, 2, 2), generator=g).float() / 8 - 1).double()
    eps = torch.randn(x0.shape, generator=g).double()
    t = torch.tensor([0, 500, 999])
    out = (0.3 * torch.randn(3, 2, 2, 2, generator=g)).double().requires_grad_(True)
    loss, terms = diffusion_loss(lambda x, tt: out, x0, t, eps, tables, "eps", True, 0.001, 17)
    vb = []
    for i, ti in enumerate(t.tolist()):
        ab = sch.alphas_cumprod[ti]
        ab_prev = sch.alphas_cumprod[ti - 1] if ti > 0 else 1.0
        beta = sch.betas[ti]
        x0_i, e_i, o = x0[i, 0].double().numpy(), eps[i, 0].double().numpy(), out[i].detach().double().numpy()
        xt = math.sqrt(ab) * x0_i + math.sqrt(1 - ab) * e_i
        x0_hat = (xt - math.sqrt(1 - ab) * o[0]) / math.sqrt(ab)
        c1, c2 = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
        post_var = lambda k: sch.betas[k] * (1 - sch.alphas_cumprod[k - 1]) / (1 - sch.alphas_cumprod[k])
        lo = math.log(post_var(max(ti, 1)))
        logvar = (o[1] + 1) / 2 * math.log(beta) + (1 - (o[1] + 1) / 2) * lo
        mean = c1 * x0_hat + c2 * xt
        if ti == 0:
            s = np.exp(0.5 * logvar)
            lo_b, hi_b = (x0_i - 1 / 16 - mean) / s, (x0_i + 1 / 16 - mean) / s
            p = np.where(x0_i < -0.99, stats.norm.cdf(hi_b), np.where(x0_i > 0.99, stats.norm.sf(lo_b),
                                                                       stats.norm.cdf(hi_b) - stats.norm.cdf(lo_b)))
            vb.append(-np.log(p).mean() / math.log(2))
        else:
            true_mean = c1 * x0_i + c2 * xt
            kl = 0.5 * (-1 + logvar - lo + np.exp(lo - logvar) + (true_mean - mean) ** 2 * np.exp(-logvar))
            vb.append(kl.mean() / math.log(2))
    # float64 on both sides: a few dozen roundings per element on terms as large as the largest |log variance|,
    # grown by 1/√ᾱ where x0 is predicted from ε
    atol = tol(F64, 1 + abs(math.log(sch.betas.min())), 64 / math.sqrt(sch.alphas_cumprod.min()))
    assert float(terms["vb"]) == pytest.approx(np.mean(vb), rel=0, abs=atol)
    assert loss.item() == pytest.approx(float(terms["mse"]) + 0.001 * 1000 * np.mean(vb), rel=0, abs=2 * atol)
    # the variational term trains the variance channels only: the mean is frozen (stop-gradient)
    loss.backward()
    mse_grad = 2 * (out[:, :1].detach() - eps) / eps.numel()
    torch.testing.assert_close(out.grad[:, :1], mse_grad, atol=tol(F64, mag(mse_grad), 4), rtol=0)
    assert out.grad[:, 1:].abs().sum() > 0


def test_ip_gamma_zero_is_plain_training_bit_for_bit(tmp_path):
    tables = diffusion_tables(VPSchedule.linear(1000), "cpu")
    torch.manual_seed(0)
    net = build_model(TINY)
    with torch.no_grad():
        net.out.weight.normal_(0, 0.1)  # the output layer starts at zero: make the loss depend on the input
    x0, eps, xi = torch.rand(8, 1, 8, 8) * 2 - 1, torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    t = torch.randint(0, 1000, (8,))
    plain, _ = diffusion_loss(net, x0, t, eps, tables)
    zero, _ = diffusion_loss(net, x0, t, eps, tables, xi=xi, ip_gamma=0.0)
    ip, _ = diffusion_loss(net, x0, t, eps, tables, xi=xi, ip_gamma=0.1)
    assert torch.equal(plain, zero) and not torch.equal(plain, ip)
    cfg = dict(steps=30, batch_size=16, ckpt_every=100, log_every=10)
    train(tmp_path / "a", TrainConfig(**cfg), TINY, progress=False)
    train(tmp_path / "b", TrainConfig(**cfg, ip_gamma=0.0), TINY, progress=False)
    train(tmp_path / "c", TrainConfig(**cfg, ip_gamma=0.1), TINY, progress=False)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.inp.weight"], c["model.inp.weight"])


@pytest.mark.parametrize("prediction,lv", [("v", False), ("x0", True)])
def test_other_parameterisations_train(tmp_path, prediction, lv):
    s = train(tmp_path / "r", TrainConfig(steps=40, batch_size=16, log_every=20, ckpt_every=100),
              TINY, diffusion_config(prediction=prediction, learned_variance=lv), progress=False)
    assert math.isfinite(s["final_loss"])
    from diffusion_es.models import load_model

    m = load_model(tmp_path / "r")
    assert m.prediction == prediction and m.learned_variance == lv


def test_lr_schedule():
    c = TrainConfig(steps=1000, lr=1e-3, warmup=100, lr_schedule="cosine", lr_final=1e-5)
    assert lr_at(c, 0) == pytest.approx(1e-5) and lr_at(c, 99) == pytest.approx(1e-3)
    assert lr_at(c, 100) == pytest.approx(1e-3) and lr_at(c, 1000) == pytest.approx(1e-5)
    assert lr_at(TrainConfig(warmup=0), 12345) == 1e-3
    with pytest.raises(UsageError):
        TrainConfig(lr_schedule="step")


_KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(int(sys.argv[3]))  # the parent's thread count: bit-exact resume is promised per setting
    from diffusion_es.models import ModelConfig
    from diffusion_es.training.train import TrainConfig, train
    def cb(step, info):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    train(sys.argv[1], TrainConfig(steps=60, batch_size=500, ckpt_every=20, log_every=10, seed=3, ip_gamma=0.1,
          ema_decay=0.9), ModelConfig(width=32, blocks=1, dropout=0.1, input_skip=True), progress=False, callback=cb)
""")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """batch 500 over 1,437 images: the kill (step 47) and the checkpoint (step 40) fall inside an epoch."""
    cfg = TrainConfig(steps=60, batch_size=500, ckpt_every=20, log_every=10, seed=3, ip_gamma=0.1, ema_decay=0.9)
    model = ModelConfig(width=32, blocks=1, dropout=0.1, input_skip=True)  # dropout: the global RNG must be restored too
    train(tmp_path / "full", cfg, model, progress=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", _KILLER, str(tmp_path / "killed"), "47", str(torch.get_num_threads())],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert load_file(str(tmp_path / "killed" / "train_state.safetensors"))["data.perm"].numel() == 1437
    s = train(tmp_path / "killed", None, resume=True, progress=False)
    assert s["step"] == 60
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_log_of_a_resumed_run_has_each_step_once(tmp_path):
    """Lines a run logged after its last checkpoint are logged again by the resumed run: they appeared twice in
    log.jsonl (and a new run in a folder left with only a log appended to it)."""
    import json

    def stop_at(n):
        def cb(step, info):
            if step == n:
                raise KeyboardInterrupt
        return cb

    cfg = TrainConfig(steps=10, batch_size=8, ckpt_every=4, log_every=1)
    train(tmp_path / "full", cfg, TINY, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "r", cfg, TINY, progress=False, callback=stop_at(7))  # checkpoint at 4, logged to 7
    train(tmp_path / "r", cfg, resume=True, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "new", cfg, TINY, progress=False, callback=stop_at(3))  # before any checkpoint
    (tmp_path / "new" / "train_state.safetensors").unlink(missing_ok=True)
    train(tmp_path / "new", cfg, TINY, progress=False)  # a new run there: a new log
    full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    for d in ("r", "new"):
        got = [json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in got] == [r["step"] for r in full] == list(range(1, 11)), d
        assert [r["loss"] for r in got] == [r["loss"] for r in full], d


def test_resume_refuses_changed_options_and_new_runs_refuse_old_folders(tmp_path):
    cfg = TrainConfig(steps=10, batch_size=8, ckpt_every=5, log_every=5)
    train(tmp_path / "r", cfg, TINY, progress=False)
    with pytest.raises(UsageError, match="already holds a training run"):
        train(tmp_path / "r", cfg, TINY, progress=False)
    with pytest.raises(UsageError, match="differs from the run being resumed"):
        train(tmp_path / "r", TrainConfig(steps=20, batch_size=8, lr=0.5), resume=True, progress=False)
    with pytest.raises(UsageError, match="nothing to resume"):
        train(tmp_path / "none", cfg, resume=True, progress=False)
    # a changed model or diffusion option is named (it said only "the model options differ")
    import dataclasses
    with pytest.raises(UsageError, match=r"--width 48 differs from the run being resumed \(\d+; model options\)"):
        train(tmp_path / "r", cfg, dataclasses.replace(TINY, width=48), resume=True, progress=False)
    with pytest.raises(UsageError, match=r"--beta-schedule 'cosine' differs .*\('linear'; diffusion options\)"):
        train(tmp_path / "r", cfg, TINY, diffusion=diffusion_config(beta_schedule="cosine"), resume=True,
              progress=False)
    s = train(tmp_path / "r", TrainConfig(steps=20, batch_size=8, ckpt_every=5, log_every=5), resume=True, progress=False)
    assert s["step"] == 20
    with pytest.raises(UsageError, match="already at step 20, not below --steps 15: nothing to train"):
        train(tmp_path / "r", TrainConfig(steps=15, batch_size=8, ckpt_every=5, log_every=5), resume=True,
              progress=False)


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(tmp_path):
    """lr 1e9 makes the weights NaN within a few steps: the run stops there (it used to report 'final loss nan' and
    save NaN weights), and what is on disk is the last checkpoint before it."""
    with pytest.raises(UsageError, match="training diverged at step .* lower --lr"):
        train(tmp_path / "r", TrainConfig(steps=40, batch_size=8, lr=1e9, warmup=0, grad_clip=0, ckpt_every=1,
                                          log_every=1), TINY, progress=False)
    w = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in w.values())
    log = (tmp_path / "r" / "log.jsonl").read_text()
    assert "NaN" not in log and "Infinity" not in log


def test_a_run_killed_inside_its_last_checkpoint_resumes_to_the_finished_files(tmp_path, monkeypatch):
    """The final checkpoint writes the training state, then the weights and config.json: killed in between, the
    run is at --steps but its folder says an earlier step. Resuming writes the rest (it is not 'nothing to train'),
    and the files equal an uninterrupted run's."""
    import json

    tr = sys.modules[train.__module__]  # the module (the package's attribute of that name is the function)

    cfg = TrainConfig(steps=10, batch_size=8, ckpt_every=5, log_every=5)
    train(tmp_path / "full", cfg, TINY, progress=False)
    real = tr.save_checkpoint

    def killed_at_the_end(path, info, *a, **kw):
        if info["training"]["step"] == 10:
            raise KeyboardInterrupt
        return real(path, info, *a, **kw)

    monkeypatch.setattr(tr, "save_checkpoint", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "r", cfg, TINY, progress=False)
    monkeypatch.setattr(tr, "save_checkpoint", real)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["training"]["step"] == 5
    s = train(tmp_path / "r", cfg, resume=True, progress=False)
    assert s["step"] == 10
    full = json.loads((tmp_path / "full" / "config.json").read_text())["training"]
    assert s["final_loss"] == full["final_loss"] and isinstance(s["final_loss"], float)  # (it was NaN)
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "r" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UsageError, match="nothing to train"):  # now complete: a second resume has nothing to do
        train(tmp_path / "r", cfg, resume=True, progress=False)


def test_ctrl_c_saves_the_step_it_was_at(tmp_path):
    """SIGINT (or SIGTERM) lets the step in progress finish, writes a checkpoint there and then stops: it used to
    lose every step since the last checkpoint (default every 2,000). The resumed run equals an uninterrupted one."""
    import json

    cfg = TrainConfig(steps=12, batch_size=8, ckpt_every=100, log_every=1)
    train(tmp_path / "full", cfg, TINY, progress=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / sig.name

        def cb(step, info):
            if step == 7:
                os.kill(os.getpid(), sig)

        old = signal.getsignal(sig)
        if sig == signal.SIGTERM:  # the CLI turns SIGTERM into KeyboardInterrupt; here, by hand
            signal.signal(sig, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                train(out, cfg, TINY, progress=False, callback=cb)
        finally:
            signal.signal(sig, old)
        assert json.loads((out / "config.json").read_text())["training"]["step"] == 8  # the signal came after 7
        # what the command line then says it kept, read from the folder
        assert "checkpoint at step 8 of 12 was kept" in interrupted_message(Namespace(out=out))
        assert train(out, cfg, resume=True, progress=False)["step"] == 12
        assert "training had finished" in interrupted_message(Namespace(out=out))
        a, b = _weights(tmp_path / "full"), _weights(out)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), sig.name
    # a signal during the last step: training is complete when it is acted on, so the run ends as a finished one
    # (it raised KeyboardInterrupt, and the command line then said to --resume a run that had nothing left)
    old = signal.getsignal(signal.SIGINT)
    try:
        assert train(tmp_path / "last", cfg, TINY, progress=False,
                     callback=lambda step, info: step == 11 and os.kill(os.getpid(), signal.SIGINT))["step"] == 12
    finally:
        signal.signal(signal.SIGINT, old)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "no checkpoint was written yet" in interrupted_message(Namespace(out=tmp_path / "nothing"))
    # an ignored SIGINT (a background job of a script) stays ignored: the run goes on to the end
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert train(tmp_path / "ignored", cfg, TINY, progress=False,
                     callback=lambda step, info: step == 7 and os.kill(os.getpid(), signal.SIGINT))["step"] == 12
    finally:
        signal.signal(signal.SIGINT, old)
