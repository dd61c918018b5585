"""``compare``: IP training with γ = 0 is plain training; a tiny end-to-end run (trained here, IP twin trained on
request) writes its report, keeps the paired invariants and resumes from its parts."""

import json
import math

import pytest
import torch

from diffusion_es.cli import main
from diffusion_es.experiments.blocks import compare_blocks
from diffusion_es.experiments.compare import CompareConfig, ip_recipe, run_compare
from diffusion_es.models import ModelConfig, load_model
from diffusion_es.core.schedules import VPSchedule
from diffusion_es.training.losses import diffusion_loss, diffusion_tables
from diffusion_es.training.train import TrainConfig, train

from _tol import F32, mag, tol

TINY = ModelConfig(width=32, blocks=1, time_embed_dim=16, input_skip=True)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_ip_gamma_zero_is_plain_training(tmp_path):
    kw = dict(data="digits", steps=30, batch_size=16, warmup=5, ckpt_every=1000)
    train(tmp_path / "plain", TrainConfig(**kw), model=TINY, progress=False)
    train(tmp_path / "ip0", TrainConfig(ip_gamma=0.0, **kw), model=TINY, progress=False)
    train(tmp_path / "ip1", TrainConfig(ip_gamma=0.1, **kw), model=TINY, progress=False)
    a, b, c = (_weights(tmp_path / n) for n in ("plain", "ip0", "ip1"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # bit for bit, raw and EMA
    assert any(not torch.equal(a[k], c[k]) for k in a)                      # γ = 0.1 does change training


def test_ip_loss_perturbs_the_input_only():
    """With γ the network input is √ᾱ x0 + √(1−ᾱ)(ε + γξ) and the target stays ε; γ = 0 ignores ξ exactly."""
    tables = diffusion_tables(VPSchedule.linear(), "cpu")
    g = torch.Generator().manual_seed(0)
    x0, eps, xi = (torch.randn(6, 1, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    seen = []

    def net(x_t, tt):
        seen.append(x_t.clone())
        return torch.zeros_like(x_t)

    l_plain, _ = diffusion_loss(net, x0, t, eps, tables)
    l_zero, _ = diffusion_loss(net, x0, t, eps, tables, xi=xi, ip_gamma=0.0)
    l_ip, _ = diffusion_loss(net, x0, t, eps, tables, xi=xi, ip_gamma=0.1)
    assert torch.equal(seen[0], seen[1]) and torch.equal(l_plain, l_zero)
    sa, s1 = tables["sqrt_ab"][t].reshape(-1, 1, 1, 1), tables["sqrt_1mab"][t].reshape(-1, 1, 1, 1)
    want = sa * x0 + s1 * (eps + 0.1 * xi)
    # float32 both ways: γξ, ε + γξ, the two products and the sum (5 roundings a side) on terms of their size
    torch.testing.assert_close(seen[2], want, rtol=0, atol=tol(F32, mag(sa * x0) + mag(s1 * (eps + 0.1 * xi)), 10))
    assert torch.equal(l_ip, l_plain)  # the target is ε either way (the zero net's loss is ‖ε‖²)


def test_ip_recipe_copies_the_base_options():
    cfg = {"training": {"options": TrainConfig(steps=80000, keep_every=10000).to_dict(), "step": 50000}}
    r = ip_recipe(cfg)
    assert r["ip_gamma"] == 0.1 and r["steps"] == 50000 and r["keep_every"] == 0 and r["lr"] == 1e-3
    cos = {"training": {"options": TrainConfig(steps=80000, lr_schedule="cosine").to_dict(), "step": 50000}}
    with pytest.raises(Exception, match="decaying learning rate"):
        ip_recipe(cos)
    with pytest.raises(Exception, match="no training options"):
        ip_recipe({})


def test_the_report_says_what_the_ip_model_records_not_what_the_recipe_would_be():
    """--ip-model PATH is taken as given: the report used to say 'trained with the same recipe and budget and
    ip_gamma 0.1' for any model, e.g. a 30-step, γ = 0 one."""
    from diffusion_es.experiments.blocks import ip_gamma_text, ip_text
    from diffusion_es.experiments.compare import ip_provenance
    base = {"model": {"width": 64}, "diffusion": {"T": 1000},
            "training": {"options": TrainConfig(steps=80000, keep_every=10000).to_dict(), "step": 50000}}
    twin = {"model": {"width": 64}, "diffusion": {"T": 1000}, "training": {"options": ip_recipe(base), "step": 50000}}
    p = ip_provenance(base, twin)
    assert p == {"ip_gamma": 0.1, "options_differ": [], "steps": 50000, "base_steps": 50000, "same_network": True,
                 "same_diffusion": True}
    assert ip_text("ip", p) == ("the IP model `ip` was trained with ip_gamma 0.1, with the base model's network, "
                                "diffusion, recipe and budget (50000 steps)") and ip_gamma_text(p) == "γ 0.1"
    other = {"model": {"width": 32}, "diffusion": {"T": 1000},
             "training": {"options": TrainConfig(steps=30, lr=2e-3).to_dict(), "step": 30}}
    p = ip_provenance(base, other)
    assert p["ip_gamma"] == 0.0 and p["options_differ"] == ["lr"] and not p["same_network"] and p["same_diffusion"]
    t = ip_text("digits", p)
    assert "ip_gamma 0 (no input perturbation" in t and "training options lr" in t
    assert "30 training steps against 50000" in t and "the network" in t and "same recipe" not in t
    assert ip_gamma_text(p) == "γ 0"
    bare = ip_provenance(base, {"model": {"width": 64}})
    assert bare["ip_gamma"] is None and ip_gamma_text(bare) == "γ ?" and "unknown" in ip_text("x", bare)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    train(root / "model", TrainConfig(data="digits", steps=150, batch_size=64, warmup=10, ckpt_every=1000),
          model=TINY, progress=False)
    cfg = CompareConfig(model=str(root / "model"), ip_model=None, train_ip=True, out=str(root / "out"),
                        steps=[4], edm_nfe=[4], n_samples=40, n_sets=1, n_val_sets=2, coarse=2, refine=0,
                        batch_size=64)
    logs = []
    res = run_compare(cfg, log=logs.append)
    return root, cfg, res, logs


def test_tiny_compare_end_to_end(tiny_run):
    root, cfg, res, logs = tiny_run
    out = root / "out"
    for name in ("compare.md", "compare.html", "results_compare.json"):
        assert (out / name).is_file()
    # the IP twin was trained on request with the base model's recipe and γ = 0.1
    ip = load_model(out / "ip_model")
    assert ip.config["training"]["options"]["ip_gamma"] == 0.1 and ip.config["training"]["step"] == 150
    r = json.loads((out / "results_compare.json").read_text())
    assert {(c["sampler"], c["steps"]) for c in r["cells"]} == {("ddpm", 4), ("ddim", 4), ("euler", 4), ("heun", 3)}
    for c in r["cells"]:
        want = ({"baseline", "ES", "TS", "TS+ES", "IP", "IP+ES"} if c["kind"] == "vp" else
                {"baseline", "ES", "churn", "churn+S_noise", "churn+S_noise+ES"})
        assert set(c["methods"]) == want
        base = c["methods"]["baseline"]["val"]
        for m in c["methods"].values():
            assert len(m["val"]) == 2 and all(math.isfinite(v) for v in m["val"])
            # every gain is paired against the same baseline values
            assert m["gain"] == pytest.approx(sum(b / a - 1 for a, b in zip(base, m["val"])) / 2)
        if c["kind"] == "vp":
            assert c["ts_window1_equals_baseline"] is True
            assert c["methods"]["TS"]["param"]["window"] >= 3
        else:
            assert c["methods"]["churn+S_noise"]["param"]["S_churn"] > 0
    md = (out / "compare.md").read_text()
    assert md.startswith("# Exposure-bias fixes compared") and "| method |" in md and "TS+ES" in md
    assert r["ip_provenance"]["ip_gamma"] == 0.1 and r["ip_provenance"]["options_differ"] == []
    assert "was trained with ip_gamma 0.1, with the base model's network, diffusion, recipe and budget" in md
    blocks = compare_blocks(res)
    assert blocks[0][0] == "h2" and all(b[0] in ("h2", "h3", "p", "table", "img") for b in blocks)
    assert any(b[0] == "table" and b[1][0][0] == "method" for b in blocks)


def test_tiny_compare_resumes_from_parts(tiny_run):
    root, cfg, res, logs = tiny_run
    parts = sorted(p.name for p in (root / "out" / "parts").iterdir())
    again = []
    res2 = run_compare(cfg, log=again.append)
    assert len(again) == len(logs) - 1 and all("(cached)" in m for m in again)  # minus the IP training line
    assert sorted(p.name for p in (root / "out" / "parts").iterdir()) == parts
    assert res2["cells"] == res["cells"]
    # the cost reported is that of the parts, not of this (cached) invocation
    assert res["parts_from_cache"] == 0 and res2["parts_from_cache"] == res2["parts"] == res["parts"] == len(parts)
    assert res2["compute_time_s"] == res["compute_time_s"] > 0
    assert "Compute time of all parts" in (root / "out" / "compare.md").read_text()


def test_compare_bad_input(capsys):
    assert main(["compare", "--steps", "ten"]) == 2
    assert main(["compare", "--samplers", "ddpm,foo"]) == 2
    assert main(["compare", "--samples", "3"]) == 2
    # a row or column named twice ran (and was tabled) twice
    assert main(["compare", "--quick", "--steps", "10,10"]) == 2
    assert main(["compare", "--quick", "--samplers", "ddim,ddim"]) == 2
    assert main(["compare", "--quick", "--edm-samplers", "heun,heun"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("diffusion-es: error:") for line in err)
    assert all("twice" in line for line in err[3:])


def test_compare_says_what_fits_a_flow_or_pfgm_model(tmp_path, capsys):
    """A flow model has none of compare's fixes; a PFGM++ model only its EDM rows: one line each, no dead end."""
    assert main(["compare", "--quick", "--model", "digits-flow", "--out", str(tmp_path / "f")]) == 2
    assert main(["compare", "--quick", "--model", "digits-pfgm", "--samplers", "ddpm", "--out", str(tmp_path / "p")]) == 2
    assert main(["compare", "--quick", "--samplers", "none", "--edm-samplers", "none", "--out", str(tmp_path / "n")]) == 2
    assert main(["compare", "--quick", "--train-ip", "--ip-model", "some/ip", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "--train-ip trains an IP model when none is given" in err[3]
    assert "rectified-flow model: measure ES on it with repro or calibrate" in err[0]
    assert "leave --samplers out or pass --samplers none" in err[1]
    assert "no rows to compare" in err[2]


def test_an_ip_twin_of_another_model_is_not_reused(tiny_run):
    """compare --train-ip into an --out whose ip_model/ was trained for another base model used to reuse it whenever
    the step counts matched (with the report saying "same recipe")."""
    import copy
    from types import SimpleNamespace

    from diffusion_es.errors import UsageError
    from diffusion_es.experiments.compare import _train_ip

    root, cfg, res, logs = tiny_run
    base = load_model(root / "model")
    assert _train_ip(base, root / "out", "cpu", print) == root / "out" / "ip_model"  # its own: reused
    for change in (lambda c: c["training"]["options"].update(seed=5), lambda c: c["model"].update(width=16),
                   lambda c: c["training"]["options"].update(data="toy:moons")):
        other = copy.deepcopy(base.config)
        change(other)
        with pytest.raises(UsageError, match="holds the IP twin of another model"):
            _train_ip(SimpleNamespace(config=other, path="other"), root / "out", "cpu", print)
