"""`diffusion-es repro --quick` end to end on the shipped model: outputs exist, parse, and satisfy invariants."""

import json
import math

import pytest

from diffusion_es.cli import main


# the quick profile with fewer rows, columns and samples: every stage runs (power pilot, calibration, validation,
# the linear schedule, exposure curves, report), in a fraction of the quick profile's time
SMALL = ["--quick", "--samplers", "ddpm,euler", "--nfe", "6,10", "--samples", "80"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    assert main(["repro", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_quick_repro_outputs_and_invariants(quick_run):
    out = quick_run
    for name in ("report.md", "report.html", "results.json", "lambda_curves.png", "lambda_vs_steps.png",
                 "exposure_ddpm.png"):  # exposure curves for the VP rows run (here ddpm)
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["quick"] is True
    cells = {(c["sampler"], c["nfe_cell"]) for c in r["table"]}
    assert r["config"]["samplers"] == ["ddpm", "euler"] and r["config"]["nfe"] == [6, 10]
    assert cells == {(s, n) for s in ("ddpm", "euler") for n in (6, 10)}
    for c in r["table"]:
        # λ = 1 through the ES wrapper equals the baseline exactly; spreads are finite
        assert c["lambda1_equals_baseline"] is True and c["lambda1_metric"] == c["baseline_val"][0]
        assert all(math.isfinite(v) for v in c["gain_ci"]) and math.isfinite(c["gain"])
        assert len(c["baseline_val"]) == len(c["best_val"]) == r["config"]["n_val_sets"]
        assert c["gain"] == pytest.approx(sum(b / a - 1 for a, b in zip(c["baseline_val"], c["best_val"]))
                                          / len(c["best_val"]))
        if not c["significant"]:
            assert c["schedule"] is None
    assert {cl["reproduced"] for cl in r["claims"]} <= {True, False, None}
    assert any("λ = 1 reproduces the baseline" in cl["claim"] and cl["reproduced"] for cl in r["claims"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    md = (out / "report.md").read_text()
    assert "![" in md and "| sampler |" in md
    # the primary metric is measured against data the model never saw; the power calculation chose the sets
    assert r["metric"].endswith("vs heldout") and r["data"] == "digits"
    p = r["power"]
    assert p["n_val_sets"] == r["config"]["n_val_sets"] and p["sets_needed"] >= 2 and p["sd_paired"] > 0
    assert "Power:" in md and f"**{p['n_val_sets']} validation sets**" in md
    # the linear schedule is checked on the same measures (FD vs train, precision/recall, copying) as the cells
    for lin in r["linear"]:
        assert set(lin["extra_val"]) == set(r["table"][0]["extra_val"]) == {"fd_train", "nn_dist_train",
                                                                          "precision", "recall", "kid_x1000"}
        assert all(0 <= v <= 1 for v in lin["extra_val"]["recall"]["best"])
    assert "P, R (baseline → linear)" in md and "What the linear schedule does" in md
    # no 20-NFE column here: the exposure curves use the column nearest to it (10) and the λ calibrated there,
    # and the report says which (it once measured at λ 1.01 and 20 steps and called that "calibrated")
    cell = next(c for c in r["table"] if (c["sampler"], c["nfe_cell"]) == ("ddpm", 10))
    es = r["exposure"]["ddpm"]["es"]
    assert es["steps"] == cell["steps"] == r["exposure"]["ddpm"]["baseline"]["steps"] and es["es"] == cell["candidate"]
    assert "calibrated in the 10-NFE cell" in md and "'kind'" not in md


def test_exposure_cell_and_its_label():
    from diffusion_es.experiments.common import exposure_cell, exposure_es_text
    table = [{"sampler": "ddpm", "nfe_cell": n, "steps": n, "candidate": {"kind": "uniform", "b": 1 + n / 1000}}
             for n in (10, 30, 50)] + [{"sampler": "ddim", "nfe_cell": 20, "steps": 20,
                                       "candidate": {"kind": "uniform", "b": 1.02}}]
    assert exposure_cell(table, "ddpm")["nfe_cell"] == 30  # 10 and 30 tie: the larger NFE
    assert exposure_cell(table, "ddim")["nfe_cell"] == 20
    assert exposure_es_text(table, "ddpm", {"steps": 30, "es": {"kind": "uniform", "b": 1.03}}) == \
        "uniform λ 1.0300, calibrated in the 30-NFE cell"
    # a λ no cell chose at that step count is not called calibrated
    assert exposure_es_text(table, "ddpm", {"steps": 20, "es": {"kind": "uniform", "b": 1.01}}) == \
        "uniform λ 1.0100 (not calibrated)"


@pytest.mark.slow
def test_rerun_resumes_from_finished_parts(quick_run, capsys):
    parts = sorted(p.name for p in (quick_run / "parts").iterdir())
    assert main(["repro", *SMALL, "--out", str(quick_run)]) == 0
    err = capsys.readouterr().err
    assert err.count("(cached)") == len(parts)
    assert sorted(p.name for p in (quick_run / "parts").iterdir()) == parts
    r = json.loads((quick_run / "results.json").read_text())
    assert r["parts_from_cache"] == r["parts"] == len(parts) and r["compute_time_s"] > 0


def test_min_lambda_keeps_the_papers_es_and_its_own_parts(tmp_path, capsys):
    """``--min-lambda 1``: every calibrated λ is at least 1, the report says so, and the parts of a run without the
    floor are not taken for it (nor the other way round)."""
    out = tmp_path / "r"
    tiny = ["--quick", "--samplers", "ddim", "--nfe", "4", "--samples", "20", "--seeds", "2", "--out", str(out),
            "--no-progress"]
    assert main(["repro", *tiny, "--min-lambda", "1"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["min_lambda"] == 1.0
    assert all(c["candidate"]["b"] >= 1.0 for c in r["table"]) and r["table"]
    assert all(e["schedule"] is None or e["schedule"]["b"] >= 1.0 for c in r["table"] for e in c["evaluations"])
    md = (out / "report.md").read_text()
    assert "--min-lambda 1" in md and "λ_t ≥ 1 at every step" in md
    import shlex  # the provenance line is the command as typed (it lacked --samplers, --nfe, ...), so it reruns
    typed = shlex.join(["repro", *[a for a in tiny if a != "--no-progress"], "--min-lambda", "1"])
    assert f"Generated by `diffusion-es {typed}`" in md
    assert r["hardware"].startswith("CPU ") and f"on {r['hardware']}" in md  # what the compute time was spent on
    capsys.readouterr()
    assert main(["repro", *tiny]) == 0
    cell_line = [ln for ln in capsys.readouterr().err.splitlines() if "ddim 4 steps (4 NFE)" in ln]
    assert len(cell_line) == 1 and "(cached)" not in cell_line[0], cell_line
    assert len(list((out / "parts").glob("cell_ddim_4-*.json"))) == 2


def test_repro_bad_input(capsys):
    assert main(["repro", "--quick", "--nfe", "ten"]) == 2
    assert main(["repro", "--quick", "--samplers", "ddpm,foo"]) == 2
    assert main(["repro", "--quick", "--nfe", "10,10"]) == 2
    assert main(["repro", "--quick", "--samplers", "ddim,ddim"]) == 2  # ran twice: "4 of 4 cells" for 2
    assert main(["repro", "--quick", "--min-lambda", "5"]) == 2  # refused before the power step's sampling
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("diffusion-es: error:") for line in err)
    assert "twice" in err[2] and "twice" in err[3] and "not below the top of the λ search range" in err[4]
    # checked on the rows that run: a PFGM++ model's heun (top 1.02), not the profile's ddpm (top 1.08)
    assert main(["repro", "--quick", "--model", "digits-pfgm", "--min-lambda", "1.025"]) == 2
    assert "heun (0.98–1.02)" in capsys.readouterr().err


@pytest.mark.parametrize("model,rows", [("digits-flow", ["flow_euler", "flow_heun"]), ("digits-pfgm", ["euler", "heun"])])
def test_repro_runs_the_models_own_samplers(model, rows, tmp_path, capsys):
    """A flow or PFGM++ model gets its own samplers as rows (ddpm/ddim cannot sample it); a row that cannot sample
    it is refused in one line, before any work (it was a KeyError traceback for flow_euler)."""
    out = tmp_path / "r"
    assert main(["repro", "--quick", "--model", model, "--samples", "10", "--seeds", "2", "--nfe", "3",
                 "--out", str(out), "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert [c["sampler"] for c in r["table"]] == rows
    assert all(c["lambda1_equals_baseline"] for c in r["table"])
    capsys.readouterr()
    assert main(["repro", "--quick", "--model", model, "--samplers", "ddpm", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--samplers takes {','.join(rows)}" in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_compare_section_joins_the_report(quick_run, tmp_path):
    from pathlib import Path

    from diffusion_es.experiments.blocks import repro_blocks as build_blocks
    from diffusion_es.experiments.report import render_md

    r = json.loads((quick_run / "results.json").read_text())
    r["compare"] = json.loads((Path(__file__).parent.parent / "docs" / "compare" / "results_compare.json").read_text())
    md = render_md(build_blocks(r))
    assert "## Epsilon Scaling and the other fixes for exposure bias" in md


def test_parts_follow_the_reference_files_contents_not_its_name(tmp_path, capsys):
    """A reference .npz remade at the same path (another split) used to serve the old cached cells, with exit 0."""
    ref, out = tmp_path / "R.npz", tmp_path / "r"
    tiny = ["--quick", "--samplers", "ddim", "--nfe", "4", "--samples", "20", "--seeds", "2", "--ref", str(ref),
            "--out", str(out), "--no-progress"]
    cells = []
    for split in ("heldout", "train", "train"):
        assert main(["fid-ref", "--data", "digits", "--split", split, "--out", str(ref), "--no-progress"]) == 0
        capsys.readouterr()
        assert main(["repro", *tiny]) == 0
        cells.append([ln for ln in capsys.readouterr().err.splitlines() if "ddim 4 steps" in ln])
    assert "(cached)" not in cells[1][0] and "(cached)" in cells[2][0], cells  # recomputed for the new file only
    from diffusion_es.experiments.common import file_contents

    (tmp_path / "moons").write_text("a file named like a toy")
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:  # built-in names and toys read no file of the user's: keys of such runs unchanged
        assert file_contents("digits", "heldout", "mnist", "toy:moons", None) == {}
    finally:
        os.chdir(here)
    got = file_contents(str(ref), f"npz:{ref}", str(out / "parts"), f"images:{out / 'parts'}")
    assert len(got) == 4 and got[str(ref)] == got[f"npz:{ref}"]  # files, and folders (a bare path or KIND:PATH)


@pytest.mark.slow
def test_a_rerun_removes_figures_of_samplers_it_did_not_run(quick_run):
    """Figures an earlier repro in the folder made for other samplers go (they sat beside the report as if they
    were its own); `measure`'s exposure_SAMPLERSTEPS.png and other files in a shared folder stay."""
    out = quick_run
    stale = ["exposure_ddim.png", "exposure_linear_ddim.png", "exposure_heun.png"]
    kept = ["exposure_ddim20.png", "notes.txt"]
    for name in stale + kept:
        (out / name).write_bytes(b"an earlier run's")
    before = (out / "results.json").read_text()
    assert main(["repro", *SMALL, "--out", str(out)]) == 0  # resumes every part: only the report is written again
    for name in stale:
        assert not (out / name).exists(), name
    for name in kept + ["exposure_ddpm.png", "lambda_curves.png"]:
        assert (out / name).is_file(), name
    r0, r1 = json.loads(before), json.loads((out / "results.json").read_text())
    assert r1["table"] == r0["table"] and r1["figures"] == r0["figures"]
    for name in kept:
        (out / name).unlink()
