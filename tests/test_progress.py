"""Progress on every long command (issue 17 item 3): the library reports work (diffusion_es.progress), the CLI
shows one tqdm bar with an ETA on stderr; ``--no-progress`` on every command; ``--json`` stdout stays parseable
while the bar is shown."""

import argparse
import json

import pytest

from diffusion_es import progress
from diffusion_es.cli import build_parser, main


def test_meter_counts_outer_tasks_once_and_settles_to_the_work_done():
    seen = []
    m = progress.Meter(lambda done, total: seen.append((done, total)))
    assert not progress.active()
    with progress.tracking(m):
        assert progress.active()
        with progress.task(100):          # e.g. a calibration announcing its search
            assert m.total == 100
            with progress.task(40):       # a sample() call inside it: not counted again
                progress.advance(40)
            assert m.total == 100 and m.done == 40
            progress.advance(80)          # more than announced: never above 100 %
            assert m.total == 120
        assert (m.done, m.total) == (120, 120)
        with progress.task(50):           # less than announced: settles to what was done
            progress.advance(10)
        assert (m.done, m.total) == (130, 130)
        progress.advance(5)               # outside any task
    assert (m.done, m.total) == (135, 135) and seen[-1] == (135, 135)
    progress.advance(3)                   # nobody listening: nothing happens
    assert m.done == 135


def test_sampling_and_calibration_report_to_the_meter():
    from diffusion_es.core.analytic import GaussianDenoiser
    from diffusion_es.diagnostics.calibrate import calibrate
    from diffusion_es.samplers import sample

    den = GaussianDenoiser((2,), std=0.5)
    totals = []
    m = progress.Meter(lambda done, total: totals.append((done, total)))
    with progress.tracking(m):
        sample(den, "ddim", 3, (2,), range(10), batch_size=4)
    assert totals[0] == (0, 10) and totals[-1] == (10, 10) and [d for d, _ in totals[1:4]] == [4, 8, 10]

    def metric(x):
        return float(((x.std(dim=0) - 0.5) ** 2).sum())

    m = progress.Meter(lambda done, total: totals.append((done, total)))
    totals.clear()
    with progress.tracking(m):
        calibrate(den, "ddim", 3, (2,), metric, n_samples=6, n_sets=1, n_val_sets=2, coarse=3, refine=1,
                  max_extend=0)
    first_total = totals[0][1]
    assert first_total == (3 + 2 * 1) * 6 + 2 * 2 * 6  # the search and the validation, announced up front
    assert all(t >= d for d, t in totals) and totals[-1][0] == totals[-1][1] == m.done > 0


def _required(cmd: str) -> list:
    return {"sample": ["--out", "x.npz"], "train": ["--out", "o"], "fid": ["s.npz", "--ref", "r.npz"],
            "fid-ref": ["--data", "digits", "--out", "r.npz"], "train-features": ["--out", "c.safetensors"],
            "export": ["--model", "m", "--out", "e"]}.get(cmd, [])


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sorted(sub.choices)


def test_no_progress_is_accepted_by_every_command():
    parser, commands = _commands()
    assert {"sample", "train", "measure", "calibrate", "fid", "fid-ref", "repro", "compare", "demo", "export",
            "train-features"} <= set(commands)
    for cmd in commands:
        args = parser.parse_args([cmd, *_required(cmd), "--no-progress"])
        assert args.no_progress is True, cmd
        assert parser.parse_args([cmd, *_required(cmd)]).no_progress is False, cmd


def test_json_is_accepted_by_every_command():
    """The README says every command has --json."""
    parser, commands = _commands()
    for cmd in commands:
        assert parser.parse_args([cmd, *_required(cmd), "--json"]).json is True, cmd


