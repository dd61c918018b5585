"""Hashes of samples and diagnostics for a fixed matrix of settings, to prove a refactoring changed no number.

Run it on both sides of a change, on the same machine, and compare the two JSON files:

    python scripts/identity_check.py --out before.json      # on the old commit
    python scripts/identity_check.py --out after.json       # on the new one
    python scripts/identity_check.py --compare before.json after.json

Every entry is the SHA-256 of the float64 samples (or of the JSON of a diagnostic result), so "identical" means
bit for bit. Only the public API is used, so the script runs on either side of a reorganisation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np
import torch


def _h(x) -> str:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=float).encode()).hexdigest()[:16]


def _timeshift():
    """Time-shift sampling through whichever API this side has (a policy of ``sample`` or its own front end)."""
    try:
        from diffusion_es.samplers import TimeShift
    except ImportError:
        from diffusion_es.samplers.timeshift import sample_timeshift
        return sample_timeshift
    from diffusion_es import sample

    def run(den, sampler, steps, shape, seeds, window, cutoff, data_var, **kw):
        return sample(den, sampler, steps, shape, seeds, time_shift=TimeShift(window, cutoff, data_var), **kw)

    return run


def _random_vp(prediction: str, learned: bool, arch: str = "unet"):
    from diffusion_es import VPDenoiser, VPSchedule
    from diffusion_es.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, data_shape=(1, 8, 8), channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      learned_variance=learned, width=64, blocks=2)
    net = build_model(cfg).eval()
    for p in net.parameters():  # a fresh UNet has a zero output layer: make its output non-trivial
        p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return VPDenoiser(net, VPSchedule.cosine(1000), prediction=prediction, learned_variance=learned)


def run() -> dict:
    from diffusion_es import Linear, PerStep, Uniform, sample
    from diffusion_es.models import load_model

    torch.set_num_threads(1)
    m = load_model("default")
    den, shape = m.denoiser(), m.data_shape
    seeds = list(range(40))
    out = {}
    es_all = {"none": None, "u1.02": Uniform(1.02), "lin": Linear(0.004, 0.99)}
    for sampler in ("ddpm", "ddim", "euler", "heun"):
        for name, es in es_all.items():
            out[f"default/{sampler}/10/{name}"] = _h(sample(den, sampler, 10, shape, seeds, es=es, batch_size=16))
    out["default/ddim/10/perstep"] = _h(sample(den, "ddim", 10, shape, seeds, es=PerStep(np.linspace(1.05, 0.97, 10)),
                                                batch_size=16))
    out["default/ddim/10/eta1"] = _h(sample(den, "ddim", 10, shape, seeds, eta=1.0, es=Uniform(1.01)))
    out["default/ddpm/10/large"] = _h(sample(den, "ddpm", 10, shape, seeds, variance="large", es=Uniform(1.01)))
    out["default/ddpm/10/noclip"] = _h(sample(den, "ddpm", 10, shape, seeds, clip=False))
    out["default/ddpm/10/trailing"] = _h(sample(den, "ddpm", 10, shape, seeds, spacing="trailing"))
    for sampler in ("euler", "heun"):
        out[f"default/{sampler}/8/churn"] = _h(sample(den, sampler, 8, shape, seeds, S_churn=10.0, S_noise=1.007,
                                                      S_tmin=0.05, S_tmax=50.0, es=Linear(0.01, 1.0)))
    ts = _timeshift()
    for sampler in ("ddpm", "ddim"):
        for w in (1, 5):
            out[f"default/ts-{sampler}/10/w{w}"] = _h(ts(den, sampler, 10, shape, seeds, window=w, cutoff=100,
                                                         data_var=0.3, es=Uniform(1.01)))
    for pred in ("eps", "x0", "v"):
        for learned in (False, True):
            d = _random_vp(pred, learned)
            for sampler in ("ddpm", "ddim", "heun"):
                out[f"unet-{pred}-{'lv' if learned else 'fv'}/{sampler}/6"] = _h(
                    sample(d, sampler, 6, (1, 8, 8), seeds[:8], es=Linear(0.01, 1.0)))
    from diffusion_es import measure_exposure
    from diffusion_es.data import load_dataset

    ds = load_dataset("digits")
    for sampler in ("ddpm", "heun"):
        c = measure_exposure(den, ds.train, sampler, 8, n_samples=60, es=Uniform(1.02), batch_size=25,
                             **({"S_churn": 5.0} if sampler == "heun" else {}))
        out[f"measure/{sampler}"] = _h(c.to_dict())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the hashes to this JSON file")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two hash files")
    a = ap.parse_args(argv)
    if a.compare:
        x, y = (json.load(open(p)) for p in a.compare)
        diff = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        print(f"{len(set(x) & set(y))} common entries, {len(diff)} differ" + (": " + ", ".join(diff) if diff else ""))
        return 1 if diff else 0
    res = run()
    text = json.dumps(res, indent=1, sort_keys=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
