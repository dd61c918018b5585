"""``diffusion-es repro``: the paper's findings, reproduced on our own model, as one resumable job.

The primary metric is FD against data the model never saw (the held-out split; MNIST: the 10k test images), with
precision/recall, FD against the training split and the distance to the nearest training image beside it (see
:mod:`.measures`). Steps (each writes its result to ``DIR/parts/*.json`` atomically and is skipped when rerun with
the same settings, so an interrupted run resumes where it stopped):

1. power: the paired seed-set noise of the metric is measured at 20 steps, and the number of validation seed sets
   is chosen so that a 3 % change of the metric is resolvable (stated in the report);
2. the main table: for every sampler x NFE cell, λ calibrated on search seed sets, then baseline vs ES on fresh
   validation seed sets with identical noise (paired), the relative gain and its interval; λ = 1 is checked to
   reproduce the baseline exactly;
3. uniform vs linear schedules at 20 steps, and for any schedule that goes below 1 the diagnostics of what it does;
4. exposure-bias curves (ε-norm along sampling vs training, δ_t) for DDPM and DDIM, baseline and ES;
5. λ curves, the paper's claims judged by our numbers, ``report.md``, ``report.html`` and ``results.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UsageError
from .common import (MODEL_SAMPLERS, RANGES, SAMPLER_NAMES, Ticker, check_unique, exposure_cell, exposure_es_text,
                     grid_key, inputs_key, load_model_and_data, seed_sets)

__all__ = ["ReproConfig", "run_repro", "PROFILES", "profile_for"]

# sizes per dataset family; n_val_sets is the floor of the power calculation's choice, max_val_sets its cap
PROFILES = {
    "digits": {
        "quick": dict(nfe=[10, 20], n_samples=200, n_sets=2, n_val_sets=3, max_val_sets=3, coarse=4, refine=2,
                      n_measure=200, linear_samplers=["ddpm"], samplers=["ddpm", "ddim", "euler", "heun"]),
        "full": dict(nfe=[10, 20, 50, 100], n_samples=500, n_sets=2, n_val_sets=3, max_val_sets=8, coarse=4,
                     refine=2, n_measure=500, linear_samplers=["ddpm", "ddim"],
                     samplers=["ddpm", "ddim", "euler", "heun"]),
    },
    "mnist": {
        # about 10 minutes of one CPU core: 100 samples per set (FD at that size is biased upward; the rows are
        # paired, so the changes still compare)
        "quick": dict(nfe=[10, 20], n_samples=100, n_sets=1, n_val_sets=2, max_val_sets=2, coarse=3, refine=1,
                      n_measure=100, linear_samplers=[], samplers=["ddpm", "ddim"]),
        # about three hours of one shared CPU core (172 min for the committed docs/repro_mnist); on a GPU widen it with
        # --nfe 10,20,50,100 --samples 1000
        "full": dict(nfe=[10, 20], n_samples=500, n_sets=1, n_val_sets=3, max_val_sets=4, coarse=3, refine=1,
                     n_measure=500, linear_samplers=["ddpm"], samplers=["ddpm", "ddim", "euler", "heun"]),
    },
}
POWER_EFFECT = 0.03   # the relative change of the metric at 20 steps the design must resolve (80 % power, α 0.05)


def profile_for(data_name: str, quick: bool) -> dict:
    family = "mnist" if data_name == "mnist" else "digits"
    return dict(PROFILES[family]["quick" if quick else "full"])


@dataclass
class ReproConfig:
    model: str = "default"
    data: Optional[str] = None      # None: the model's own training data (its config.json), else digits
    out: str = "repro_out"
    quick: bool = False
    samplers: Optional[list] = None
    nfe: Optional[list] = None
    n_samples: Optional[int] = None
    n_sets: Optional[int] = None
    n_val_sets: Optional[int] = None  # given: used as is; None: chosen by the power calculation
    max_val_sets: Optional[int] = None
    coarse: Optional[int] = None
    refine: Optional[int] = None
    n_measure: Optional[int] = None
    linear_samplers: Optional[list] = None
    ref: str = "heldout"            # the primary metric's reference: data the model never saw
    features: Optional[str] = None
    inception: Optional[str] = None
    device: str = "cpu"
    batch_size: Optional[int] = None  # None: samplers.auto_batch_size of the model (on the CPU, fewer page faults)
    seed: int = 0
    compare: bool = False   # add the comparison with the other fixes (diffusion_es.experiments.compare) as a section
    power: bool = True      # choose the validation seed sets from measured noise (when n_val_sets is not given)
    min_lambda: Optional[float] = None  # no λ_t below it in any search (1: the paper's ES only, no λ < 1)
    command: Optional[str] = None  # the command line that ran it (the CLI sets it), for the report's provenance

    def resolved(self, data_name: str) -> "ReproConfig":
        prof = profile_for(data_name, self.quick)
        d = asdict(self)
        fixed_sets = d["n_val_sets"] is not None
        for k, v in prof.items():
            if d.get(k) is None:
                d[k] = v
        if fixed_sets:
            d["power"] = False
        c = ReproConfig(**d)
        bad = [s for s in c.samplers if s not in SAMPLER_NAMES]
        if bad:
            raise UsageError(f"unknown sampler(s) {bad}: use {', '.join(SAMPLER_NAMES)}")
        if not c.nfe or any(int(n) < 2 for n in c.nfe):
            raise UsageError("nfe needs network-evaluation counts >= 2, e.g. 10,20,50,100")
        for what, values in (("nfe", c.nfe), ("samplers", c.samplers), ("linear_samplers", c.linear_samplers)):
            check_unique(values, what)
        if c.min_lambda is not None and not (math.isfinite(float(c.min_lambda)) and float(c.min_lambda) > 0):
            raise UsageError(f"min_lambda must be a finite number > 0, got {c.min_lambda}")
        if c.n_samples < 10:
            raise UsageError(f"n_samples must be at least 10 per seed set (FD needs many samples), got {c.n_samples}")
        if c.n_val_sets < 2:
            raise UsageError("n_val_sets (validation seed sets) must be at least 2 to give a spread")
        c.max_val_sets = max(c.max_val_sets, c.n_val_sets)
        return c


def _check_min_lambda(cfg: "ReproConfig") -> None:
    """Refuse a min_lambda at or above the top of a row's λ search range: every candidate would be cut."""
    if cfg.min_lambda is None:
        return
    top = {s: RANGES[s][1] for s in cfg.samplers if float(cfg.min_lambda) >= RANGES[s][1]}
    if top:
        raise UsageError(f"min_lambda {float(cfg.min_lambda):g} is not below the top of the λ search range of "
                         f"{', '.join(f'{s} ({RANGES[s][0]:g}–{v:g})' for s, v in top.items())}: every candidate "
                         f"would be cut; use a smaller one (1: the paper's ES only)")


