"""``diffusion-es repro``: the paper's findings, reproduced on our own model, as one resumable job.

Steps (each writes its result to ``DIR/parts/*.json`` atomically and is skipped when rerun with the same
settings, so an interrupted run resumes where it stopped):

1. exposure-bias curves (ε-norm along sampling vs training, δ_t) for DDPM and DDIM, baseline and ES;
2. the main table: for every sampler x NFE cell, λ calibrated on search seed sets, then baseline vs ES on fresh
   validation seed sets with identical noise (paired), the relative gain and its spread; λ = 1 is checked to
   reproduce the baseline exactly;
3. λ curves (metric vs λ) from the search evaluations, and the optimal λ against the number of steps;
4. uniform vs linear schedules at 20 steps;
5. the paper's qualitative claims, each marked reproduced or not by our numbers;
6. ``report.md``, ``report.html`` (self-contained) and ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["ReproConfig", "run_repro", "PROFILES"]

SAMPLER_NAMES = {"ddpm": "ancestral DDPM", "ddim": "DDIM (η = 0)", "euler": "EDM Euler", "heun": "EDM Heun"}
# λ search ranges: stochastic ancestral sampling wants a larger λ than the ODE solvers (paper, PAPER.md)
RANGES = {"ddpm": (0.98, 1.08), "ddim": (0.99, 1.03), "euler": (0.99, 1.03), "heun": (0.98, 1.02)}

PROFILES = {
    "quick": dict(nfe=[10, 20], n_samples=200, n_sets=2, n_val_sets=3, coarse=4, refine=2, n_measure=200,
                  linear_samplers=["ddpm"]),
    "full": dict(nfe=[10, 20, 50, 100], n_samples=500, n_sets=2, n_val_sets=3, coarse=4, refine=2,
                 n_measure=500, linear_samplers=["ddpm", "ddim"]),
}


@dataclass
class ReproConfig:
    model: str = "default"
    data: str = "digits"
    out: str = "repro_out"
    quick: bool = False
    samplers: list = field(default_factory=lambda: ["ddpm", "ddim", "euler", "heun"])
    nfe: Optional[list] = None
    n_samples: Optional[int] = None
    n_sets: Optional[int] = None
    n_val_sets: Optional[int] = None
    coarse: Optional[int] = None
    refine: Optional[int] = None
    n_measure: Optional[int] = None
    linear_samplers: Optional[list] = None
    ref: str = "train"
    features: Optional[str] = None
    inception: Optional[str] = None
    device: str = "cpu"
    batch_size: int = 500
    seed: int = 0
    compare: bool = False   # add the comparison with the other fixes (diffusion_es.experiments.compare) as a section

    def resolved(self) -> "ReproConfig":
        prof = PROFILES["quick" if self.quick else "full"]
        d = asdict(self)
        for k, v in prof.items():
            if d.get(k) is None:
                d[k] = v
        c = ReproConfig(**d)
        bad = [s for s in c.samplers if s not in SAMPLER_NAMES]
        if bad:
            raise UsageError(f"unknown sampler(s) {bad}: use {', '.join(SAMPLER_NAMES)}")
        if not c.nfe or any(int(n) < 2 for n in c.nfe):
            raise UsageError("--nfe needs network-evaluation counts >= 2, e.g. 10,20,50,100")
        if c.n_samples < 10:
            raise UsageError(f"--samples must be at least 10 per seed set (FD needs many samples), got {c.n_samples}")
        if c.n_val_sets < 2:
            raise UsageError("--seeds (validation seed sets) must be at least 2 to give a spread")
        return c


def steps_for(sampler: str, nfe: int) -> int:
    """Sampler steps that cost ``nfe`` network evaluations (Heun: 2N − 1, rounded up to the next odd count)."""
    return (nfe + 2) // 2 if sampler == "heun" else nfe


def sampler_kwargs(sampler: str) -> dict:
    return {"ddim": {"eta": 0.0}}.get(sampler, {})


class _Store:
    """One JSON file per finished part, keyed by a hash of everything that determines it."""

    def __init__(self, out: Path, fingerprint: dict):
        self.dir = out / "parts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fp = fingerprint
        self.served = self.from_cache = 0
        self.compute_s = 0.0  # compute time of every part served, cached or not: the real cost of the results

    def accounting(self) -> dict:
        return {"compute_time_s": self.compute_s, "parts_from_cache": self.from_cache, "parts": self.served}

    def _path(self, name: str, params: dict) -> Path:
        h = hashlib.sha256(json.dumps({**self.fp, **params}, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return self.dir / f"{name}-{h}.json"

    def get_or_run(self, name: str, params: dict, fn):
        from ..io import write_json

        p = self._path(name, params)
        res, cached = None, False
        if p.exists():
            try:
                res, cached = json.loads(p.read_text()), True
            except json.JSONDecodeError:
                pass  # a damaged part is recomputed
        if res is None:
            t0 = time.time()
            res = fn()
            res["compute_s"] = time.time() - t0  # kept with the part, so a resumed run still reports the real cost
            write_json(p, res)
        self.served += 1
        self.from_cache += cached
        self.compute_s += float(res.get("compute_s", 0.0))
        return res, cached


def _model_fingerprint(model) -> dict:
    h = hashlib.sha256()
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return {"weights_sha256": h.hexdigest()[:16]}


def load_model_and_data(model_path, data: str, device="cpu"):
    """(model, its denoiser, its dataset), refusing data whose shape is not the model's sample shape."""
    from ..data import load_dataset
    from ..models import load_model

    model = load_model(model_path, device=device)
    ds = load_dataset(data)
    if ds.shape != tuple(model.data_shape):
        raise UsageError(f"the model makes samples of shape {tuple(model.data_shape)} but --data {data!r} has "
                         f"shape {ds.shape}; use the data the model was trained on")
    return model, model.denoiser(), ds


