"""The docs generator runs end to end on tiny settings (the committed docs/ come from it; see scripts/make_docs.py)."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def make_docs():
    return runpy.run_path(str(ROOT / "scripts" / "make_docs.py"))


def test_pfgm_docs_on_tiny_settings(make_docs, tmp_path):
    cal = dict(lam_range=(0.95, 1.10), n_samples=40, n_sets=1, n_val_sets=2, coarse=2, refine=1, batch_size=40)
    make_docs["pfgm_docs"](models=[("digits-edm", "EDM-style")], settings=[("euler", 4)], cal=cal, n_measure=40,
                           out=tmp_path)
    for kind in ("uniform", "linear"):
        r = json.loads((tmp_path / f"calibration_digits-edm_euler4_{kind}.json").read_text())
        assert len(r["baseline_val"]) == len(r["best_val"]) == 2
    text = (tmp_path / "README.md").read_text()
    assert "| EDM-style | euler | 4" in text and (tmp_path / "results.json").is_file()
    assert "| EDM-style | euler | 4 | calibrated linear | " in text  # the fidelity / diversity rows


def test_unknown_part_is_refused():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_docs.py"), "nonsense"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "unknown part(s) ['nonsense']" in p.stderr


def test_mnist_es1_docs_on_tiny_settings(make_docs, tmp_path):
    """The λ ≥ 1 calibration on the MNIST model, tiny: every candidate at or above 1, the table beside the free one."""
    free = {"table": [{"sampler": "ddim", "steps": 3, "baseline_val": [90.0, 95.0], "candidate": {"b": 0.93},
                       "gain": -0.1, "gain_ci": [-0.2, 0.0]}]}
    args = ["--n", "12", "--sets", "1", "--val-sets", "2", "--coarse", "2", "--refine", "0", "--extend", "1",
            "--batch-size", "12", "--min-lambda", "1"]
    make_docs["mnist_es1_docs"](samplers=["ddim"], steps=3, args=args, out=tmp_path, free=free)
    r = json.loads((tmp_path / "calibration_ddim3_min1.json").read_text())
    assert r["min_lambda"] == 1.0 and r["candidate"]["b"] >= 1.0
    assert all(e["schedule"] is None or e["schedule"]["b"] >= 1.0 for e in r["evaluations"])
    text = (tmp_path / "README.md").read_text()
    assert "| ddim | 3 | 92.5 ± " in text and "| λ = 0.9300 |" in text and "--min-lambda 1" in text


@pytest.mark.parametrize("name", ["compare", "compare_mnist"])
def test_committed_compare_reports_are_what_the_code_renders_from_their_results(make_docs, tmp_path, name):
    """The same for docs/compare*/compare.md; the digits one names what its IP model's config.json records."""
    import shutil

    shutil.copytree(ROOT / "docs" / name, tmp_path / name)
    make_docs["rerender_docs"]((name,), root=tmp_path)
    for f in ("compare.md", "compare.html", "results_compare.json"):
        assert (tmp_path / name / f).read_text() == (ROOT / "docs" / name / f).read_text(), f
    if name == "compare":
        md = (tmp_path / name / "compare.md").read_text()
        assert "the IP model `digits_ip` was trained with ip_gamma 0.1, with the base model's network" in md


@pytest.mark.parametrize("name", ["repro", "repro_mnist"])
def test_committed_repro_reports_are_what_the_code_renders_from_their_results(make_docs, tmp_path, name):
    """docs/repro*/report.md is the current report code's rendering of the committed results.json (claims
    included): a change to the claims or tables that was not re-rendered (`make_docs.py rerender`) fails here."""
    import shutil

    shutil.copytree(ROOT / "docs" / name, tmp_path / name)
    make_docs["rerender_docs"]((name,), root=tmp_path)
    for f in ("report.md", "report.html"):
        assert (tmp_path / name / f).read_text() == (ROOT / "docs" / name / f).read_text(), f
    rendered = json.loads((tmp_path / name / "results.json").read_text())
    assert rendered["claims"] == json.loads((ROOT / "docs" / name / "results.json").read_text())["claims"]