class _Repro:
    """One run: model, data, the primary metric and the extra measures, the part store."""

    def __init__(self, cfg: ReproConfig, log):
        from ..store import PartStore
        from .measures import build_measures

        self.model, self.den, self.ds = load_model_and_data(cfg.model, cfg.data, cfg.device)
        data = self.ds.description["spec"]
        own_samplers = cfg.samplers is None
        cfg = cfg.resolved(self.ds.description.get("name", ""))
        cfg.data = data
        fits = MODEL_SAMPLERS[self.model.process]
        if own_samplers:  # the profile's samplers that fit this kind of model, else all of its own
            cfg.samplers = [s for s in cfg.samplers if s in fits] or list(fits)
        elif any(s not in fits for s in cfg.samplers):
            raise UsageError(f"sampler(s) {', '.join(s for s in cfg.samplers if s not in fits)} cannot sample this "
                             f"{self.model.process.upper()} model; --samplers takes {','.join(fits)} here")
        _check_min_lambda(cfg)  # on the rows that will run, before the power step samples anything
        from ..samplers import resolve_batch_size

        cfg.batch_size = resolve_batch_size(cfg.batch_size, self.den, self.model.data_shape, cfg.device)
        self.cfg, self.log, self.out = cfg, log, Path(cfg.out)
        self.metric, self.extra = build_measures(data, self.ds, cfg.ref, cfg.features, cfg.inception,
                                                 self.model.data_shape, n_real_pr=cfg.n_samples, seed=cfg.seed)
        self.store = PartStore(self.out, {**inputs_key(self.model, data, cfg.ref, cfg.inception),
                                          "features": cfg.features, "seed": cfg.seed, "version": 6})
        self.linear_tasks = [s for s in cfg.linear_samplers if s in cfg.samplers]
        self.measure_tasks = [s for s in ("ddpm", "ddim") if s in cfg.samplers]
        n_parts = len(cfg.samplers) * len(cfg.nfe) + 2 * len(self.linear_tasks) + len(self.measure_tasks)
        self.tick = Ticker(n_parts + (1 if cfg.power else 0), log)
        self.power = None

    # -- 1. power ------------------------------------------------------------------------------------------------
    def choose_sets(self) -> dict:
        """Measure the paired noise of the metric at 20 steps and choose the number of validation seed sets."""
        from ..samplers import sample

        cfg, model = self.cfg, self.model
        sampler = "ddpm" if "ddpm" in cfg.samplers else cfg.samplers[0]
        steps = get_steps(sampler, 20)
        lo, hi = RANGES[sampler]
        probe = round(1.0 + (hi - 1.0) / 2, 4)
        k = max(4, cfg.n_val_sets)
        sets = seed_sets(cfg.seed + 7919, cfg.n_samples, k)  # pilot seeds, disjoint from calibration's

        def run():
            from ..diagnostics.calibrate import finite_value

            vals = {}
            for lam in (None, probe):
                vals["baseline" if lam is None else "probe"] = [finite_value(
                    self.metric(sample(self.den, sampler, steps, model.data_shape, s, schedule=model.schedule, es=lam,
                                       batch_size=cfg.batch_size, device=cfg.device)), self.metric.name) for s in sets]
            return {"sampler": sampler, "steps": steps, "lam_probe": probe, "n_samples": cfg.n_samples, **vals}

        res, cached = self.store.get_or_run(f"power_{sampler}_{steps}", {"part": "power", "sampler": sampler,
                                            "steps": steps, **grid_key(sampler, steps, self.model.schedule), "k": k,
                                            "n": cfg.n_samples, "probe": probe}, run)
        from .power import paired_relative_sd

        base = np.asarray(res["baseline"])
        sd = paired_relative_sd(res["baseline"], res["probe"])
        need, chosen = plan_val_sets(sd, k, cfg.n_val_sets, cfg.max_val_sets)
        from ..diagnostics.calibrate import t_half_width

        resolvable = t_half_width(sd, chosen)
        res.update(sd_paired=sd, sd_metric_rel=float(np.std(base, ddof=1) / np.mean(base)), sets_needed=need,
                   n_val_sets=chosen, effect=POWER_EFFECT, resolvable=resolvable,
                   capped=need is None or need > chosen)
        cfg.n_val_sets = chosen
        self.power = res
        self.tick(f"power: paired sd {100 * sd:.2f} % at {cfg.n_samples} samples -> {chosen} validation sets "
                  f"({need or 'too many'} needed for {100 * POWER_EFFECT:.0f} %)", cached)
        return res

    # -- 2. the main table ---------------------------------------------------------------------------------------
    def common(self) -> dict:
        cfg = self.cfg
        return dict(n_samples=cfg.n_samples, n_sets=cfg.n_sets, n_val_sets=cfg.n_val_sets, coarse=cfg.coarse,
                    refine=cfg.refine, seed=cfg.seed, schedule=self.model.schedule, batch_size=cfg.batch_size,
                    metric_name=self.metric.name, device=cfg.device)

    def search_key(self) -> dict:
        """What, besides sampler and steps, determines a calibration part (its cache key)."""
        c = self.common()
        key = {**{k: c[k] for k in ("n_samples", "n_sets", "n_val_sets", "coarse", "refine")},
               "extra": sorted(self.extra)}
        if self.cfg.min_lambda is not None:  # (absent otherwise: the parts of earlier runs keep their keys)
            key["min_lambda"] = self.cfg.min_lambda
        return key

    def calibrate(self, sampler: str, steps: int, kind: str):
        from ..diagnostics.calibrate import calibrate

        return calibrate(self.den, sampler, steps, self.model.data_shape, self.metric, kind=kind,
                         lam_range=RANGES[sampler], extra_metrics=self.extra, min_lambda=self.cfg.min_lambda,
                         **self.common())

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
                                            "steps": steps, **grid_key(sampler, steps, self.model.schedule),
                                            "range": RANGES[sampler], **self.search_key()}, run)
        res["nfe_cell"] = nfe
        self.tick(f"{sampler} {steps} steps ({res['nfe_per_sample']} NFE): λ {res['candidate']['b']:.4f}, "
                  f"metric change {100 * res['gain']:+.1f} %", cached)
        return res

    # -- 3. uniform vs linear ------------------------------------------------------------------------------------
    def linear(self, sampler: str) -> dict:
        """The linear schedule at 20 steps, chosen on the same primary metric as the uniform one."""
        steps = get_steps(sampler, 20)
        res, cached = self.store.get_or_run(f"linear_{sampler}_{steps}", {"part": "linear", "sampler": sampler,
                                            "steps": steps, **grid_key(sampler, steps, self.model.schedule),
                                            "range": RANGES[sampler], **self.search_key()},
                                            lambda: self.calibrate(sampler, steps, "linear").to_dict())
        self.tick(f"linear schedule, {sampler} {steps} steps", cached)
        return res

    # -- 4. exposure-bias curves ---------------------------------------------------------------------------------
    def exposure(self, sampler: str, schedule: Optional[dict], tag: str, nfe: int = 20) -> dict:
        """ε-norm and δ_t curves at the steps that cost ``nfe`` evaluations: baseline and with ``schedule`` (a
        schedule dict)."""
        from ..core.scaling import schedule_from_dict
        from ..diagnostics.measure import measure_exposure

        cfg, model = self.cfg, self.model
        steps = get_steps(sampler, nfe)
        es = schedule_from_dict(schedule) if schedule is not None else None

        def run():
            kw = dict(schedule=model.schedule, n_samples=cfg.n_measure, seed=cfg.seed, shape=model.data_shape,
                      device=cfg.device, batch_size=cfg.batch_size)
            base = measure_exposure(self.den, self.ds.train, sampler, steps, **kw)
            with_es = measure_exposure(self.den, self.ds.train, sampler, steps, es=es, **kw)
            return {"baseline": base.to_dict(), "es": with_es.to_dict()}

        res, cached = self.store.get_or_run(f"measure_{tag}_{sampler}_{steps}", {"part": "measure", "tag": tag,
                                            "sampler": sampler, "steps": steps, "es": schedule, "n": cfg.n_measure,
                                            **grid_key(sampler, steps, self.model.schedule)},
                                            run)
        self.tick(f"exposure curves ({tag}), {sampler} {steps} steps", cached)
        return res

    def figures(self, table: list, exposure: dict, exposure_linear: dict) -> dict:
        from ..diagnostics.measure import ExposureCurves, plot_exposure

        def curves(d):
            keys = ExposureCurves.__dataclass_fields__
            return ExposureCurves(**{k: v for k, v in d.items() if k in keys})

        figures = {}
        for tag, group in (("", exposure), ("linear_", exposure_linear)):
            for sampler, res in group.items():
                name = f"exposure_{tag}{sampler}.png"
                what = exposure_es_text(table, sampler, res["es"]["summary"]) if not tag else \
                    "the calibrated linear schedule"
                plot_exposure([curves(res["baseline"]), curves(res["es"])], self.out / name,
                              title=f"exposure bias, {SAMPLER_NAMES[sampler]}, {res['baseline']['steps']} steps, "
                                    f"ES with {what} (solid: used ε; dashed: raw network ε)")
                figures[f"exposure_{tag}{sampler}"] = name
        figures.update(_plot_lambda(table, self.cfg, self.out, self.metric.name))
        # figures an earlier run with other samplers or step counts left in this folder would sit beside the
        # report as if they were its own
        # (only repro's own names: `measure` writes exposure_SAMPLERSTEPS.png, which a shared folder keeps)
        made = set(figures.values())
        for old in (self.out / f"exposure_{tag}{s}.png" for tag in ("", "linear_") for s in SAMPLER_NAMES):
            if old.name not in made:
                old.unlink(missing_ok=True)
        return figures


