"""The demo command: ES on an analytic model, end to end through the CLI."""

import json

from diffusion_es.cli import main


def test_demo_json(capsys):
    assert main(["demo", "--steps", "10", "--seeds", "0-299", "--eps-error", "1.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["sampler"]: r for r in out["results"]}
    assert set(rows) == {"ddpm", "ddim", "euler", "heun"}
    for r in rows.values():
        assert r["lambda1_bit_identical"] is True
        # ES with λ = c turns the flawed model into the ideal one, exactly (up to rounding)
        assert r["es_equals_ideal_model"] < 1e-9
    # on the deterministic samplers the flaw is visible and ES removes it
    for s in ("ddim", "euler"):
        assert rows[s]["swd_es"] < rows[s]["swd_baseline"]


def test_demo_bad_input(capsys):
    assert main(["demo", "--eps-error", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --eps-error: '-1': give a number > 0" in err[0]