def run_repro(cfg: ReproConfig, log=print) -> dict:
    from ..diagnostics.calibrate import calibrate
    from ..diagnostics.measure import measure_exposure, plot_exposure
    from ..metrics.prdc import precision_recall
    from ..metrics.quality import FDMetric, build_metric
    from .report import write_report
    from ..samplers import SamplingPlan, sample
    from ..core.scaling import EpsilonScaled, Uniform

    cfg = cfg.resolved()
    t0 = time.time()
    out = Path(cfg.out)
    model, den, ds = load_model_and_data(cfg.model, cfg.data, cfg.device)
    metric = build_metric(cfg.data, cfg.ref, cfg.features, cfg.inception, shape=model.data_shape)
    extra = {}
    if cfg.ref != "heldout" and ds.heldout is not None and not str(cfg.ref).endswith(".npz"):
        extra["heldout"] = build_metric(cfg.data, "heldout", cfg.features, cfg.inception, shape=model.data_shape)
    train_flat = ds.train.reshape(len(ds.train), -1).to(torch.float64)

    def nn_train(x):  # mean distance of a sample to its nearest training image: falls when samples copy
        return float(torch.cdist(x.reshape(len(x), -1).cpu(), train_flat).min(dim=1).values.mean())

    extra["nn_dist_train"] = nn_train
    if isinstance(metric, FDMetric) and ds.heldout is not None and len(ds.heldout) > 3:
        held_feats = metric.features(ds.heldout)

        def recall_heldout(x):  # share of held-out images inside the samples' k-NN balls: falls when diversity does
            return float(precision_recall(held_feats, metric.features(x), k=3)["recall"])

        extra["recall_heldout"] = recall_heldout
    store = _Store(out, {"model": _model_fingerprint(model), "data": cfg.data, "ref": cfg.ref,
                         "features": cfg.features, "seed": cfg.seed, "version": 5})  # 5: + recall_heldout
    common = dict(n_samples=cfg.n_samples, n_sets=cfg.n_sets, n_val_sets=cfg.n_val_sets, coarse=cfg.coarse,
                  refine=cfg.refine, seed=cfg.seed, schedule=model.schedule, batch_size=cfg.batch_size,
                  metric_name=metric.name, device=cfg.device)
    # what, besides sampler and steps, determines a calibration part (its cache key)
    search_key = {**{k: common[k] for k in ("n_samples", "n_sets", "n_val_sets", "coarse", "refine")},
                  "extra": sorted(extra)}

    cells = [(s, n) for s in cfg.samplers for n in cfg.nfe]
    linear_tasks = [s for s in cfg.linear_samplers if s in cfg.samplers]
    measure_tasks = [s for s in ("ddpm", "ddim") if s in cfg.samplers]
    total = len(cells) + len(linear_tasks) + len(measure_tasks)
    done = 0

    def tick(what, cached):
        nonlocal done
        done += 1
        log(f"[{done}/{total}] {what}{' (cached)' if cached else ''}  {time.time() - t0:6.0f} s")

    # ---- 2. main table -----------------------------------------------------------------------------------
    table = []
    for sampler, nfe in cells:
        steps = steps_for(sampler, nfe)
        params = {"part": "cell", "sampler": sampler, "steps": steps, "range": RANGES[sampler], **search_key}

        def run_cell(sampler=sampler, steps=steps):
            r = calibrate(den, sampler, steps, model.data_shape, metric, kind="uniform", lam_range=RANGES[sampler],
                          extra_metrics=extra, **common, **sampler_kwargs(sampler))
            # invariant: λ = 1 through the ES wrapper itself (not the short-cut that skips it) reproduces the
            # baseline exactly, on the first validation seed set
            plan = SamplingPlan(sampler, steps, model.schedule)
            wrapped = EpsilonScaled(den, Uniform(1.0).bind(plan.sigmas))
            seeds = list(range(cfg.seed * 10_000_019 + cfg.n_sets * cfg.n_samples,
                               cfg.seed * 10_000_019 + (cfg.n_sets + 1) * cfg.n_samples))
            one = sample(wrapped, sampler, steps, model.data_shape, seeds, schedule=model.schedule,
                         batch_size=cfg.batch_size, device=cfg.device, **sampler_kwargs(sampler))
            d = r.to_dict()
            d["lambda1_metric"] = float(metric(one))
            d["lambda1_equals_baseline"] = d["lambda1_metric"] == r.baseline_val[0]
            d["nfe_per_sample"] = plan.nfe
            return d

        res, cached = store.get_or_run(f"cell_{sampler}_{steps}", params, run_cell)
        res["nfe_cell"] = nfe
        table.append(res)
        tick(f"{sampler} {steps} steps ({res['nfe_per_sample']} NFE): λ {res['candidate']['b']:.4f}, "
             f"metric change {100 * res['gain']:+.1f} %", cached)

    # ---- 4. uniform vs linear at 20 steps -----------------------------------------------------------------
    linear = []
    for sampler in linear_tasks:
        steps = steps_for(sampler, 20)
        params = {"part": "linear", "sampler": sampler, "steps": steps, "range": RANGES[sampler], **search_key}

        def run_linear(sampler=sampler, steps=steps):
            return calibrate(den, sampler, steps, model.data_shape, metric, kind="linear",
                             lam_range=RANGES[sampler], extra_metrics=extra, **common,
                             **sampler_kwargs(sampler)).to_dict()

        res, cached = store.get_or_run(f"linear_{sampler}_{steps}", params, run_linear)
        linear.append(res)
        tick(f"linear schedule, {sampler} {steps} steps", cached)

    # ---- 1. exposure-bias curves ----------------------------------------------------------------------------
    exposure = {}
    for sampler in measure_tasks:
        steps = steps_for(sampler, 20)
        cell = next((c for c in table if c["sampler"] == sampler and c["steps"] == steps), None)
        lam = cell["candidate"]["b"] if cell else 1.01
        params = {"part": "measure", "sampler": sampler, "steps": steps, "lam": lam, "n": cfg.n_measure}

        def run_measure(sampler=sampler, steps=steps, lam=lam):
            base = measure_exposure(den, ds.train, sampler, steps, schedule=model.schedule, n_samples=cfg.n_measure,
                                    seed=cfg.seed, shape=model.data_shape, device=cfg.device,
                                    **sampler_kwargs(sampler))
            es = measure_exposure(den, ds.train, sampler, steps, schedule=model.schedule, es=Uniform(lam),
                                  n_samples=cfg.n_measure, seed=cfg.seed, shape=model.data_shape,
                                  device=cfg.device, **sampler_kwargs(sampler))
            return {"baseline": base.to_dict(), "es": es.to_dict()}

        res, cached = store.get_or_run(f"measure_{sampler}_{steps}", params, run_measure)
        exposure[sampler] = res
        tick(f"exposure curves, {sampler} {steps} steps", cached)

    from ..diagnostics.measure import ExposureCurves

    def curves(d):
        keys = ExposureCurves.__dataclass_fields__
        return ExposureCurves(**{k: v for k, v in d.items() if k in keys})

    figures = {}
    for sampler, res in exposure.items():
        name = f"exposure_{sampler}.png"
        plot_exposure([curves(res["baseline"]), curves(res["es"])], out / name,
                      title=f"exposure bias, {SAMPLER_NAMES[sampler]}, {res['baseline']['steps']} steps "
                            f"(solid: used ε; dashed: raw network ε)")
        figures[f"exposure_{sampler}"] = name
    figures.update(_plot_lambda(table, cfg, out, metric.name))
    results = {
        "config": asdict(cfg), "metric": metric.name, "model": str(cfg.model),
        "reference": {"primary": metric.name, "extra": sorted(extra)},
        "table": table, "linear": linear,
        "exposure": {s: {"baseline": r["baseline"]["summary"], "es": r["es"]["summary"],
                         "curves": r} for s, r in exposure.items()},
        "figures": figures, "wall_time_s": time.time() - t0, **store.accounting(),
    }
    results["claims"] = check_claims(results)
    if cfg.compare:
        from .compare import CompareConfig, run_compare

        results["compare"] = run_compare(CompareConfig(model=cfg.model, data=cfg.data, out=cfg.out, quick=cfg.quick,
                                                       ref=cfg.ref, device=cfg.device, batch_size=cfg.batch_size,
                                                       seed=cfg.seed), log=log)
    write_report(results, out)
    return results


