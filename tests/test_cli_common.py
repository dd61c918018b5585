"""Option parsing shared by the subcommands."""

import pytest

from diffusion_es.cli import OneLineParser, main
from diffusion_es.cli.common import add_es_args, es_from_args, parse_int_list, parse_seeds
from diffusion_es.errors import UsageError
from diffusion_es.core.scaling import Linear, Uniform, save_schedule


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds(" 5 ") == [5]
    for bad, msg in [("-5", "bad --seeds"), ("3-1", "bad --seeds"), ("x", "bad --seeds"), ("1,1", "repeats"),
                     ("", "empty")]:
        with pytest.raises(UsageError, match=msg):
            parse_seeds(bad)


def test_parse_int_list():
    assert parse_int_list("10,20, 50", "--nfe") == [10, 20, 50]
    with pytest.raises(UsageError, match="--nfe 'ten'"):
        parse_int_list("ten", "--nfe")


def _es(argv):
    p = OneLineParser(prog="t")
    add_es_args(p)
    return es_from_args(p.parse_args(argv))


def test_es_options(tmp_path):
    assert _es([]) is None
    assert _es(["--es", "1.01"]) == Uniform(1.01)
    assert _es(["--es-linear", "0.0025,1.0"]) == Linear(0.0025, 1.0)
    save_schedule(tmp_path / "l.json", Linear(0.001, 1.0), note="x")
    assert _es(["--es-schedule", str(tmp_path / "l.json")]) == Linear(0.001, 1.0)
    with pytest.raises(UsageError, match="no such"):
        _es(["--es-schedule", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit):  # refused at parse time
        _es(["--es-linear", "1"])


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc"])
def test_bad_numbers_are_refused_at_parse_time_in_one_line(value, capsys):
    with pytest.raises(SystemExit) as e:
        _es(["--es", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffusion-es: error: argument --es:") and "t --help" in err[0]


def test_threads_option_is_applied_once_for_every_command(tmp_path, capsys):
    import torch

    from diffusion_es.cli import main

    m = tmp_path / "m"
    assert main(["train", "--data", "toy:moons", "--out", str(m), "--steps", "2", "--width", "8", "--blocks", "1",
                 "--threads", "2", "--no-progress"]) == 0
    assert torch.get_num_threads() == 2  # (conftest puts the suite's setting back after the test)
    assert main(["sample", "--model", str(m), "--sampler", "euler", "--steps", "2", "--seeds", "0-3",
                 "--out", str(tmp_path / "s.npz"), "--threads", "-1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("diffusion-es: error: argument --threads: '-1': give a whole number >= 0")
    # every command that runs a network takes it (calibrate ran on all cores with no way to say otherwise)
    from diffusion_es.cli import build_parser

    parser = build_parser()
    for argv in (["calibrate"], ["measure"], ["fid", "s.npz", "--ref", "r.npz"], ["fid-ref", "--data", "digits",
                 "--out", "r.npz"], ["sample", "--seeds", "0-1", "--out", "s.npz"], ["repro"], ["compare"],
                 ["train", "--out", "m"], ["train-features", "--out", "f"]):
        assert parser.parse_args([*argv, "--threads", "1"]).threads == 1, argv


def test_a_lambda_far_from_one_is_run_with_a_note(tmp_path, capsys):
    """λ is the user's choice (the MNIST model's best is below 1), so an absurd one is run, not refused, but said:
    `sample --es 1e-10` gave all-black/white images with nothing on stderr."""
    base = ["sample", "--model", "default", "--sampler", "ddim", "--steps", "3", "--seeds", "0-1", "--no-progress"]
    for flag, note in ((["--es", "1e-10"], "λ from 1e-10 to 1e-10"), (["--es-linear", "0,5"], "λ from 5 to 5"),
                       (["--es", "1.02"], None), (["--es-linear=-0.3,1.2"], None)):
        assert main([*base, *flag, "--out", str(tmp_path / "s.npz")]) == 0
        err = capsys.readouterr().err
        if note:
            assert f"note: {flag[0].split('=')[0]} gives {note}, far from 1" in err and err.count("note:") == 1, err
        else:
            assert "note:" not in err, err
    import argparse

    ns = argparse.Namespace(es=1e-10, es_linear=None, es_schedule=None, es_adapt=None, sampler="ddim", steps=3,
                            spacing="adm")
    es_from_args(ns, quiet=True)  # the other ranks of a torchrun launch: the note once, from rank 0
    assert "note:" not in capsys.readouterr().err
    es_from_args(ns)
    assert "note:" in capsys.readouterr().err


def test_help_texts_are_plain_text(capsys):
    """Descriptions built from module docstrings showed reStructuredText (``diffusion-es calibrate``:, :func:`x`),
    repro --help named an internal issue number and train's empty default read '(default )'."""
    from diffusion_es.cli import main

    for command in ("sample", "fid", "fid-ref", "calibrate", "measure", "demo", "train", "train-features", "export",
                    "repro", "compare"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and ":mod:" not in text, command
        assert "(issue" not in text and "(default )" not in text, command
    from diffusion_es.core.scaling import Linear, Uniform
    assert repr(Uniform(1.1300000000000001)) == "Uniform(b=1.13)"  # (calibrate's summary line printed the repr)
    assert repr(Linear(k=0.1 + 0.2, b=0.8299999999999998)) == "Linear(k=0.3, b=0.83)"
