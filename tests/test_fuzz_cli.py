"""Bad input, generated per command (issue 14): every case ends with exit code 2, exactly one line on stderr that
starts ``diffusion-es: error:``, nothing on stdout, no exception out of ``main`` (no traceback) and no file or
folder left behind.

Cases: numeric options (non-finite, negative, zero, fractional, huge, not numbers) of every command; every file
the commands read (sample ``.npz`` and PNG folders, reference statistics, checkpoints' ``config.json`` and
``model.safetensors``, λ schedules, classifier weights, MNIST files, Inception files) truncated at several
offsets, with wrong dtypes / shapes / channels / non-finite values / wrong field types, or of the wrong kind (a
folder where a file is expected and the other way round); outputs that cannot be written as asked. Almost all
of them fail before any work; none samples more than a few steps of a tiny model.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from diffusion_es.cli import main

S_OFFSETS = (0, "half", -16)  # truncation points: bytes kept (negative: all but that many)
BIG = "99999999999999999999"


# ---- fixtures: small valid inputs, and damaged copies of them -------------------------------------------------
def _truncate(src: Path, dst: Path, at) -> None:
    data = src.read_bytes()
    n = len(data) // 2 if at == "half" else (len(data) + at if at < 0 else at)
    dst.write_bytes(data[:n])


def _save_ref(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A folder of inputs; every case runs inside it and must leave it as it was."""
    import torch
    from PIL import Image

    from diffusion_es.core.scaling import Linear, save_schedule
    from diffusion_es.data import load_digits
    from diffusion_es.io import png_name, save_npz, save_png, to_uint8
    from diffusion_es.metrics.features import assets_dir, extract_stats, get_extractor
    from diffusion_es.metrics.reference import save_reference
    from diffusion_es.models import ModelConfig, build_model, diffusion_config, save_checkpoint

    d = tmp_path_factory.mktemp("fuzz")
    digits = to_uint8(load_digits("heldout")[:40])  # (40, 8, 8, 1) uint8
    save_npz(d / "s.npz", digits, seeds=np.arange(40))
    ex = get_extractor("digits")
    stats, kept = extract_stats(ex, digits, keep_features=40, progress=False)
    save_reference(d / "held.npz", stats, ex, "digits", "heldout", features=kept, image_shape=(8, 8, 1))
    (d / "pngs").mkdir()
    for i in range(4):
        save_png(d / "pngs" / png_name(i), digits[i])
    torch.manual_seed(0)
    net = build_model(ModelConfig(width=16, blocks=1))
    save_checkpoint(d / "m", {"model": ModelConfig(width=16, blocks=1).to_dict(), "diffusion": diffusion_config()},
                    ema=net, net=net)
    save_schedule(d / "lam.json", Linear(0.001, 1.0), sampler="ddim", steps=20, spacing="adm")
    shutil.copy(assets_dir() / "digits_cnn.safetensors", d / "cls.safetensors")
    (d / "afile").write_text("not a folder\n")
    (d / "adir").mkdir()
    (d / "adir.npz").mkdir()  # a folder with a file's name

    # truncations
    for at in S_OFFSETS:
        _truncate(d / "s.npz", d / f"s_t{at}.npz", at)
        _truncate(d / "held.npz", d / f"held_t{at}.npz", at)
        _truncate(d / "cls.safetensors", d / f"cls_t{at}.safetensors", at)
        _truncate(d / "lam.json", d / f"lam_t{at}.json", at)
        for part in ("model.safetensors", "config.json"):
            m = d / f"m_{part.split('.')[0]}_t{at}"
            shutil.copytree(d / "m", m)
            _truncate(d / "m" / part, m / part, at)
        p = d / f"pngs_t{at}"
        shutil.copytree(d / "pngs", p)
        _truncate(d / "pngs" / png_name(0), p / png_name(0), at)

    # sample files with the wrong content
    bad_samples = {
        "float": np.zeros((4, 8, 8, 1), np.float32), "uint16": np.zeros((4, 8, 8, 1), np.uint16),
        "flat": np.zeros((4, 64), np.uint8), "five_d": np.zeros((2, 4, 8, 8, 1), np.uint8),
        "rgba": np.zeros((4, 8, 8, 4), np.uint8), "empty": np.zeros((0, 8, 8, 1), np.uint8),
        "zero_width": np.zeros((3, 8, 0, 1), np.uint8), "scalar": np.uint8(3),
    }
    for name, a in bad_samples.items():
        _save_ref(d / f"bad_{name}.npz", {"arr_0": a})
    _save_ref(d / "bad_noarr.npz", {"images": digits})
    with open(d / "bad_npy.npz", "wb") as f:
        np.save(f, digits)
    _save_ref(d / "bad_empty_zip.npz", {})
    (d / "bad_text.npz").write_text("arr_0 = 1\n")
    (d / "bad_pickle.npz").write_bytes(pickle.dumps({"arr_0": digits}))
    import zipfile

    with zipfile.ZipFile(d / "bad_object.npz", "w") as z:  # an object array: loading it would unpickle
        import io as _io

        buf = _io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("arr_0.npy", buf.getvalue())
    _save_ref(d / "s28.npz", {"arr_0": np.zeros((10, 28, 28, 1), np.uint8)})
    _save_ref(d / "s32rgb.npz", {"arr_0": np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)})

    # PNG folders with the wrong content
    (d / "png_empty").mkdir()
    (d / "png_16bit").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint16) + 300).save(d / "png_16bit" / "a.png")
    (d / "png_mixed").mkdir()
    save_png(d / "png_mixed" / "a.png", digits[0])
    save_png(d / "png_mixed" / "b.png", np.zeros((9, 8, 1), np.uint8))
    (d / "png_jpeg").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "png_jpeg" / "a.png", format="JPEG")
    (d / "png_text").mkdir()
    (d / "png_text" / "a.png").write_text("hello")
    (d / "png_mixed_ch").mkdir()
    save_png(d / "png_mixed_ch" / "a.png", digits[0])
    save_png(d / "png_mixed_ch" / "b.png", np.repeat(digits[1], 3, axis=-1))

    # references with a damaged provenance or arrays
    with np.load(d / "held.npz", allow_pickle=False) as z:
        good = {k: z[k] for k in z.files}
    prov = json.loads(str(good["provenance"]))

    def ref(name, **change):
        arrays = dict(good)
        for k, v in change.items():
            if v is None:
                arrays.pop(k)
            else:
                arrays[k] = v
        _save_ref(d / f"ref_{name}.npz", arrays)

    def prov_ref(name, **fields):
        p = json.loads(json.dumps(prov))
        for k, v in fields.items():
            if "." in k:
                a, b = k.split(".")
                p[a][b] = v
            else:
                p[k] = v
        ref(name, provenance=np.array(json.dumps(p)))

    ref("noprov", provenance=None)
    ref("prov_notjson", provenance=np.array("{not json"))
    ref("prov_list", provenance=np.array("[1, 2]"))
    ref("prov_bytes", provenance=np.frombuffer(b"abcd", np.uint8))
    prov_ref("features_str", features="digits")
    prov_ref("dim_str", **{"features.dim": "128"})
    prov_ref("dim_wrong", **{"features.dim": 64})
    prov_ref("name_num", **{"features.name": 7})
    prov_ref("count_neg", count=-5)
    prov_ref("count_float", count=40.0)
    prov_ref("format", format="something-else")
    prov_ref("version", format_version=99)
    prov_ref("dataset_list", dataset=["digits"])
    prov_ref("shape_bad", image_shape="8x8")
    prov_ref("shape_len", image_shape=[8, 8])
    ref("mu_nan", mu=np.full_like(good["mu"], np.nan))
    ref("sigma_shape", sigma=good["sigma"][:5])
    ref("n_array", n=np.array([40, 40]))
    ref("n_float", n=np.array(40.0))
    ref("feats_nan", features=np.full_like(good["features"], np.inf))
    ref("feats_shape", features=good["features"][:, :3])
    ref("no_mu", mu=None)

    # λ schedules with bad content
    for name, obj in {
        "nan": '{"kind": "uniform", "b": NaN}', "neg": '{"kind": "uniform", "b": -1}',
        "zero": '{"kind": "uniform", "b": 0}', "inf": '{"kind": "uniform", "b": Infinity}',
        "kind": '{"kind": "cubic", "b": 1}', "list": "[1.0, 1.01]", "string": '"uniform"', "number": "1.01",
        "per_step_empty": '{"kind": "per_step", "values": []}', "per_step_len": '{"kind": "per_step", "values": [1.0, 1.01]}',
        "b_str": '{"kind": "uniform", "b": "x"}', "no_b": '{"kind": "linear", "k": 0.1}',
        "made_for_bad": '{"schedule": {"kind": "uniform", "b": 1.01}, "made_for": {"sampler": "ddpm", "steps": "many"}}',
        "linear_neg": '{"kind": "linear", "k": -0.5, "b": 1.0}',
        "binary": None,
    }.items():
        p = d / f"lam_{name}.json"
        if obj is None:
            p.write_bytes(b"\xff\xfe\x00garbage")
        else:
            p.write_text(obj)

    # checkpoints with a bad config.json
    for name, change in {"noformat": {"format": None}, "version_str": {"format_version": "one"},
                         "version_list": {"format_version": [1]}, "model_list": {"model": [1]},
                         "width_str": {"model.width": "abc"}, "unknown_key": {"model.colour": "red"},
                         "T_zero": {"diffusion.T": 0}, "pred": {"diffusion.prediction": "score"},
                         "nan_weights": "nan"}.items():
        m = d / f"m_cfg_{name}"
        shutil.copytree(d / "m", m)
        if change == "nan":
            from safetensors.torch import load_file, save_file

            t = load_file(str(m / "model.safetensors"))
            k = next(iter(t))
            t[k] = torch.full_like(t[k], float("nan"))
            save_file(t, str(m / "model.safetensors"), metadata={"format": "diffusion-es/checkpoint"})
            continue
        cfg = json.loads((m / "config.json").read_text())
        for k, v in change.items():
            a, _, b = k.partition(".")
            if b:
                cfg[a][b] = v
            elif v is None:
                cfg.pop(a)
            else:
                cfg[a] = v
        (m / "config.json").write_text(json.dumps(cfg))

    # classifier weights of the wrong kind, MNIST files, an Inception file that is not one
    shutil.copy(d / "m" / "model.safetensors", d / "cls_foreign.safetensors")
    x = (np.arange(5 * 784) % 256).reshape(5, 784).astype(np.float32) / 256.0
    y = np.zeros(5, np.int64)
    (d / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=2)))
    _truncate(d / "mnist.pkl.gz", d / "mnist_t.pkl.gz", "half")
    (d / "mnist_evil.pkl.gz").write_bytes(gzip.compress(pickle.dumps((print, ("pwned",)))))
    _save_ref(d / "mnist_nan.npz", {"x_train": np.full((3, 28, 28), np.nan, np.float32)})
    (d / "incep.pt").write_bytes(b"PK\x03\x04 not really")
    (d / "incep_text.pt").write_text("not a network")
    return d