@pytest.fixture
def bar_at_once(monkeypatch):
    """Bars appear after a delay (quick commands print none); show them at once and on every update here."""
    import diffusion_es.cli.common as common

    monkeypatch.setattr(common, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # (stderr is not a terminal under pytest)


def test_json_stdout_stays_parseable_while_the_bar_is_shown(bar_at_once, tmp_path, capsys):
    lam = tmp_path / "lam.json"
    assert main(["calibrate", "--model", "default", "--sampler", "ddim", "--steps", "2", "--n", "12", "--sets", "1",
                 "--val-sets", "2", "--coarse", "2", "--refine", "0", "--extend", "0", "--batch-size", "6",
                 "--out", str(lam), "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)  # the whole of stdout is the JSON document
    assert r["sampler"] == "ddim" and r["n_samples"] == 12
    assert "calibrate ddim-2" in err and ("sample/s" in err or "s/sample" in err)  # the bar, on stderr
    assert "{" not in err  # nothing of the JSON went to stderr
    assert main(["sample", "--model", "default", "--sampler", "ddim", "--steps", "2", "--seeds", "0-7",
                 "--batch-size", "4", "--out", str(tmp_path / "s.npz"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 8 and "img" in err
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(tmp_path / "r.npz"),
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["count"] == 360 and "digits features" in err


def test_no_progress_prints_no_bar(bar_at_once, tmp_path, capsys):
    assert main(["sample", "--model", "default", "--sampler", "ddim", "--steps", "2", "--seeds", "0-3",
                 "--out", str(tmp_path / "s.npz"), "--json", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 4 and err == ""


def test_demo_announces_its_whole_work_at_once(monkeypatch):
    """The demo samples 4 runs per sampler: its bar's total is all of it from the start (it grew run by run)."""
    import diffusion_es.cli.common as common

    seen = []
    real = common.progress_bar

    def spy(*a, **kw):
        bar = real(*a, **kw)
        orig = bar.update

        def update(n=1):
            seen.append((bar.n + n, bar.total))
            return orig(n)

        bar.update = update
        return bar

    monkeypatch.setattr(common, "progress_bar", spy)
    assert main(["demo", "--seeds", "0-9", "--steps", "3", "--json"]) == 0
    totals = {t for _, t in seen}
    assert len(totals) == 1 and seen[-1][0] == seen[-1][1] == next(iter(totals))


def test_a_quick_command_draws_no_bar(tmp_path, capsys):
    """Bars appear only after PROGRESS_DELAY; a total that changes must not draw one earlier (fid-ref left a stale
    '0%' line that the next output was glued to)."""
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(tmp_path / "r.npz")]) == 0
    assert "features" not in capsys.readouterr().err


def test_the_human_summary_goes_to_stdout_for_every_command_that_writes_one(tmp_path, capsys):
    """One rule for every command: the human summary line on stdout (like --json's document), progress and notes on
    stderr (sample and train used to print theirs to stderr, measure / fid / calibrate / demo / export to stdout)."""
    ref = tmp_path / "r.npz"
    runs = {
        "sample": (["sample", "--model", "default", "--sampler", "ddim", "--steps", "2", "--seeds", "0-3",
                    "--out", str(tmp_path / "s.npz")], "wrote 4 samples"),
        "train": (["train", "--data", "toy:moons", "--out", str(tmp_path / "m"), "--steps", "2", "--width", "8",
                   "--blocks", "1"], "trained 2 steps"),
        "fid-ref": (["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(ref)], "wrote "),
        "fid": (["fid", str(tmp_path / "s.npz"), "--ref", str(ref)], "FD-digits"),
    }
    for cmd, (argv, line) in runs.items():
        assert main([*argv, "--no-progress"]) == 0, cmd
        out, err = capsys.readouterr()
        assert line in out and line not in err, (cmd, out, err)


def test_a_bar_written_to_a_file_is_refreshed_rarely(monkeypatch, tmp_path, capsys):
    """On a terminal the bar redraws in place; in a log file (a batch job's stderr) every refresh stays, so there
    the bar is refreshed at most every LOG_INTERVAL seconds: one sample run of 12 batches leaves a few refreshes,
    not one per batch."""
    import io

    import diffusion_es.cli.common as common

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.bar_interval(Tty()) == 0.1 and progress.bar_interval(Tty(), terminal=0.5) == 0.5
    assert progress.bar_interval(io.StringIO()) == progress.LOG_INTERVAL == 30.0
    closed = io.StringIO()
    closed.close()
    assert progress.bar_interval(closed) == progress.LOG_INTERVAL and progress.bar_interval(object()) == 30.0

    monkeypatch.setattr(common, "PROGRESS_DELAY", 0.0)
    run = ["sample", "--model", "default", "--sampler", "ddim", "--steps", "2", "--seeds", "0-23", "--batch-size",
           "2"]
    assert main([*run, "--out", str(tmp_path / "a.npz")]) == 0
    few = capsys.readouterr().err.count("\r")
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    assert main([*run, "--out", str(tmp_path / "b.npz")]) == 0
    many = capsys.readouterr().err.count("\r")
    assert few <= 4 and many >= 12, (few, many)