def _plot_lambda(table, cfg, out: Path, metric_name: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    figs = {}
    fig, ax = plt.subplots(1, len(cfg.samplers), figsize=(4 * len(cfg.samplers), 3.4), squeeze=False)
    for a, sampler in zip(ax[0], cfg.samplers):
        for cell in (c for c in table if c["sampler"] == sampler):
            pts = sorted((1.0 if e["schedule"] is None else e["schedule"]["b"], e["mean"]) for e in cell["evaluations"])
            base = next(m for b, m in pts if b == 1.0) if any(b == 1.0 for b, _ in pts) else pts[0][1]
            a.plot([p[0] for p in pts], [p[1] / base for p in pts], "-o", ms=3, label=f"{cell['nfe_per_sample']} NFE")
        a.axvline(1.0, color="k", lw=0.6)
        a.set_title(SAMPLER_NAMES[sampler])
        a.set_xlabel("λ (uniform)")
        a.set_ylabel(f"{metric_name} / value at λ = 1")
        a.legend(fontsize=7)
    fig.suptitle("metric vs λ (search seed sets)")
    fig.tight_layout()
    save_figure(fig, out / "lambda_curves.png", dpi=110)
    figs["lambda_curves"] = "lambda_curves.png"

    fig, a = plt.subplots(figsize=(5, 3.6))
    for sampler in cfg.samplers:
        cs = [c for c in table if c["sampler"] == sampler]
        a.errorbar([c["nfe_per_sample"] for c in cs], [c["candidate"]["b"] for c in cs],
                   yerr=[0 if not math.isfinite(c["lam_spread"]) else c["lam_spread"] for c in cs],
                   marker="o", capsize=3, label=SAMPLER_NAMES[sampler])
    a.axhline(1.0, color="k", lw=0.6)
    a.set_xscale("log")
    a.set_xlabel("network evaluations")
    a.set_ylabel("calibrated λ")
    a.legend(fontsize=7)
    a.set_title("optimal λ vs number of steps")
    fig.tight_layout()
    save_figure(fig, out / "lambda_vs_steps.png", dpi=110)
    figs["lambda_vs_steps"] = "lambda_vs_steps.png"
    return figs


def check_claims(results: dict) -> list:
    """The paper's qualitative claims, each judged by our numbers only."""
    claims = []
    table = results["table"]

    def claim(text, ok, evidence):
        claims.append({"claim": text, "reproduced": None if ok is None else bool(ok), "evidence": evidence})

    for s, e in results["exposure"].items():
        b = e["baseline"]
        claim(f"Exposure bias exists ({SAMPLER_NAMES[s]}): the ε-norm along sampling is above the training curve "
              f"for most steps", b["frac_steps_sampling_above_training"] > 0.5,
              f"sampling above training at {100 * b['frac_steps_sampling_above_training']:.0f} % of steps, "
              f"mean ratio {b['mean_ratio_raw']:.4f}")
        es = e["es"]
        claim(f"ES pulls the used ε-norm toward the training curve ({SAMPLER_NAMES[s]})",
              abs(es["mean_ratio_used"] - 1) < abs(b["mean_ratio_raw"] - 1),
              f"|mean ratio − 1|: baseline {abs(b['mean_ratio_raw'] - 1):.4f}, ES (used ε) "
              f"{abs(es['mean_ratio_used'] - 1):.4f}")
        claim(f"ES reduces the variance error δ_t ({SAMPLER_NAMES[s]})", es["sum_delta"] < b["sum_delta"],
              f"Σδ_t baseline {b['sum_delta']:.4g}, ES {es['sum_delta']:.4g}")
    sig = [c for c in table if c["significant"]]
    claim("ES improves sample quality (metric lower than baseline beyond the noise)",
          len(sig) > len(table) / 2,
          f"{len(sig)} of {len(table)} cells significantly better; mean change "
          f"{100 * np.mean([c['gain'] for c in table]):+.1f} %")
    claim("λ = 1 reproduces the baseline exactly", all(c["lambda1_equals_baseline"] for c in table),
          f"{sum(c['lambda1_equals_baseline'] for c in table)} of {len(table)} cells identical")
    def lam_of(c):
        return c["candidate"]["b"]

    # λ trends only from cells where ES helped beyond the noise: elsewhere the "best" λ is noise
    rhos = []
    for s in sorted({c["sampler"] for c in table}):
        cs = sorted((c for c in sig if c["sampler"] == s), key=lambda c: c["nfe_per_sample"])
        if len(cs) >= 2 and len({lam_of(c) for c in cs}) > 1:
            rhos.append(float(np.corrcoef(np.argsort(np.argsort([c["nfe_per_sample"] for c in cs])),
                                          np.argsort(np.argsort([lam_of(c) for c in cs])))[0, 1]))
    claim("Fewer steps want a larger λ", np.mean(rhos) < 0 if rhos else None,
          f"mean Spearman correlation of λ with NFE over samplers with >= 2 significant cells: "
          f"{np.mean(rhos):+.2f} ({len(rhos)} samplers)" if rhos else
          "inconclusive: fewer than two cells per sampler where ES beat the baseline beyond the noise")

    def gains(cells):
        return [g for c in cells for g in c["gain_per_set"]]

    def compare(a, b, name_a, name_b):
        """Is mean(a) < mean(b) beyond two standard errors? None when the difference is within the noise."""
        if len(a) < 2 or len(b) < 2:
            return None, "too few values"
        d = float(np.mean(a) - np.mean(b))
        se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
        ok = None if abs(d) <= 2 * se else d < 0
        return ok, (f"{name_a} {100 * np.mean(a):+.1f} %, {name_b} {100 * np.mean(b):+.1f} % "
                    f"(difference {100 * d:+.1f} ± {200 * se:.1f} %{'; within the noise' if ok is None else ''})")

    nfes = results["config"]["nfe"]
    if len(nfes) > 1:
        lo, hi = min(nfes), max(nfes)
        ok, ev = compare(gains(c for c in table if c["nfe_cell"] == lo), gains(c for c in table if c["nfe_cell"] == hi),
                         f"mean change at {lo} NFE", f"at {hi} NFE")
        claim("Gains are largest at low step counts", ok, ev)
    by = {s: [c for c in table if c["sampler"] == s] for s in ("ddpm", "ddim", "euler", "heun")}
    if by["euler"] and by["heun"]:
        ok, ev = compare(gains(by["euler"]), gains(by["heun"]), "mean change Euler", "Heun")
        claim("First-order solvers gain more than second-order (Euler vs Heun)", ok, ev)
    sig_ddpm = [lam_of(c) for c in by["ddpm"] if c["significant"]]
    sig_ddim = [lam_of(c) for c in by["ddim"] if c["significant"]]
    claim("Stochastic samplers want a larger λ than deterministic ones (DDPM vs DDIM)",
          (np.mean(sig_ddpm) > np.mean(sig_ddim)) if sig_ddpm and sig_ddim else None,
          f"mean λ over significant cells: DDPM {np.mean(sig_ddpm):.4f}, DDIM {np.mean(sig_ddim):.4f}"
          if sig_ddpm and sig_ddim else "inconclusive: needs cells of both samplers where ES beat the baseline")
    for lin in results["linear"]:
        cell = next((c for c in table if c["sampler"] == lin["sampler"] and c["steps"] == lin["steps"]), None)
        if cell is None:
            continue
        # both were validated on the same fresh seed sets: a paired comparison
        diff = np.asarray(lin["best_val"]) / np.asarray(cell["best_val"]) - 1
        half = 2 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("inf")
        ok = True if diff.mean() + half < 0 else (None if diff.mean() - half <= 0 else False)
        claim(f"A linear λ schedule does better than the uniform one ({SAMPLER_NAMES[lin['sampler']]}, "
              f"{lin['steps']} steps)", ok,
              f"validation metric: uniform {np.mean(cell['best_val']):.4g}, linear {np.mean(lin['best_val']):.4g} "
              f"({100 * diff.mean():+.1f} ± {100 * half:.1f} %, paired; {lin['candidate']})")
    return claims
