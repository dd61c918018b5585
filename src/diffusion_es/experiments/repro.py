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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import UsageError
from .common import RANGES, SAMPLER_NAMES, Ticker, fingerprint, load_model_and_data, seed_sets

__all__ = ["ReproConfig", "run_repro", "PROFILES"]

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
            raise UsageError("nfe needs network-evaluation counts >= 2, e.g. 10,20,50,100")
        if c.n_samples < 10:
            raise UsageError(f"n_samples must be at least 10 per seed set (FD needs many samples), got {c.n_samples}")
        if c.n_val_sets < 2:
            raise UsageError("n_val_sets (validation seed sets) must be at least 2 to give a spread")
        return c


class _Repro:
    """One run: model, data, the primary metric and the extra measures, the part store."""

    def __init__(self, cfg: ReproConfig, log):
        from ..metrics.prdc import precision_recall
        from ..metrics.quality import FDMetric, build_metric
        from ..store import PartStore

        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.model, self.den, self.ds = load_model_and_data(cfg.model, cfg.data, cfg.device)
        shape = self.model.data_shape
        self.metric = metric = build_metric(cfg.data, cfg.ref, cfg.features, cfg.inception, shape=shape)
        extra = {}
        ds = self.ds
        if cfg.ref != "heldout" and ds.heldout is not None and not str(cfg.ref).endswith(".npz"):
            extra["heldout"] = build_metric(cfg.data, "heldout", cfg.features, cfg.inception, shape=shape)
        train_flat = ds.train.reshape(len(ds.train), -1).to(torch.float64)

        def nn_train(x):  # mean distance of a sample to its nearest training image: falls when samples copy
            return float(torch.cdist(x.reshape(len(x), -1).cpu(), train_flat).min(dim=1).values.mean())

        extra["nn_dist_train"] = nn_train
        if isinstance(metric, FDMetric) and ds.heldout is not None and len(ds.heldout) > 3:
            held_feats = metric.features(ds.heldout)

            def recall_heldout(x):  # share of held-out images inside the samples' k-NN balls: falls with diversity
                return float(precision_recall(held_feats, metric.features(x), k=3)["recall"])

            extra["recall_heldout"] = recall_heldout
        self.extra = extra
        self.store = PartStore(self.out, {"model": fingerprint(self.model), "data": cfg.data, "ref": cfg.ref,
                                          "features": cfg.features, "seed": cfg.seed, "version": 5})
        self.common = dict(n_samples=cfg.n_samples, n_sets=cfg.n_sets, n_val_sets=cfg.n_val_sets, coarse=cfg.coarse,
                           refine=cfg.refine, seed=cfg.seed, schedule=self.model.schedule, batch_size=cfg.batch_size,
                           metric_name=metric.name, device=cfg.device)
        # what, besides sampler and steps, determines a calibration part (its cache key)
        self.search_key = {**{k: self.common[k] for k in ("n_samples", "n_sets", "n_val_sets", "coarse", "refine")},
                           "extra": sorted(extra)}
        self.linear_tasks = [s for s in cfg.linear_samplers if s in cfg.samplers]
        self.measure_tasks = [s for s in ("ddpm", "ddim") if s in cfg.samplers]
        self.tick = Ticker(len(cfg.samplers) * len(cfg.nfe) + len(self.linear_tasks) + len(self.measure_tasks), log)

    def calibrate(self, sampler: str, steps: int, kind: str):
        from ..diagnostics.calibrate import calibrate

        return calibrate(self.den, sampler, steps, self.model.data_shape, self.metric, kind=kind,
                         lam_range=RANGES[sampler], extra_metrics=self.extra, **self.common)

    def cell(self, sampler: str, nfe: int) -> dict:
        """The main table's cell: uniform λ calibrated, gain on fresh sets, and the λ = 1 invariant."""
        from ..core.scaling import EpsilonScaled, Uniform
        from ..samplers import SamplingPlan, sample

        cfg, model = self.cfg, self.model
        steps = get_steps(sampler, nfe)

        def run():
            r = self.calibrate(sampler, steps, "uniform")
            # invariant: λ = 1 through the ES wrapper itself (not the short-cut that skips it) reproduces the
            # baseline exactly, on the first validation seed set
            plan = SamplingPlan(sampler, steps, model.schedule)
            wrapped = EpsilonScaled(self.den, Uniform(1.0).bind(plan.sigmas))
            seeds = seed_sets(cfg.seed, cfg.n_samples, cfg.n_sets + 1)[cfg.n_sets]
            one = sample(wrapped, sampler, steps, model.data_shape, seeds, schedule=model.schedule,
                         batch_size=cfg.batch_size, device=cfg.device)
            d = r.to_dict()
            d["lambda1_metric"] = float(self.metric(one))
            d["lambda1_equals_baseline"] = d["lambda1_metric"] == r.baseline_val[0]
            d["nfe_per_sample"] = plan.nfe
            return d

        res, cached = self.store.get_or_run(f"cell_{sampler}_{steps}", {"part": "cell", "sampler": sampler,
                                            "steps": steps, "range": RANGES[sampler], **self.search_key}, run)
        res["nfe_cell"] = nfe
        self.tick(f"{sampler} {steps} steps ({res['nfe_per_sample']} NFE): λ {res['candidate']['b']:.4f}, "
                  f"metric change {100 * res['gain']:+.1f} %", cached)
        return res

    def linear(self, sampler: str) -> dict:
        """Uniform vs linear λ at 20 steps."""
        steps = get_steps(sampler, 20)
        res, cached = self.store.get_or_run(f"linear_{sampler}_{steps}", {"part": "linear", "sampler": sampler,
                                            "steps": steps, "range": RANGES[sampler], **self.search_key},
                                            lambda: self.calibrate(sampler, steps, "linear").to_dict())
        self.tick(f"linear schedule, {sampler} {steps} steps", cached)
        return res

    def exposure(self, sampler: str, table: list) -> dict:
        """ε-norm and δ_t curves at 20 steps, baseline and ES at the cell's calibrated λ."""
        from ..core.scaling import Uniform
        from ..diagnostics.measure import measure_exposure

        cfg, model = self.cfg, self.model
        steps = get_steps(sampler, 20)
        cell = next((c for c in table if c["sampler"] == sampler and c["steps"] == steps), None)
        lam = cell["candidate"]["b"] if cell else 1.01

        def run():
            kw = dict(schedule=model.schedule, n_samples=cfg.n_measure, seed=cfg.seed, shape=model.data_shape,
                      device=cfg.device)
            base = measure_exposure(self.den, self.ds.train, sampler, steps, **kw)
            es = measure_exposure(self.den, self.ds.train, sampler, steps, es=Uniform(lam), **kw)
            return {"baseline": base.to_dict(), "es": es.to_dict()}

        res, cached = self.store.get_or_run(f"measure_{sampler}_{steps}", {"part": "measure", "sampler": sampler,
                                            "steps": steps, "lam": lam, "n": cfg.n_measure}, run)
        self.tick(f"exposure curves, {sampler} {steps} steps", cached)
        return res

    def figures(self, table: list, exposure: dict) -> dict:
        from ..diagnostics.measure import ExposureCurves, plot_exposure

        def curves(d):
            keys = ExposureCurves.__dataclass_fields__
            return ExposureCurves(**{k: v for k, v in d.items() if k in keys})

        figures = {}
        for sampler, res in exposure.items():
            name = f"exposure_{sampler}.png"
            plot_exposure([curves(res["baseline"]), curves(res["es"])], self.out / name,
                          title=f"exposure bias, {SAMPLER_NAMES[sampler]}, {res['baseline']['steps']} steps "
                                f"(solid: used ε; dashed: raw network ε)")
            figures[f"exposure_{sampler}"] = name
        figures.update(_plot_lambda(table, self.cfg, self.out, self.metric.name))
        return figures