# ---- the cases -------------------------------------------------------------------------------------------------
def _nums(cmd, opt, values, extra=()):
    return [pytest.param([cmd, *extra, opt, v], id=f"{cmd}{opt}={v}") for v in values]


INT_BAD = ["abc", "1.5", "-1", BIG]
POS_FLOAT_BAD = ["nan", "inf", "-inf", "0", "-1", "abc", "1e999"]
NONNEG_FLOAT_BAD = ["nan", "inf", "-1", "abc"]
S_OUT = ["--out", "o.npz"]
M = ["--model", "m"]

NUMBERS = [
    # sample
    *_nums("sample", "--steps", INT_BAD + ["0"], S_OUT),
    *_nums("sample", "--batch-size", ["0", "abc", BIG], S_OUT),
    *_nums("sample", "--shard-size", ["0", "x"], S_OUT),
    *_nums("sample", "--grid-n", ["0", "1.5"], S_OUT),
    *_nums("sample", "--es", ["nan", "inf", "0", "-1"], S_OUT),
    *_nums("sample", "--es-linear", ["1", "nan,1", "1,inf", "1,2,3"], S_OUT),
    *_nums("sample", "--eta", ["nan", "-1", "1.5"], [*S_OUT, "--sampler", "ddim"]),
    *_nums("sample", "--churn", NONNEG_FLOAT_BAD, [*S_OUT, "--sampler", "euler"]),
    *_nums("sample", "--s-tmin", ["nan", "-1"], [*S_OUT, "--sampler", "euler"]),
    *_nums("sample", "--s-tmax", ["nan", "-1", "abc"], [*S_OUT, "--sampler", "euler"]),
    *_nums("sample", "--s-noise", ["nan", "0", "-1", "inf"], [*S_OUT, "--sampler", "heun"]),
    *_nums("sample", "--threads", ["-1", "100000"], S_OUT),
    *_nums("sample", "--seeds", ["", "3-1", "1,1", "0-99999999999", "9223372036854775808"], S_OUT),
    *_nums("sample", "--device", ["foo", "cuda:99", "cpu:1", ""], S_OUT),
    *_nums("sample", "--sampler", ["dpm"], S_OUT),
    *_nums("sample", "--spacing", ["weird"], S_OUT),
    # train
    *_nums("train", "--steps", ["0", "1.5", BIG], ["--out", "o"]),
    *_nums("train", "--batch-size", ["0", BIG], ["--out", "o"]),
    *_nums("train", "--lr", ["nan", "0", "-1", "inf"], ["--out", "o"]),
    *_nums("train", "--lr-final", ["-1"], ["--out", "o"]),
    *_nums("train", "--ema-decay", ["1", "-0.1", "nan"], ["--out", "o"]),
    *_nums("train", "--dropout", ["1", "nan"], ["--out", "o"]),
    *_nums("train", "--grad-clip", ["-1"], ["--out", "o"]),
    *_nums("train", "--ip-gamma", ["nan"], ["--out", "o"]),
    *_nums("train", "--seed", ["-1", BIG, "9223372036854775808"], ["--out", "o"]),
    *_nums("train", "--width", ["0", BIG], ["--out", "o"]),
    *_nums("train", "--blocks", ["0", "100000"], ["--out", "o"]),
    *_nums("train", "--T", ["0", BIG], ["--out", "o"]),
    *_nums("train", "--toy-n", ["1", BIG], ["--out", "o", "--data", "toy:moons"]),
    *_nums("train", "--channel-mult", ["a", "0"], ["--out", "o", "--arch", "unet"]),
    *_nums("train", "--attention-resolutions", ["x", "-4"], ["--out", "o", "--arch", "unet"]),
    *_nums("train", "--arch", ["transformer"], ["--out", "o"]),
    *_nums("train", "--prediction", ["score"], ["--out", "o"]),
    *_nums("train", "--lr-schedule", ["linear"], ["--out", "o"]),
    # options the run would ignore
    pytest.param(["train", "--out", "o", "--lr-final", "0.5"], id="train-lr-final-without-cosine"),
    pytest.param(["train", "--out", "o", "--lr-schedule", "cosine", "--lr-final", "1"], id="train-lr-final-above-lr"),
    pytest.param(["train", "--out", "o", "--vlb-weight", "0.5"], id="train-vlb-weight-without-learned-variance"),
    pytest.param(["sample", "--out", "o.npz", "--grid-n", "5"], id="sample-grid-n-without-grid"),
    pytest.param(["fid-ref", "--data", "digits", "--out", "r.npz", "--inception", "bad.txt"],
                 id="fid-ref-inception-without-inception-features"),
    pytest.param(["train-features", "--out", "c.safetensors", "--mnist-file", "bad.txt"], id="train-features-mnist-file-digits"),
    *_nums("train", "--beta-schedule", ["sigmoid"], ["--out", "o"]),
    *_nums("train", "--device", ["foo", "cuda:99"], ["--out", "o"]),
    *_nums("train", "--threads", ["100000"], ["--out", "o"]),
    pytest.param(["export", "--out", "exp"], id="export-without-model"),
    # measure
    *_nums("measure", "--n", ["1", BIG], [*M, "--out", "mo"]),
    *_nums("measure", "--seed", ["-1", BIG], [*M, "--out", "mo"]),
    *_nums("measure", "--steps", ["1"], [*M, "--out", "mo"]),
    *_nums("measure", "--es", ["nan", "0"], [*M, "--out", "mo"]),
    # calibrate
    *_nums("calibrate", "--n", ["1", BIG], M),
    *_nums("calibrate", "--sets", ["0", "x"], M),
    *_nums("calibrate", "--val-sets", ["1"], M),
    *_nums("calibrate", "--coarse", ["1", BIG], M),
    *_nums("calibrate", "--refine", ["-1", "1000"], M),
    *_nums("calibrate", "--extend", ["-1"], M),
    *_nums("calibrate", "--range", ["1", "nan,1", "1,inf", "1.1,1.0", "0,1"], M),
    *_nums("calibrate", "--seed", ["-1", BIG], M),
    *_nums("calibrate", "--batch-size", ["0"], M),
    *_nums("calibrate", "--features", ["vgg"], M),
    *_nums("calibrate", "--kind", ["cubic"], M),
    # fid / fid-ref
    *_nums("fid", "--k", ["0", "-1", "abc", BIG], ["s.npz", "--ref", "held.npz"]),
    *_nums("fid", "--batch-size", ["-1", "x"], ["s.npz", "--ref", "held.npz"]),
    *_nums("fid", "--method", ["svd"], ["s.npz", "--ref", "held.npz"]),
    *_nums("fid-ref", "--keep-features", ["-1", BIG], ["--data", "digits", "--out", "r.npz"]),
    *_nums("fid-ref", "--split", ["test"], ["--data", "digits", "--out", "r.npz"]),
    # repro / compare
    *_nums("repro", "--samples", ["5", BIG], ["--out", "ro"]),
    *_nums("repro", "--seeds", ["1", "x"], ["--out", "ro"]),
    *_nums("repro", "--nfe", ["1", "10,,x"], ["--out", "ro"]),
    *_nums("repro", "--samplers", [",", "foo"], ["--out", "ro"]),
    *_nums("repro", "--batch-size", ["0"], ["--out", "ro"]),
    *_nums("repro", "--device", ["foo"], ["--out", "ro"]),
    *_nums("compare", "--steps", ["1", "x"], ["--out", "co"]),
    *_nums("compare", "--edm-nfe", ["0", "x"], ["--out", "co"]),
    *_nums("compare", "--samples", ["2"], ["--out", "co"]),
    *_nums("compare", "--batch-size", ["0"], ["--out", "co"]),
    *_nums("compare", "--device", ["tpu"], ["--out", "co"]),
    *_nums("compare", "--samplers", ["foo"], ["--out", "co"]),
    # demo / train-features
    *_nums("demo", "--eps-error", ["0", "nan"]),
    *_nums("demo", "--steps", ["1", BIG]),
    *_nums("demo", "--seeds", ["1,1", "0-99999999"]),
    *_nums("train-features", "--epochs", ["0", "-1", "x"], ["--out", "c.safetensors"]),
    *_nums("train-features", "--seed", ["-1"], ["--out", "c.safetensors"]),
    *_nums("train-features", "--data", ["cifar"], ["--out", "c.safetensors"]),
]


