"""`measure` and `calibrate` end to end on a tiny digits model trained by our own `train` command."""

import json

import pytest

from diffusion_es.core.scaling import schedule_from_dict

from diffusion_es.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "150", "--width", "32", "--blocks", "1",
                 "--no-progress", "--threads", "1"]) == 0
    return out


def test_measure_writes_tables_and_plot(tiny_model, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["measure", "--model", str(tiny_model), "--sampler", "ddpm", "--steps", "6", "--n", "40",
                 "--es", "1.02", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["es"] for r in summary["runs"]] == [None, {"kind": "uniform", "b": 1.02}]
    base = json.loads((out / "exposure_ddpm6_baseline.json").read_text())
    es = json.loads((out / "exposure_ddpm6_es.json").read_text())
    assert len(base["eps_norm_train"]) == 6 and base["lam"] == [1.0] * 6
    assert es["eps_norm_sample_used"] == pytest.approx([r / 1.02 for r in es["eps_norm_sample_raw"]], rel=1e-12)
    assert (out / "exposure_ddpm6.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "exposure_ddpm6_baseline.csv").read_text().count("\n") == 7
    assert set(summary["metric_free_lambda"]) == {"uniform", "linear"}
    # the same setting again without ES: the first run's ES curves are not left beside the new baseline, nor
    # listed as this run's files
    assert main(["measure", "--model", str(tiny_model), "--sampler", "ddpm", "--steps", "6", "--n", "40",
                 "--seed", "1", "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert not (out / "exposure_ddpm6_es.json").exists() and not (out / "exposure_ddpm6_es.csv").exists()
    assert sorted(p.rsplit("/", 1)[-1] for p in again["files"]) == [
        "exposure_ddpm6.png", "exposure_ddpm6_baseline.csv", "exposure_ddpm6_baseline.json",
        "exposure_ddpm6_summary.json"]


def test_calibrate_reports_and_writes_only_a_real_gain(tiny_model, tmp_path, capsys):
    """A found schedule is written for this model and setting; when none beats λ = 1 the file is written without
    one (it used to be left alone, so an older λ file at that path was sampled with, exit 0)."""
    from diffusion_es.experiments.common import weights_id
    from diffusion_es.models import load_model

    lam = tmp_path / "lam.json"
    lam.write_text('{"schedule": {"kind": "uniform", "b": 1.5}}')  # an older run's file at the same path
    assert main(["calibrate", "--model", str(tiny_model), "--sampler", "ddim", "--steps", "4", "--n", "30",
                 "--sets", "2", "--val-sets", "2", "--coarse", "3", "--refine", "1", "--extend", "0",
                 "--range", "0.99,1.03", "--out", str(lam), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["metric"] == "FD-digits vs heldout" and r["nfe"] > 0  # data the model never saw, by default
    assert len(r["evaluations"]) >= 3 and r["lam_range_searched"] == [0.99, 1.03]  # --extend 0: inside --range
    saved = json.loads(lam.read_text())
    assert saved["made_for"] == {"sampler": "ddim", "steps": 4, "spacing": "adm",
                                 "weights": weights_id(load_model(tiny_model))}
    use = ["sample", "--sampler", "ddim", "--steps", "4", "--seeds", "0-3", "--es-schedule", str(lam), "--out",
           str(tmp_path / "s.npz")]
    capsys.readouterr()
    if r["significant"]:
        assert saved["schedule"] == r["schedule"]
        assert main([*use, "--model", str(tiny_model)]) == 0
    else:
        assert r["schedule"] is None and saved["schedule"] is None
        assert main([*use, "--model", str(tiny_model)]) == 2
        assert "found no λ that beat the baseline" in capsys.readouterr().err
    # another model (here the shipped one) is refused: λ depends on the model
    saved["schedule"] = {"kind": "uniform", "b": 1.01}
    lam.write_text(json.dumps(saved))
    assert main([*use, "--model", "default"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibrated on another model" in err[0], err


def test_calibrate_min_lambda_searches_the_papers_es_only(tiny_model, capsys):
    assert main(["calibrate", "--model", str(tiny_model), "--sampler", "ddim", "--steps", "4", "--n", "30",
                 "--sets", "1", "--val-sets", "2", "--coarse", "3", "--refine", "1", "--kind", "linear",
                 "--range", "0.9,1.03", "--min-lambda", "1", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["min_lambda"] == 1.0 and r["lam_range_searched"][0] >= 1.0
    for e in r["evaluations"]:
        if e["schedule"] is not None:
            assert min(schedule_from_dict(e["schedule"]).values(4)) >= 1.0, e


@pytest.mark.parametrize("argv,msg", [
    (["calibrate", "--range", "1.1,1.0"], "empty or invalid λ range"),
    (["calibrate", "--min-lambda", "0"], "--min-lambda"),
    (["calibrate", "--range", "0.9,0.99", "--min-lambda", "1"], "--min-lambda 1 is not below the top of the λ range"),
    (["calibrate", "--range", "x"], "--range"),
    (["calibrate", "--extend", "-1"], "--extend"),
    (["measure", "--n", "1"], "argument --n: '1': give a whole number from 2"),
    (["measure", "--data", "toy:moons"], "does not match the model's sample shape"),
    (["calibrate", "--data", "toy:moons"], "shape"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model, argv, msg, capsys):
    assert main(argv + ["--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_calibrate_text_says_no_extension_and_no_spread_when_there_is_none(capsys):
    """--extend 0: the edge note does not speak of an extension; --sets 1: no 'λ spread nan'."""
    assert main(["calibrate", "--sampler", "ddim", "--steps", "2", "--n", "10", "--sets", "1", "--val-sets", "2",
                 "--coarse", "2", "--refine", "0", "--extend", "0", "--range", "0.5,0.6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "even after extending" not in out
    assert "(not extended: max_extend 0)" in out


def test_an_interrupted_calibration_resumes_from_its_scored_candidates(tiny_model, tmp_path, monkeypatch, capsys):
    """calibrate --out keeps each candidate's score on each seed set in OUT.parts/ (it kept nothing: Ctrl-C lost
    the whole search); the rerun samples only what is missing and writes what an uninterrupted run writes."""
    import importlib

    cal_mod = importlib.import_module("diffusion_es.diagnostics.calibrate")  # (a module named like its function)
    argv = ["calibrate", "--model", str(tiny_model), "--sampler", "ddim", "--steps", "3", "--n", "16", "--sets", "2",
            "--val-sets", "2", "--coarse", "3", "--refine", "1", "--extend", "0", "--range", "0.99,1.03",
            "--no-progress"]
    real, calls = cal_mod.sample, []

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(cal_mod, "sample", counting)
    assert main([*argv, "--out", str(tmp_path / "full.json")]) == 0
    total = len(calls)

    def dies(*a, **kw):
        if len(calls) == 5:
            raise KeyboardInterrupt
        return counting(*a, **kw)

    calls.clear()
    monkeypatch.setattr(cal_mod, "sample", dies)
    out = tmp_path / "lam.json"
    assert main([*argv, "--out", str(out)]) == 130
    assert "rerun with the same arguments to continue" in capsys.readouterr().err
    assert len(list((tmp_path / "lam.json.parts").glob("score-*.json"))) == 5 and not out.exists()
    calls.clear()
    monkeypatch.setattr(cal_mod, "sample", counting)
    assert main([*argv, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"resuming: {out}.parts holds 5 score(s) of an interrupted run" in err, err
    assert len(calls) == total - 5  # only what was missing
    assert json.loads(out.read_text()) == json.loads((tmp_path / "full.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.json", "lam.json"]  # the parts are removed
