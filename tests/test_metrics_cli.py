"""`diffusion-es fid-ref` and `diffusion-es fid` end to end through diffusion_es.cli.main.

The commands' feature network runs in float64 here (``_float64_features``): the same images then give features
that differ only by the order the sums run in, which ``reorder_bound`` bounds, so the distances between them
have a bound too (a float32 network's reordering has none that is useful)."""

import json

import numpy as np
import pytest

from diffusion_es.cli import main
from diffusion_es.data import load_digits
from diffusion_es.io import save_npz, to_uint8
import diffusion_es.metrics.features as features_module
from diffusion_es.metrics.features import _to_grey_float, extract, extract_stats

from _tol import fd_rounding_tol, float64_extractor, reorder_bound, stats_tols


@pytest.fixture(scope="module", autouse=True)
def _float64_features():
    with pytest.MonkeyPatch.context() as m:
        orig = features_module.get_extractor
        m.setattr(features_module, "get_extractor",
                  lambda name, **kw: float64_extractor(name, **kw) if name in ("digits", "mnist") else orig(name, **kw))
        yield


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("refs")
    assert main(["fid-ref", "--data", "digits", "--split", "heldout", "--out", str(d / "held.npz")]) == 0
    return d


def test_fid_against_reference_json(refs, tmp_path, capsys):
    save_npz(tmp_path / "train.npz", to_uint8(load_digits("train")))
    capsys.readouterr()
    assert main(["fid", str(tmp_path / "train.npz"), "--ref", str(refs / "held.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "FD-digits" and out["n_samples"] == 1437 and out["fd_method"] == "sqrtm"
    assert 0 < out["fd"] < 60
    assert out["reference"]["split"] == "heldout" and out["reference"]["count"] == 360
    assert 0.5 < out["precision"] <= 1 and 0.5 < out["recall"] <= 1 and out["k"] == 3
    # identical images as PNG folder: FD 0, precision = recall = 1
    from PIL import Image

    png = tmp_path / "png"
    png.mkdir()
    for i, im in enumerate(to_uint8(load_digits("heldout"))):
        Image.fromarray(im[:, :, 0]).save(png / f"{i:05d}.png")
    assert main(["fid", str(png), "--ref", str(refs / "held.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    # the same images: features within the reordering bound, so the distance within what that allows
    u = to_uint8(load_digits("heldout"))
    ex = float64_extractor()
    stats, _ = extract_stats(ex, u, progress=False)
    assert abs(out["fd"]) <= stats_tols(reorder_bound(ex.model, _to_grey_float(u)), extract(ex, u), stats.cov)[2]


def test_fid_ref_from_npz_and_text_output(refs, tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 8, 8, 1), dtype=np.uint8)
    save_npz(tmp_path / "noise.npz", noise)
    assert main(["fid-ref", "--data", str(tmp_path / "noise.npz"), "--out", str(tmp_path / "n.npz")]) == 0
    capsys.readouterr()
    assert main(["fid", str(tmp_path / "noise.npz"), "--ref", str(refs / "held.npz")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("FD-digits ") and float(text.split()[1]) > 500
    assert "precision" in text



def test_fewer_samples_than_feature_dimensions_get_a_note(refs, tmp_path, capsys):
    """FD from n <= d samples (singular covariance) is allowed but says what it is worth, on stderr only."""
    u = to_uint8(load_digits("train"))
    for n, noted in ((40, True), (300, False)):
        save_npz(tmp_path / f"s{n}.npz", u[:n])
        capsys.readouterr()
        assert main(["fid", str(tmp_path / f"s{n}.npz"), "--ref", str(refs / "held.npz"), "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["n_samples"] == n
        assert ("note: 40 samples for 128-d features" in err) is noted, err
    # a reference of no more images than dimensions is said too
    assert main(["fid-ref", "--data", str(tmp_path / "s40.npz"), "--out", str(tmp_path / "r40.npz")]) == 0
    capsys.readouterr()
    assert main(["fid", str(tmp_path / "s300.npz"), "--ref", str(tmp_path / "r40.npz"), "--no-pr"]) == 0
    assert "note: 40 reference images for 128-d features" in capsys.readouterr().err

@pytest.mark.parametrize("argv, msg", [
    (["fid", "{tmp}/missing.npz", "--ref", "{refs}/held.npz"], "no such file"),
    (["fid", "{tmp}/s.npz", "--ref", "{tmp}/missing_ref.npz"], "does not exist"),
    (["fid", "{tmp}/s.npz", "--ref", "{refs}/held.npz", "--features", "mnist"], "'digits' feature network"),
    (["fid", "{tmp}/s.npz", "--ref", "{tmp}/foreign.npz"], "no provenance"),
    (["fid", "{tmp}/bad.npz", "--ref", "{refs}/held.npz"], "arr_0"),
    (["fid-ref", "--data", "toy:moons", "--out", "{tmp}/t.npz"], "not images"),
    (["fid-ref", "--data", "{tmp}/s.npz", "--split", "heldout", "--out", "{tmp}/t.npz"], "no held-out"),
    (["fid-ref", "--data", "digits", "--features", "inception", "--out", "{tmp}/t.npz"], "Inception"),
    (["fid-ref", "--data", "digits", "--features", "mnist", "--out", "{tmp}/t.npz"], "classifier of 28x28 images"),
    (["fid", "{tmp}/rgb28.npz", "--ref", "{refs}/held.npz"], "28x28x1 images (H x W x C; grey, stored as 3 equal"),
    # the user's own path is missing: say so (it said "reinstall diffusion-es")
    (["fid", "{tmp}/s.npz", "--ref", "{refs}/held.npz", "--feature-weights", "{tmp}/nosuch.safetensors"],
     "nosuch.safetensors: no such file (digits feature classifier weights (--feature-weights))"),
])
def test_bad_input_exits_2_with_one_line(refs, tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.delenv("DIFFUSION_ES_INCEPTION", raising=False)
    save_npz(tmp_path / "s.npz", to_uint8(load_digits("heldout"))[:10])
    np.savez(tmp_path / "foreign.npz", mu=np.zeros(128), sigma=np.eye(128))
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 8, 8, 1), np.uint8))
    save_npz(tmp_path / "rgb28.npz", np.zeros((3, 28, 28, 3), np.uint8))
    argv = [a.format(tmp=tmp_path, refs=refs) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffusion-es: error:") and "\n" not in err and msg in err, err
    assert not (tmp_path / "t.npz").exists()


def test_eig_method_agrees(refs, tmp_path, capsys):
    save_npz(tmp_path / "train.npz", to_uint8(load_digits("train")))
    vals = []
    for m in ("sqrtm", "eig"):
        capsys.readouterr()
        assert main(["fid", str(tmp_path / "train.npz"), "--ref", str(refs / "held.npz"), "--json", "--no-pr",
                     "--method", m]) == 0
        out = json.loads(capsys.readouterr().out)
        assert "precision" not in out
        vals.append(out["fd"])
    # two float64 computations of the root term, each within its rounding bound (the statistics the command used)
    ex = float64_extractor()
    a, b = (extract_stats(ex, to_uint8(load_digits(s)), progress=False)[0] for s in ("train", "heldout"))
    assert abs(vals[0] - vals[1]) <= 2 * fd_rounding_tol(a.cov, b.cov)


@pytest.mark.parametrize("argv,out_name", [
    (["fid-ref", "--data", "digits", "--no-progress"], "ref.npz"),
    (["train-features", "--data", "digits", "--no-progress"], "f.safetensors")])
def test_a_second_writer_of_a_reference_or_feature_network_is_refused(tmp_path, capsys, argv, out_name):
    """fid-ref and train-features hold the output lock like every other writer: two runs on one output were
    last-writer-wins, and train-features writes two files (weights and card) that must come from one run."""
    from diffusion_es.store import output_lock

    out = tmp_path / out_name
    with output_lock(out):  # another process writing it (flock: also held against this process)
        assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another diffusion-es process is writing this output now" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