def _files():
    cases = []

    def add(argv, name):
        cases.append(pytest.param(argv, id=name))

    for at in S_OFFSETS:  # truncated files, each through every command that reads that kind
        add(["fid", f"s_t{at}.npz", "--ref", "held.npz"], f"fid-samples-trunc{at}")
        add(["fid-ref", "--data", f"s_t{at}.npz", "--out", "r.npz"], f"fid-ref-data-trunc{at}")
        add(["fid", "s.npz", "--ref", f"held_t{at}.npz"], f"fid-ref-trunc{at}")
        add(["fid", "s.npz", "--ref", "held.npz", "--feature-weights", f"cls_t{at}.safetensors"], f"fid-cls-trunc{at}")
        add(["sample", "--model", f"m_model_t{at}", "--out", "o.npz"], f"sample-weights-trunc{at}")
        add(["sample", "--model", f"m_config_t{at}", "--out", "o.npz"], f"sample-config-trunc{at}")
        add(["sample", *M, "--es-schedule", f"lam_t{at}.json", "--out", "o.npz"], f"sample-schedule-trunc{at}")
        add(["fid", f"pngs_t{at}", "--ref", "held.npz"], f"fid-png-trunc{at}")
    for at in (1, "half"):
        add(["train", "--data", f"npz:s_t{at}.npz", "--out", "o", "--no-progress"], f"train-npz-trunc{at}")
        add(["measure", *M, "--data", f"npz:s_t{at}.npz", "--out", "mo"], f"measure-data-trunc{at}")
        add(["train", "--data", f"mnist:s_t{at}.npz", "--out", "o"], f"train-mnist-npz-trunc{at}")
        add(["calibrate", *M, "--ref", f"held_t{at}.npz"], f"calibrate-ref-trunc{at}")
        add(["measure", "--model", f"m_model_t{at}", "--out", "mo"], f"measure-weights-trunc{at}")
        add(["fid-ref", "--data", f"pngs_t{at}", "--out", "r.npz"], f"fid-ref-png-trunc{at}")
        add(["fid-ref", "--data", "digits", "--out", "r.npz", "--feature-weights", f"cls_t{at}.safetensors"],
            f"fid-ref-cls-trunc{at}")
        add(["measure", *M, "--es-schedule", f"lam_t{at}.json", "--out", "mo"], f"measure-schedule-trunc{at}")
    for name in ("float", "uint16", "flat", "five_d", "rgba", "empty", "zero_width", "noarr", "npy", "text",
                 "pickle", "object"):
        add(["fid", f"bad_{name}.npz", "--ref", "held.npz"], f"fid-samples-{name}")
    for name in ("float", "pickle", "empty"):
        add(["fid-ref", "--data", f"npz:bad_{name}.npz", "--out", "r.npz"], f"fid-ref-{name}")
        add(["train", "--data", f"npz:bad_{name}.npz", "--out", "o"], f"train-data-{name}")
    add(["fid", "s28.npz", "--ref", "held.npz"], "fid-28x28-vs-digits")
    add(["fid", "s32rgb.npz", "--ref", "held.npz"], "fid-32x32x3-vs-digits")
    for name in ("empty", "16bit", "mixed", "jpeg", "text", "mixed_ch"):
        add(["fid", f"png_{name}", "--ref", "held.npz"], f"fid-png-{name}")
    add(["fid-ref", "--data", "png_16bit", "--out", "r.npz"], "fid-ref-png-16bit")
    for name in ("noprov", "prov_notjson", "prov_list", "prov_bytes", "features_str", "dim_str", "dim_wrong",
                 "count_float", "format", "version", "dataset_list", "shape_bad", "mu_nan", "sigma_shape", "n_array",
                 "feats_nan"):
        add(["fid", "s.npz", "--ref", f"ref_{name}.npz"], f"fid-reference-{name}")
    for name in ("features_str", "version", "mu_nan"):
        add(["calibrate", *M, "--ref", f"ref_{name}.npz"], f"calibrate-reference-{name}")
    for name in ("nan", "neg", "zero", "inf", "kind", "list", "string", "number", "per_step_empty", "per_step_len",
                 "b_str", "no_b", "made_for_bad", "linear_neg", "binary"):
        add(["sample", *M, "--steps", "5", "--es-schedule", f"lam_{name}.json", "--out", "o.npz"],
            f"sample-schedule-{name}")
    add(["sample", *M, "--sampler", "ddpm", "--steps", "100", "--es-schedule", "lam.json", "--out", "o.npz"],
        "sample-schedule-made-for-ddim20")
    add(["sample", *M, "--sampler", "ddim", "--steps", "20", "--spacing", "linspace", "--es-schedule", "lam.json",
         "--out", "o.npz"], "sample-schedule-other-spacing")
    add(["measure", *M, "--sampler", "ddim", "--steps", "10", "--es-schedule", "lam.json", "--out", "mo"],
        "measure-schedule-made-for-ddim20")
    add(["sample", *M, "--es", "1.01", "--es-adapt", "stretch", "--out", "o.npz"], "sample-es-adapt-without-file")
    add(["sample", *M, "--es-linear", "-0.1,1.0", "--steps", "30", "--out", "o.npz"], "sample-linear-negative-lambda")
    for name in ("noformat", "version_str", "version_list", "model_list", "width_str", "unknown_key", "T_zero",
                 "pred", "nan_weights"):
        add(["sample", "--model", f"m_cfg_{name}", "--out", "o.npz"], f"sample-config-{name}")
    add(["fid", "s.npz", "--ref", "held.npz", "--feature-weights", "cls_foreign.safetensors"], "fid-cls-foreign")
    add(["fid", "s.npz", "--ref", "held.npz", "--feature-weights", "adir"], "fid-cls-folder")
    add(["fid", "s.npz", "--ref", "held.npz", "--feature-weights", "missing.safetensors"], "fid-cls-missing")
    add(["fid-ref", "--data", "mnist:mnist_t.pkl.gz", "--out", "r.npz"], "fid-ref-mnist-truncated-gz")
    add(["fid-ref", "--data", "mnist:mnist_evil.pkl.gz", "--out", "r.npz"], "fid-ref-mnist-code-pickle")
    add(["train", "--data", "mnist:mnist_nan.npz", "--out", "o"], "train-mnist-nan")
    add(["train", "--data", "mnist:adir", "--out", "o"], "train-mnist-empty-folder")
    add(["fid-ref", "--data", "digits", "--out", "r.npz", "--features", "inception", "--inception", "incep.pt"],
        "fid-ref-inception-broken-zip")
    add(["fid-ref", "--data", "digits", "--out", "r.npz", "--features", "inception", "--inception", "incep_text.pt"],
        "fid-ref-inception-text")
    # a file where a folder is expected and the other way round; missing files
    for argv, name in [
        (["fid", "adir", "--ref", "held.npz"], "fid-samples-empty-folder"),
        (["fid", "missing.npz", "--ref", "held.npz"], "fid-samples-missing"),
        (["fid", "s.npz", "--ref", "adir"], "fid-ref-folder"),
        (["fid", "s.npz", "--ref", "s.npz"], "fid-ref-is-samples"),
        (["fid", "held.npz", "--ref", "held.npz"], "fid-samples-is-reference"),
        (["fid", "afile", "--ref", "held.npz"], "fid-samples-text-file"),
        (["sample", *M, "--es-schedule", "adir", "--out", "o.npz"], "sample-schedule-folder"),
        (["sample", *M, "--es-schedule", "s.npz", "--out", "o.npz"], "sample-schedule-binary"),
        (["sample", "--model", "missing", "--out", "o.npz"], "sample-model-missing"),
        (["sample", "--model", "adir", "--out", "o.npz"], "sample-model-empty-folder"),
        (["sample", "--model", "afile", "--out", "o.npz"], "sample-model-text-file"),
        (["train", "--data", "toy:nope", "--out", "o"], "train-data-unknown-toy"),
        (["train", "--data", "weird:x", "--out", "o"], "train-data-unknown-kind"),
        (["train", "--data", "missing.npz", "--out", "o"], "train-data-missing"),
        (["train", "--data", "mnist:", "--out", "o"], "train-data-mnist-empty"),
        (["train", "--data", "", "--out", "o"], "train-data-empty"),
        (["train", "--out", "o", "--resume"], "train-resume-nothing"),
        (["fid-ref", "--data", "toy:moons", "--out", "r.npz"], "fid-ref-vectors"),
        (["fid-ref", "--data", "npz:s.npz", "--split", "heldout", "--out", "r.npz"], "fid-ref-no-heldout"),
        (["measure", *M, "--data", "toy:moons", "--out", "mo"], "measure-data-wrong-shape"),
        (["calibrate", *M, "--data", "toy:moons"], "calibrate-data-wrong-shape"),
        (["calibrate", *M, "--ref", "s28.npz"], "calibrate-ref-is-samples"),
        (["repro", "--model", "missing", "--out", "ro"], "repro-model-missing"),
        (["compare", "--model", "adir", "--out", "co"], "compare-model-empty-folder"),
        (["sample", *M, "--variance", "learned", "--out", "o.npz"], "sample-learned-variance-missing"),
        (["sample", *M, "--sampler", "ddpm", "--eta", "0.5", "--out", "o.npz"], "sample-option-of-other-sampler"),
        (["sample", *M, "--sampler", "euler", "--s-tmin", "5", "--s-tmax", "1", "--out", "o.npz"],
         "sample-s-tmax-below-s-tmin"),
        (["train", "--data", "npz:bad_float.npz", "--out", "new/deeper/o"], "train-bad-data-nested-out"),
        (["sample", *M, "--sampler", "ddpm", "--steps", "5000", "--out", "o.npz"], "sample-steps-above-T"),
    ]:
        add(argv, name)
    # outputs that cannot be written as asked (checked before any work)
    for argv, name in [
        (["sample", *M, "--out", "o.png"], "sample-out-png-file"),
        (["sample", *M, "--out", "afile/o.npz"], "sample-out-under-a-file"),
        (["sample", *M, "--out", "adir.npz"], "sample-out-npz-is-folder"),
        (["sample", *M, "--out", "afile"], "sample-out-png-folder-is-file"),
        (["sample", *M, "--out", "o.npz", "--grid", "g.npz"], "sample-grid-not-png"),
        (["sample", *M, "--out", "o.npz", "--grid", "adir"], "sample-grid-folder"),
        (["sample", "--model", "toy_model_missing", "--out", "o/"], "sample-out-folder-model-missing"),
        (["calibrate", *M, "--out", "lam.npz"], "calibrate-out-npz"),
        (["calibrate", *M, "--out", "adir"], "calibrate-out-folder"),
        (["calibrate", *M, "--out", "afile/lam.json"], "calibrate-out-under-a-file"),
        (["fid-ref", "--data", "digits", "--out", "adir"], "fid-ref-out-folder"),
        (["fid-ref", "--data", "digits", "--out", "adir.npz"], "fid-ref-out-npz-is-folder"),
        (["fid-ref", "--data", "digits", "--out", "r.json"], "fid-ref-out-json"),
        (["fid-ref", "--data", "digits", "--out", "afile/r.npz"], "fid-ref-out-under-a-file"),
        (["measure", *M, "--out", "afile"], "measure-out-file"),
        (["measure", *M, "--out", "afile/mo"], "measure-out-under-a-file"),
        (["train", "--out", "afile"], "train-out-file"),
        (["train", "--out", "afile/o"], "train-out-under-a-file"),
        (["repro", "--out", "afile"], "repro-out-file"),
        (["compare", "--out", "afile"], "compare-out-file"),
        (["export", "--model", "m", "--out", "afile"], "export-out-file"),
        (["train-features", "--out", "c.json"], "train-features-out-json"),
        (["train-features", "--out", "afile/c.safetensors"], "train-features-out-under-a-file"),
        (["train-features", "--out", "adir.npz"], "train-features-out-folder"),
        (["sample", *M], "sample-out-missing"),
        (["fid", "s.npz"], "fid-ref-missing"),
        (["nonsense"], "unknown-command"),
        (["sample", *M, "--out", "o.npz", "--bogus"], "unknown-option"),
    ]:
        add(argv, name)
    return cases