def get_steps(sampler: str, nfe: int) -> int:
    """Sampler steps that cost ``nfe`` network evaluations (Heun: 2N − 1, rounded up to the next odd count)."""
    from ..samplers import get_sampler

    return get_sampler(sampler).steps_for_nfe(nfe)


def run_repro(cfg: ReproConfig, log=print) -> dict:
    """The whole reproduction (resumable; see the module docstring); writes the report into ``cfg.out``."""
    from .blocks import repro_blocks
    from .claims import check_claims
    from .report import write_document

    cfg = cfg.resolved()
    run = _Repro(cfg, log)
    table = [run.cell(s, n) for s in cfg.samplers for n in cfg.nfe]
    linear = [run.linear(s) for s in run.linear_tasks]
    exposure = {s: run.exposure(s, table) for s in run.measure_tasks}
    results = {
        "config": asdict(cfg), "metric": run.metric.name, "model": str(cfg.model),
        "reference": {"primary": run.metric.name, "extra": sorted(run.extra)},
        "table": table, "linear": linear,
        "exposure": {s: {"baseline": r["baseline"]["summary"], "es": r["es"]["summary"],
                         "curves": r} for s, r in exposure.items()},
        "figures": run.figures(table, exposure), "wall_time_s": run.tick.elapsed(), **run.store.accounting(),
    }
    results["claims"] = check_claims(results)
    if cfg.compare:
        from .compare import CompareConfig, run_compare

        results["compare"] = run_compare(CompareConfig(model=cfg.model, data=cfg.data, out=cfg.out, quick=cfg.quick,
                                                       ref=cfg.ref, device=cfg.device, batch_size=cfg.batch_size,
                                                       seed=cfg.seed), log=log)
    write_document(repro_blocks(results), results, cfg.out, "report", "results.json",
                   "diffusion-es: Epsilon Scaling reproduction")
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
