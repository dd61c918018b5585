"""``diffusion-es compare``: Epsilon Scaling against the other fixes for exposure bias, on the same model, the same
seeds and the same metric.

For every cell (DDPM and DDIM at each step count; EDM Euler and Heun at each NFE) and every method, the method's
parameter is tuned on *search* seed sets and the metric is then measured on fresh *validation* seed sets, the same
sets (hence the same initial and step noise) for every method: all gains are paired. The seed sets are those of
:func:`diffusion_es.diagnostics.calibrate.calibrate` (``seed·10000019 + j·n_samples …``), so the ES rows are calibrate's own.

Methods (VP cells):

* **baseline**: the plain sampler;
* **ES**: uniform λ chosen by :func:`~diffusion_es.calibrate.calibrate`;
* **TS**: the Time-Shift sampler (:mod:`diffusion_es.samplers.timeshift`), window then cutoff chosen on a small grid
  scaled to the step spacing;
* **TS+ES**: λ searched at the chosen TS setting (ES bound to the nominal grid);
* **IP**: the plain sampler on the DDPM-IP model (trained with the same recipe and ``ip_gamma`` 0.1; the report
  states what the IP model's own config.json records, :func:`ip_provenance`);
* **IP+ES**: λ calibrated on the IP model.

EDM cells: deterministic **baseline** and **ES**; **churn** (S_churn searched, S_noise 1); **churn+S_noise**
(S_noise searched at that churn; it only acts with churn > 0); **churn+S_noise+ES** (λ searched at that setting).

Every part is stored in ``OUT/parts`` (``repro``'s store, keyed by everything that determines it), so a rerun
resumes. Writes ``compare.md``, ``compare.html`` and ``results_compare.json``; :func:`compare_blocks` gives the
report blocks (the format of :mod:`diffusion_es.experiments.report`) for the repro report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from .blocks import ip_gamma_text
from .common import (CHURN_GAMMAS, IP_GAMMA, RANGES, check_unique, S_NOISE_RANGE, TS_CUTOFFS, TS_WINDOW_FRACTIONS,
                     Paired, Ticker, fingerprint, grid_key, inputs_key, load_model_and_data, method_result,
                     search_lambda, seed_sets)

__all__ = ["CompareConfig", "run_compare", "write_compare", "ip_recipe", "COMPARE_PROFILES", "ts_windows"]

COMPARE_PROFILES = {  # per dataset family, like repro's
    "digits": {
        "quick": dict(steps=[10, 20], edm_nfe=[10], n_samples=200, n_sets=1, n_val_sets=3, coarse=3, refine=1),
        "full": dict(steps=[10, 20, 50], edm_nfe=[10, 20], n_samples=500, n_sets=2, n_val_sets=3, coarse=4,
                     refine=2),
    },
    "mnist": {
        "quick": dict(steps=[10, 20], edm_nfe=[10], n_samples=250, n_sets=1, n_val_sets=3, coarse=3, refine=1),
        "full": dict(steps=[10, 20], edm_nfe=[10, 20], n_samples=1000, n_sets=1, n_val_sets=4, coarse=3,
                     refine=1),
    },
}


@dataclass
class CompareConfig:
    model: str = "default"
    ip_model: Optional[str] = "auto"   # auto: the shipped digits_ip with the default model; a folder; or None
    train_ip: bool = False             # train the IP model into OUT/ip_model when none is given (slow on a CPU)
    data: Optional[str] = None         # None: the model's own training data (its config.json), else digits
    out: str = "compare_out"
    quick: bool = False
    samplers: Optional[list] = None  # VP rows; None: ddpm, ddim for a VP model, none for an EDM / PFGM++ model
    edm_samplers: list = field(default_factory=lambda: ["euler", "heun"])
    steps: Optional[list] = None
    edm_nfe: Optional[list] = None
    n_samples: Optional[int] = None
    n_sets: Optional[int] = None
    n_val_sets: Optional[int] = None
    coarse: Optional[int] = None
    refine: Optional[int] = None
    ts_rule: str = "data"              # data: v(τ) = ᾱ_τ Var(x_0) + 1 − ᾱ_τ; paper: v(τ) = 1 − ᾱ_τ
    ref: str = "heldout"               # the metric's reference: data the model never saw
    device: str = "cpu"
    batch_size: Optional[int] = None  # None: samplers.auto_batch_size of the model (on the CPU, fewer page faults)
    seed: int = 0
    command: Optional[str] = None  # the command line that ran it (the CLI sets it), for the report's provenance

    def resolved(self, data_name: str = "digits") -> "CompareConfig":
        prof = COMPARE_PROFILES["mnist" if data_name == "mnist" else "digits"]["quick" if self.quick else "full"]
        d = asdict(self)
        for k, v in prof.items():
            if d.get(k) is None:
                d[k] = v
        c = CompareConfig(**d)
        bad = [s for s in c.samplers or [] if s not in ("ddpm", "ddim")] + [s for s in c.edm_samplers
                                                                       if s not in ("euler", "heun")]
        if bad:
            raise UsageError(f"unknown sampler(s) {bad}: VP rows take ddpm,ddim; EDM rows take euler,heun")
        if any(int(n) < 2 for n in list(c.steps) + list(c.edm_nfe)):
            raise UsageError("steps and edm_nfe need counts >= 2, e.g. 10,20,50")
        for what, values in (("samplers", c.samplers), ("edm_samplers", c.edm_samplers), ("steps", c.steps),
                             ("edm_nfe", c.edm_nfe)):
            check_unique(values, what)
        if c.n_samples < 10:
            raise UsageError(f"n_samples must be at least 10 per seed set, got {c.n_samples}")
        if c.n_val_sets < 2:
            raise UsageError("n_val_sets (validation seed sets) must be at least 2 to give a spread")
        if c.ts_rule not in ("data", "paper"):
            raise UsageError(f"ts_rule must be data or paper, got {c.ts_rule!r}")
        return c


def ts_windows(T: int, steps: int) -> list:
    """Candidate TS windows for a chain of ``steps`` steps: fractions of the step spacing, odd, at least 3."""
    spacing = (T - 1) / max(steps - 1, 1)
    out = []
    for f in TS_WINDOW_FRACTIONS:
        w = max(3, int(round(f * spacing)) | 1)
        if w not in out:
            out.append(w)
    return out


# ---- the IP model ------------------------------------------------------------------------------------------------
def ip_recipe(base_config: dict) -> dict:
    """Training options of the IP twin of a model: the base model's recorded options and step count, with
    ``ip_gamma`` = 0.1 (its weights are those of ``training.step``; with a constant learning rate that equals a run
    of that many steps)."""
    tr = base_config.get("training") or {}
    opts = dict(tr.get("options") or {})
    if not opts:
        raise UsageError("the model's config.json records no training options, so its IP twin cannot be trained "
                         "with the same recipe; pass --ip-model PATH")
    step = int(tr.get("step") or opts.get("steps"))
    if opts.get("lr_schedule", "constant") != "constant" and step != int(opts.get("steps", step)):
        raise UsageError("the model is a snapshot of a run with a decaying learning rate; a run of the same length "
                         "would differ. Train the IP twin by hand and pass --ip-model PATH")
    opts.update(steps=step, ip_gamma=IP_GAMMA, keep_every=0)
    return opts


# training options that say how often a run saved or logged, not what it learned
_BOOKKEEPING = ("steps", "ip_gamma", "keep_every", "ckpt_every", "log_every", "eval_every")


def ip_provenance(base_config: dict, ip_config: dict) -> dict:
    """What the IP model's own config.json says about it, next to the base model's: its ``ip_gamma`` (None: not
    recorded), the training options in which the two differ (None: either records none; bookkeeping such as
    checkpoint intervals left out), both step counts, and whether network and diffusion are the same. The report
    states these rather than assuming the IP model was trained as ``ip_recipe`` would have."""
    tb, ti = base_config.get("training") or {}, ip_config.get("training") or {}
    ob, oi = tb.get("options") or {}, ti.get("options") or {}
    differ = None if not (ob and oi) else sorted(k for k in set(ob) | set(oi)
                                                 if k not in _BOOKKEEPING and ob.get(k) != oi.get(k))
    return {"ip_gamma": oi.get("ip_gamma") if oi else None, "options_differ": differ,
            "steps": ti.get("step", oi.get("steps")), "base_steps": tb.get("step", ob.get("steps")),
            "same_network": base_config.get("model") == ip_config.get("model"),
            "same_diffusion": base_config.get("diffusion") == ip_config.get("diffusion")}


def _train_ip(base, out: Path, device, log) -> Path:
    from ..models.config import ModelConfig
    from ..training.train import STATE_FILE, TrainConfig, train

    opts = ip_recipe(base.config)
    d = out / "ip_model"
    other = (f"{d} holds the IP twin of another model (trained with another recipe than {base.path}'s); give "
             f"compare another --out, or delete that folder")
    if (d / "config.json").exists():
        from ..models import read_config

        have = read_config(d)
        got = have.get("training", {}).get("options", {})
        if (any(got.get(k) != v for k, v in opts.items() if k != "steps")
                or any(have.get("model", {}).get(k) != v for k, v in base.config["model"].items())
                or have.get("diffusion") != base.config["diffusion"]):
            raise UsageError(other)  # (it was reused whenever its step count matched)
        if int(have.get("training", {}).get("step", -1)) == opts["steps"]:
            return d
    log(f"training the IP model into {d} ({opts['steps']} steps, ip_gamma {IP_GAMMA}); this is slow on a CPU")
    resume = (d / STATE_FILE).exists()
    train(d, TrainConfig.from_dict(opts), model=ModelConfig.from_dict(base.config["model"]),
          diffusion=base.config["diffusion"], device=device, resume=resume, progress=False,
          command=f"diffusion-es compare --train-ip (recipe of {base.path})")
    return d


def _resolve_ip(cfg: CompareConfig, base, out: Path, log) -> Optional[Path]:
    if cfg.ip_model in (None, "", "none"):
        return _train_ip(base, out, cfg.device, log) if cfg.train_ip else None
    if cfg.ip_model == "auto":
        from importlib.resources import files

        shipped = Path(str(files("diffusion_es") / "assets" / "digits_ip"))
        if str(cfg.model) == "default" and (shipped / "config.json").exists():
            return shipped
        return _train_ip(base, out, cfg.device, log) if cfg.train_ip else None
    if cfg.train_ip:
        raise UsageError(f"--train-ip trains an IP model when none is given, but --ip-model {cfg.ip_model} names one: "
                         f"drop one of them")
    return Path(cfg.ip_model)


# ---- the job --------------------------------------------------------------------------------------------------
class _Comparison:
    """One run: the model, metric, seed sets and part store every cell shares."""

    def __init__(self, cfg: "CompareConfig", log):
        from ..metrics.quality import build_metric
        from ..models import load_model
        from ..samplers import data_variance
        from ..store import PartStore

        self.model, self.den, ds = load_model_and_data(cfg.model, cfg.data, cfg.device)
        if self.model.process == "flow":
            raise UsageError("compare sets time-shift and input perturbation (VP models) and EDM's churn / S_noise "
                             "beside ES; none of them applies to a rectified-flow model: measure ES on it with "
                             "repro or calibrate (--sampler flow_euler / flow_heun)")
        cfg = cfg.resolved(ds.description.get("name", ""))
        if cfg.samplers is None:
            cfg.samplers = [] if self.model.process == "edm" else ["ddpm", "ddim"]
        elif cfg.samplers and self.model.process == "edm":
            raise UsageError("this EDM / PFGM++ model has no VP rows (ddpm, ddim): leave --samplers out or pass "
                             "--samplers none; its rows are --edm-samplers euler,heun")
        if not cfg.samplers and not cfg.edm_samplers:
            raise UsageError("no rows to compare: give --samplers (VP) or --edm-samplers (EDM)")
        cfg.data = ds.description["spec"]
        from ..samplers import resolve_batch_size

        cfg.batch_size = resolve_batch_size(cfg.batch_size, self.den, self.model.data_shape, cfg.device)
        self.cfg, self.log = cfg, log
        out = Path(cfg.out)
        self.metric = build_metric(cfg.data, cfg.ref, shape=self.model.data_shape)
        self.ip_path = _resolve_ip(cfg, self.model, out, log)
        self.ip = load_model(self.ip_path, device=cfg.device) if self.ip_path is not None else None
        if self.ip is not None and tuple(self.ip.data_shape) != tuple(self.model.data_shape):
            raise UsageError(f"the IP model {self.ip_path} makes samples of shape {tuple(self.ip.data_shape)}, the "
                             f"model {tuple(self.model.data_shape)}")
        self.data_var = data_variance(ds.train) if cfg.ts_rule == "data" else 0.0
        self.store = PartStore(out, {**inputs_key(self.model, cfg.data, cfg.ref),
                                     "ip": fingerprint(self.ip) if self.ip else None,
                                     "seed": cfg.seed, "version": 3})  # 3: searches extend
        sets = seed_sets(cfg.seed, cfg.n_samples, cfg.n_sets + cfg.n_val_sets)
        self.ev_kw = dict(search_sets=sets[:cfg.n_sets], val_sets=sets[cfg.n_sets:])
        self.common = {k: getattr(cfg, k) for k in ("n_samples", "n_sets", "n_val_sets", "coarse", "refine")}
        n_vp = len(cfg.samplers) * len(cfg.steps) * (3 if self.ip is not None else 2)
        self.tick = Ticker(n_vp + len(cfg.edm_samplers) * len(cfg.edm_nfe) * 2, log)

    def draw(self, sampler, steps, lam=None, **opts):
        """A function seeds -> samples of one setting (λ uniform or None; sampler options)."""
        from ..samplers import sample

        cfg = self.cfg
        return lambda seeds: sample(self.den, sampler, steps, self.model.data_shape, seeds,
                                    schedule=self.model.schedule, es=lam, batch_size=cfg.batch_size,
                                    device=cfg.device, **opts)

    def es_part(self, den, sampler, steps) -> dict:
        from ..diagnostics.calibrate import calibrate

        cfg = self.cfg
        return calibrate(den, sampler, steps, self.model.data_shape, self.metric, kind="uniform",
                         lam_range=RANGES[sampler], **self.common, seed=cfg.seed, schedule=self.model.schedule,
                         batch_size=cfg.batch_size, metric_name=self.metric.name, device=cfg.device).to_dict()

    def es_cell(self, cell: dict, den=None, name: str = "es") -> dict:
        """Baseline and ES (calibrate's uniform search) of a cell; returns the calibration result."""
        sampler, steps = cell["sampler"], cell["steps"]
        es, cached = self.store.get_or_run(f"cmp_{name}_{sampler}_{steps}",
                                           {"part": name, "sampler": sampler, "steps": steps,
                                            **grid_key(sampler, steps, self.model.schedule),
                                            "range": RANGES[sampler], **self.common},
                                           lambda: self.es_part(den or self.den, sampler, steps))
        return es, cached

    # -- VP cells: ES, TS, TS+ES, IP, IP+ES --------------------------------------------------------------------
    def vp_cell(self, sampler: str, steps: int) -> dict:
        cell = {"kind": "vp", "sampler": sampler, "steps": steps, "nfe": steps, "methods": {}}
        es, cached = self.es_cell(cell)
        base_val = es["baseline_val"]
        cell["methods"]["baseline"] = method_result(base_val, base_val, {}, "")
        cell["methods"]["ES"] = method_result(es["best_val"], base_val, {"lam": es["candidate"]["b"]},
                                              f"λ {es['candidate']['b']:.4f}", _lam_search(es))
        self.tick(f"{sampler} {steps} steps: ES λ {es['candidate']['b']:.4f}", cached)
        ts, cached = self.store.get_or_run(
            f"cmp_ts_{sampler}_{steps}", {"part": "ts", "sampler": sampler, "steps": steps,
                                          **grid_key(sampler, steps, self.model.schedule), "rule": self.cfg.ts_rule,
                                          "windows": TS_WINDOW_FRACTIONS, "cutoffs": TS_CUTOFFS,
                                          "range": RANGES[sampler], **self.common},
            lambda: self.time_shift(sampler, steps, base_val))
        where = {"window": ts["window"], "cutoff": ts["cutoff"]}
        cell["methods"]["TS"] = method_result(ts["ts_val"], base_val, where,
                                              f"w {ts['window']}, t_c {ts['cutoff']}", ts["ts_search"])
        cell["methods"]["TS+ES"] = method_result(ts["tses_val"], base_val, {**where, "lam": ts["lam"]},
                                                 f"w {ts['window']}, t_c {ts['cutoff']}, λ {ts['lam']:.4f}",
                                                 ts["tses_search"])
        cell["ts_window1_equals_baseline"] = ts["window1_equals_baseline"]
        self.tick(f"{sampler} {steps} steps: TS w {ts['window']} t_c {ts['cutoff']}, TS+ES λ {ts['lam']:.4f}", cached)
        if self.ip is not None:
            ipr, cached = self.es_cell(cell, self.ip.denoiser(), "ip")
            gamma = ip_gamma_text(ip_provenance(self.model.config, self.ip.config))
            cell["methods"]["IP"] = method_result(ipr["baseline_val"], base_val, {}, gamma)
            cell["methods"]["IP+ES"] = method_result(ipr["best_val"], base_val, {"lam": ipr["candidate"]["b"]},
                                                     f"{gamma}, λ {ipr['candidate']['b']:.4f}", _lam_search(ipr))
            cell["ip_es_vs_ip"] = {"gain": ipr["gain"], "gain_ci": list(ipr["gain_ci"])}
            self.tick(f"{sampler} {steps} steps: IP, IP+ES λ {ipr['candidate']['b']:.4f}", cached)
        return cell

    def time_shift(self, sampler: str, steps: int, base_val: list) -> dict:
        """TS window then cutoff on the search sets, then λ on top; validated on the fresh sets."""
        from ..samplers import TimeShift

        ev, cfg, dv = Paired(self.metric, **self.ev_kw), self.cfg, self.data_var

        def draw(w, c, lam=None):
            return self.draw(sampler, steps, lam, time_shift=TimeShift(w, c, dv))

        evals = []

        def score(w, c):
            m = ev.mean(f"w={w},c={c}", draw(w, c))
            evals.append({"window": w, "cutoff": c, "mean": m})
            return m

        w_best = min(ts_windows(self.model.schedule.T, steps), key=lambda w: score(w, TS_CUTOFFS[0]))
        c_best = min(TS_CUTOFFS, key=lambda c: score(w_best, c))
        key = f"w={w_best},c={c_best}"
        ts_val = ev(key, draw(w_best, c_best), "val")
        # invariant: window 1 is the plain sampler (same metric, bit for bit, on validation set 1)
        one = float(self.metric(draw(1, 0)(self.ev_kw["val_sets"][0])))
        lam, lam_evals = search_lambda(ev, lambda lam, seeds: draw(w_best, c_best, lam)(seeds), key,
                                       *RANGES[sampler], cfg.coarse, cfg.refine)
        return {"window": w_best, "cutoff": c_best, "data_var": dv, "ts_val": ts_val, "ts_search": evals,
                "window1_metric": one, "window1_equals_baseline": one == base_val[0], "lam": lam,
                "tses_val": ev(f"{key}|lam={lam!r}", draw(w_best, c_best, lam), "val"), "tses_search": lam_evals}

    # -- EDM cells: ES, churn, churn + S_noise, + ES ------------------------------------------------------------
    def edm_cell(self, sampler: str, nfe: int) -> dict:
        from ..samplers import get_sampler

        spec = get_sampler(sampler)
        steps = spec.steps_for_nfe(nfe)
        cell = {"kind": "edm", "sampler": sampler, "steps": steps, "nfe": spec.nfe(steps), "nfe_cell": nfe,
                "methods": {}}
        es, cached = self.es_cell(cell)
        base_val = es["baseline_val"]
        cell["methods"]["baseline"] = method_result(base_val, base_val, {}, "")
        cell["methods"]["ES"] = method_result(es["best_val"], base_val, {"lam": es["candidate"]["b"]},
                                              f"λ {es['candidate']['b']:.4f}")
        self.tick(f"{sampler} {cell['nfe']} NFE: ES λ {es['candidate']['b']:.4f}", cached)
        ch, cached = self.store.get_or_run(
            f"cmp_churn_{sampler}_{steps}", {"part": "churn", "sampler": sampler, "steps": steps,
                                             "gammas": CHURN_GAMMAS, "s_noise": S_NOISE_RANGE,
                                             "range": RANGES[sampler], **self.common},
            lambda: self.churn(sampler, steps))
        c = f"S_churn {ch['S_churn']:.3g}"
        cell["methods"]["churn"] = method_result(ch["churn_val"], base_val, {"S_churn": ch["S_churn"], "S_noise": 1.0},
                                                 c, ch["churn_search"])
        both = {"S_churn": ch["S_churn"], "S_noise": ch["S_noise"]}
        cell["methods"]["churn+S_noise"] = method_result(ch["sn_val"], base_val, both,
                                                         f"{c}, S_noise {ch['S_noise']:.4f}", ch["sn_search"])
        cell["methods"]["churn+S_noise+ES"] = method_result(
            ch["es_val"], base_val, {**both, "lam": ch["lam"]}, f"{c}, S_noise {ch['S_noise']:.4f}, λ {ch['lam']:.4f}",
            ch["lam_search"])
        self.tick(f"{sampler} {cell['nfe']} NFE: churn {ch['S_churn']:.3g}, S_noise {ch['S_noise']:.4f}", cached)
        return cell

    def churn(self, sampler: str, steps: int) -> dict:
        """S_churn (per-step γ grid) at S_noise = 1, then S_noise (upward search), then λ; validated."""
        from ..diagnostics.calibrate import search_1d

        ev, cfg = Paired(self.metric, **self.ev_kw), self.cfg

        def draw(churn, s_noise, lam=None):
            return self.draw(sampler, steps, lam, S_churn=churn, S_noise=s_noise)

        churn_evals, sn_evals = [], []

        def score_churn(g):
            m = ev.mean(f"churn={g * steps!r},sn=1.0", draw(g * steps, 1.0))
            churn_evals.append({"S_churn": g * steps, "gamma": g, "mean": m})
            return m

        g_best = min(CHURN_GAMMAS, key=score_churn)
        churn = g_best * steps

        def score_sn(sn):
            m = ev.mean(f"churn={churn!r},sn={sn!r}", draw(churn, sn))
            sn_evals.append({"S_noise": sn, "mean": m})
            return m

        sn, _ = search_1d(score_sn, *S_NOISE_RANGE, max(cfg.coarse, 2), cfg.refine,
                          floor=S_NOISE_RANGE[0] - 1e-12)  # inflation only: S_noise >= 1
        key = f"churn={churn!r},sn={sn!r}"
        lam, lam_evals = search_lambda(ev, lambda lam, seeds: draw(churn, sn, lam)(seeds), key, *RANGES[sampler],
                                       cfg.coarse, cfg.refine)
        return {"S_churn": churn, "gamma": g_best, "S_noise": float(sn), "lam": lam,
                "churn_val": ev(f"churn={churn!r},sn=1.0", draw(churn, 1.0), "val"),
                "sn_val": ev(key, draw(churn, sn), "val"), "es_val": ev(f"{key}|lam={lam!r}", draw(churn, sn, lam), "val"),
                "churn_search": churn_evals, "sn_search": sn_evals, "lam_search": lam_evals}

    def results(self, cells: list) -> dict:
        from ..training.train import hardware

        cfg, ip = self.cfg, self.ip
        return {
            "config": asdict(cfg), "metric": self.metric.name, "model": str(cfg.model),
            "ip_model": None if self.ip_path is None else str(self.ip_path),
            "ip_training": None if ip is None else {k: ip.config.get("training", {}).get(k) for k in
                                                    ("options", "step", "train_seconds", "hardware", "final_loss",
                                                     "heldout_loss_ema")},
            "ip_provenance": None if ip is None else ip_provenance(self.model.config, ip.config),
            "ts_rule": cfg.ts_rule, "ts_data_var": self.data_var,
            "seed_sets": {"search": cfg.n_sets, "val": cfg.n_val_sets, "n_samples": cfg.n_samples},
            "cells": cells, "wall_time_s": self.tick.elapsed(), "hardware": hardware(cfg.device),
            **self.store.accounting(),
        }


def _lam_search(cal: dict) -> list:
    return [{"lam": 1.0 if e["schedule"] is None else e["schedule"]["b"], "mean": e["mean"]}
            for e in cal["evaluations"]]


def run_compare(cfg: CompareConfig, log=print) -> dict:
    """Every method on every cell (resumable; see the module docstring); writes the report into ``cfg.out``."""
    run = _Comparison(cfg, log)
    cfg = run.cfg
    cells = [run.vp_cell(s, k) for s in cfg.samplers for k in cfg.steps]
    cells += [run.edm_cell(s, n) for s in cfg.edm_samplers for n in cfg.edm_nfe]
    results = run.results(cells)
    write_compare(results, cfg.out)
    return results


def write_compare(results: dict, out) -> None:
    from .blocks import compare_blocks, cost_line
    from .report import write_document

    cfg = results["config"]
    cmd = cfg.get("command")
    if not cmd:
        cmd = "diffusion-es compare" + (" --quick" if cfg["quick"] else "") + f" --out {cfg['out']}"
        if cfg["model"] != "default":
            cmd += f" --model {cfg['model']}"
    head = [("h1", "Exposure-bias fixes compared"),
            ("p", f"Generated by `{cmd}`. {cost_line(results)}. Do not edit by hand (rerun the command, it resumes "
                  f"from `{cfg['out']}/parts`).")]
    write_document(head + compare_blocks(results), results, out, "compare", "results_compare.json",
                   "diffusion-es: exposure-bias fixes compared")