CASES = NUMBERS + _files()


def _tree(d: Path) -> set:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def test_the_suite_is_large_enough():
    assert 150 <= len(CASES) <= 380, len(CASES)


CASE_LIMIT_S = 120  # every case should fail in well under a second; one that starts real work would hang CI


class CaseTooSlow(BaseException):  # not an Exception: the CLI's own handlers must not swallow it
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Fail a case that runs longer than ``seconds`` (SIGALRM; no limit where the platform has none)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise CaseTooSlow(f"the case ran past {seconds} s: it started real work instead of refusing its input")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_time_limit_fires():
    import time

    with pytest.raises(CaseTooSlow) if hasattr(signal, "SIGALRM") else contextlib.nullcontext():
        with _time_limit(1):
            time.sleep(3)


@pytest.mark.parametrize("argv", CASES)
def test_bad_input(fx, argv, capsys, monkeypatch):
    monkeypatch.chdir(fx)
    before = _tree(fx)
    with _time_limit(CASE_LIMIT_S):
        rc = main(list(argv))  # an exception here is a traceback for the user
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("diffusion-es: error: "), lines
    assert "Traceback" not in err and out == ""
    assert _tree(fx) == before, f"left behind: {sorted(_tree(fx) - before)}"


@pytest.mark.parametrize("argv", [
    ["fid", "s_thalf.npz", "--ref", "held.npz"],
    ["sample", "--model", "m", "--es-schedule", "lam.json", "--sampler", "ddpm", "--steps", "100", "--out", "o.npz"],
    ["train", "--data", "npz:bad_pickle.npz", "--out", "o"],
], ids=["fid-truncated", "schedule-mismatch", "train-pickle"])
def test_bad_input_in_a_real_process(fx, argv):
    """The same contract seen from outside: a fresh interpreter, warnings not captured by pytest."""
    import os

    import diffusion_es

    before = _tree(fx)
    env = {**os.environ, "PYTHONPATH": str(Path(diffusion_es.__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "diffusion_es", *argv], cwd=fx, capture_output=True, text=True,
                       timeout=600, env=env)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("diffusion-es: error: "), r.stderr
    assert r.stdout == "" and _tree(fx) == before