def plan_val_sets(sd: float, k: int, n_min: int, n_max: int) -> tuple:
    """(sets needed, sets used) for a paired sd ``sd`` measured on ``k`` pilot sets: the paired t-test's count for
    a POWER_EFFECT change with 80 % power, planned with an 80 % upper bound on the sd, within [n_min, n_max].
    Needed is None when more than MAX_PLANNED_SETS would be (a metric this noisy): then n_max sets are used."""
    from .power import MAX_PLANNED_SETS, required_sets, sd_upper_bound

    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"the power pilot's paired sd is {sd}: it needs finite metric values on every pilot set")
    need = (required_sets(POWER_EFFECT, sd_upper_bound(sd, k, 0.8), min_sets=2, max_sets=MAX_PLANNED_SETS)
            if sd > 0 else 2)
    return need, int(min(max(n_max if need is None else need, n_min), n_max))


def get_steps(sampler: str, nfe: int) -> int:
    """Sampler steps that cost ``nfe`` network evaluations (Heun: 2N − 1, rounded up to the next odd count)."""
    from ..samplers import get_sampler

    return get_sampler(sampler).steps_for_nfe(nfe)


def run_repro(cfg: ReproConfig, log=print) -> dict:
    """The whole reproduction (resumable; see the module docstring); writes the report into ``cfg.out``."""
    from .blocks import repro_blocks
    from .claims import check_claims
    from .report import write_document
    from ..training.train import hardware

    run = _Repro(cfg, log)
    cfg = run.cfg
    power = run.choose_sets() if cfg.power else None
    table = [run.cell(s, n) for s in cfg.samplers for n in cfg.nfe]
    linear = [run.linear(s) for s in run.linear_tasks]
    # each sampler's curves at the column nearest 20 NFE (20 itself when it runs), with the λ calibrated there
    source = {s: exposure_cell(table, s) for s in run.measure_tasks}
    exposure = {s: run.exposure(s, source[s]["candidate"], "uniform", source[s]["nfe_cell"])
                for s in run.measure_tasks}
    exposure_linear = {lin["sampler"]: run.exposure(lin["sampler"], lin["candidate"], "linear") for lin in linear
                       if lin["candidate"]["kind"] == "linear"}
    results = {
        "config": asdict(cfg), "metric": run.metric.name, "model": str(cfg.model), "data": cfg.data,
        "reference": {"primary": run.metric.name, "extra": sorted(run.extra)}, "power": power,
        "table": table, "linear": linear,
        "exposure": {s: {"baseline": r["baseline"]["summary"], "es": r["es"]["summary"], "curves": r}
                     for s, r in exposure.items()},
        "exposure_linear": {s: {"baseline": r["baseline"]["summary"], "es": r["es"]["summary"], "curves": r}
                            for s, r in exposure_linear.items()},
        "figures": run.figures(table, exposure, exposure_linear), "wall_time_s": run.tick.elapsed(),
        "hardware": hardware(cfg.device), **run.store.accounting(),
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
