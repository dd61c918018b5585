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
* **IP**: the plain sampler on the DDPM-IP model (trained with the same recipe and ``ip_gamma`` 0.1);
* **IP+ES**: λ calibrated on the IP model.

EDM cells: deterministic **baseline** and **ES**; **churn** (S_churn searched, S_noise 1); **churn+S_noise**
(S_noise searched at that churn; it only acts with churn > 0); **churn+S_noise+ES** (λ searched at that setting).

Every part is stored in ``OUT/parts`` (``repro``'s store, keyed by everything that determines it), so a rerun
resumes. Writes ``compare.md``, ``compare.html`` and ``results_compare.json``; :func:`compare_blocks` gives the
report blocks (the format of :mod:`diffusion_es.experiments.report`) for the repro report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UsageError

__all__ = ["CompareConfig", "run_compare", "compare_blocks", "write_compare", "ip_recipe", "COMPARE_PROFILES"]

VP_METHODS = ("baseline", "ES", "TS", "TS+ES", "IP", "IP+ES")
EDM_METHODS = ("baseline", "ES", "churn", "churn+S_noise", "churn+S_noise+ES")
TS_WINDOW_FRACTIONS = (0.1, 0.25, 0.5)   # window as a fraction of the nominal step spacing
TS_CUTOFFS = (300, 100, 600)             # the first is used while the window is searched
CHURN_GAMMAS = (0.05, 0.15, 0.4)         # EDM's per-step γ = S_churn / steps (capped at √2 − 1 by the sampler)
S_NOISE_RANGE = (1.0, 1.06)
IP_GAMMA = 0.1

COMPARE_PROFILES = {
    "quick": dict(steps=[10, 20], edm_nfe=[10], n_samples=200, n_sets=1, n_val_sets=3, coarse=3, refine=1),
    "full": dict(steps=[10, 20, 50], edm_nfe=[10, 20], n_samples=500, n_sets=2, n_val_sets=3, coarse=4, refine=2),
}


@dataclass
class CompareConfig:
    model: str = "default"
    ip_model: Optional[str] = "auto"   # auto: the shipped digits_ip with the default model; a folder; or None
    train_ip: bool = False             # train the IP model into OUT/ip_model when none is given (slow on a CPU)
    data: str = "digits"
    out: str = "compare_out"
    quick: bool = False
    samplers: list = field(default_factory=lambda: ["ddpm", "ddim"])
    edm_samplers: list = field(default_factory=lambda: ["euler", "heun"])
    steps: Optional[list] = None
    edm_nfe: Optional[list] = None
    n_samples: Optional[int] = None
    n_sets: Optional[int] = None
    n_val_sets: Optional[int] = None
    coarse: Optional[int] = None
    refine: Optional[int] = None
    ts_rule: str = "data"              # data: v(τ) = ᾱ_τ Var(x_0) + 1 − ᾱ_τ; paper: v(τ) = 1 − ᾱ_τ
    ref: str = "train"
    device: str = "cpu"
    batch_size: int = 500
    seed: int = 0

    def resolved(self) -> "CompareConfig":
        prof = COMPARE_PROFILES["quick" if self.quick else "full"]
        d = asdict(self)
        for k, v in prof.items():
            if d.get(k) is None:
                d[k] = v
        c = CompareConfig(**d)
        bad = [s for s in c.samplers if s not in ("ddpm", "ddim")] + [s for s in c.edm_samplers
                                                                       if s not in ("euler", "heun")]
        if bad:
            raise UsageError(f"unknown sampler(s) {bad}: VP rows take ddpm,ddim; EDM rows take euler,heun")
        if any(int(n) < 2 for n in list(c.steps) + list(c.edm_nfe)):
            raise UsageError("--steps and --edm-nfe need counts >= 2, e.g. 10,20,50")
        if c.n_samples < 10:
            raise UsageError(f"--samples must be at least 10 per seed set, got {c.n_samples}")
        if c.n_val_sets < 2:
            raise UsageError("--seeds (validation seed sets) must be at least 2 to give a spread")
        if c.ts_rule not in ("data", "paper"):
            raise UsageError(f"--ts-rule must be data or paper, got {c.ts_rule!r}")
        return c


# ---- paired evaluation --------------------------------------------------------------------------------------
class _Paired:
    """Metric of a sampling setting on the fixed search / validation seed sets, cached by a key."""

    def __init__(self, metric, search_sets, val_sets, log=None):
        self.metric, self.sets = metric, {"search": search_sets, "val": val_sets}
        self.cache, self.log = {}, log

    def __call__(self, key: str, draw: Callable, which: str = "search") -> list:
        k = (which, key)
        if k not in self.cache:
            self.cache[k] = [float(self.metric(draw(seeds))) for seeds in self.sets[which]]
        return self.cache[k]

    def mean(self, key, draw, which="search") -> float:
        return float(np.mean(self(key, draw, which)))


def _method(val, base_val, param: dict, label: str, search=None) -> dict:
    from ..diagnostics.calibrate import paired_gain

    per, g, ci = paired_gain(base_val, val)
    return {"param": param, "label": label, "val": list(map(float, val)), "gain": g, "gain_ci": list(ci),
            "gain_per_set": per, "significant": bool(ci[1] < 0), "search": search or []}


def _search_lambda(ev: _Paired, draw_lam: Callable, prefix: str, lo: float, hi: float, coarse: int, refine: int):
    """1-D coarse-to-fine λ search (calibrate's) on the search sets; returns (best λ, evaluations)."""
    from ..diagnostics.calibrate import _search_1d

    evals = []

    def score(lam):
        m = ev.mean(f"{prefix}|lam={lam!r}", lambda seeds: draw_lam(lam, seeds))
        evals.append({"lam": lam, "mean": m})
        return m

    best, _ = _search_1d(score, lo, hi, max(coarse, 2), refine, floor=0.0)
    return float(best), evals


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


def _train_ip(base, out: Path, device, log) -> Path:
    from ..models.config import ModelConfig
    from ..training.train import STATE_FILE, TrainConfig, train

    opts = ip_recipe(base.config)
    d = out / "ip_model"
    if (d / "config.json").exists():
        from ..models import read_config

        if int(read_config(d).get("training", {}).get("step", -1)) == opts["steps"]:
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
    return Path(cfg.ip_model)


# ---- the job --------------------------------------------------------------------------------------------------
def run_compare(cfg: CompareConfig, log=print) -> dict:
    from ..diagnostics.calibrate import calibrate
    from ..models import load_model
    from ..metrics.quality import build_metric
    from .repro import RANGES, _model_fingerprint, _Store, load_model_and_data, steps_for
    from ..samplers import SamplingPlan, sample
    from ..samplers.timeshift import data_variance, sample_timeshift
    from ..core.scaling import Uniform

    cfg = cfg.resolved()
    t0 = time.time()
    out = Path(cfg.out)
    model, den, ds = load_model_and_data(cfg.model, cfg.data, cfg.device)
    metric = build_metric(cfg.data, cfg.ref, shape=model.data_shape)
    ip_path = _resolve_ip(cfg, model, out, log)
    ip = load_model(ip_path, device=cfg.device) if ip_path is not None else None
    if ip is not None and tuple(ip.data_shape) != tuple(model.data_shape):
        raise UsageError(f"the IP model {ip_path} makes samples of shape {tuple(ip.data_shape)}, the model "
                         f"{tuple(model.data_shape)}")
    ip_den = ip.denoiser() if ip is not None else None
    data_var = data_variance(ds.train) if cfg.ts_rule == "data" else 0.0
    fp = {"model": _model_fingerprint(model), "ip": _model_fingerprint(ip) if ip else None, "data": cfg.data,
          "ref": cfg.ref, "seed": cfg.seed, "version": 3}  # 3: searches walk past a winning range end
    store = _Store(out, fp)
    n, shape, sch = cfg.n_samples, model.data_shape, model.schedule
    base_seed = cfg.seed * 10_000_019
    sets = [list(range(base_seed + j * n, base_seed + (j + 1) * n)) for j in range(cfg.n_sets + cfg.n_val_sets)]
    ev_kw = dict(search_sets=sets[:cfg.n_sets], val_sets=sets[cfg.n_sets:])
    cal_kw = dict(n_samples=n, n_sets=cfg.n_sets, n_val_sets=cfg.n_val_sets, coarse=cfg.coarse,
                  refine=cfg.refine, seed=cfg.seed, schedule=sch, batch_size=cfg.batch_size,
                  metric_name=metric.name, device=cfg.device)
    common = {k: cal_kw[k] for k in ("n_samples", "n_sets", "n_val_sets", "coarse", "refine")}
    bs, dev = cfg.batch_size, cfg.device
    vp_cells = [(s, k) for s in cfg.samplers for k in cfg.steps]
    edm_cells = [(s, k) for s in cfg.edm_samplers for k in cfg.edm_nfe]
    total = len(vp_cells) * (3 if ip is not None else 2) + len(edm_cells) * 2
    done = 0

    def tick(what, cached):
        nonlocal done
        done += 1
        log(f"[{done}/{total}] {what}{' (cached)' if cached else ''}  {time.time() - t0:6.0f} s")

    def es_part(d, sampler, steps, **kw):
        r = calibrate(d, sampler, steps, shape, metric, kind="uniform", lam_range=RANGES[sampler], **cal_kw, **kw)
        return r.to_dict()

    cells = []
    for sampler, steps in vp_cells:
        kw = {"eta": 0.0} if sampler == "ddim" else {}
        cell = {"kind": "vp", "sampler": sampler, "steps": steps, "nfe": steps, "methods": {}}
        # ES (and the baseline, on the validation sets)
        es, cached = store.get_or_run(f"cmp_es_{sampler}_{steps}", {"part": "es", "sampler": sampler,
                                      "steps": steps, "range": RANGES[sampler], **common},
                                      lambda: es_part(den, sampler, steps, **kw))
        base_val = es["baseline_val"]
        cell["methods"]["baseline"] = _method(base_val, base_val, {}, "")
        cell["methods"]["ES"] = _method(es["best_val"], base_val, {"lam": es["candidate"]["b"]},
                                        f"λ {es['candidate']['b']:.4f}",
                                        [{"lam": 1.0 if e["schedule"] is None else e["schedule"]["b"],
                                          "mean": e["mean"]} for e in es["evaluations"]])
        tick(f"{sampler} {steps} steps: ES λ {es['candidate']['b']:.4f}", cached)

        # TS, then TS + ES
        def run_ts(sampler=sampler, steps=steps, kw=kw, base_val=base_val):
            ev = _Paired(metric, **ev_kw)

            def draw(window, cutoff, lam=None):
                return lambda seeds: sample_timeshift(den, sampler, steps, shape, seeds, schedule=sch,
                                                      es=None if lam is None else Uniform(lam), window=window,
                                                      cutoff=cutoff, data_var=data_var, batch_size=bs, device=dev,
                                                      **kw)

            evals = []

            def score(w, c):
                m = ev.mean(f"w={w},c={c}", draw(w, c))
                evals.append({"window": w, "cutoff": c, "mean": m})
                return m

            wins = ts_windows(sch.T, steps)
            c0 = TS_CUTOFFS[0]
            w_best = min(wins, key=lambda w: score(w, c0))
            c_best = min(TS_CUTOFFS, key=lambda c: score(w_best, c))
            ts_val = ev(f"w={w_best},c={c_best}", draw(w_best, c_best), "val")
            # invariant: window 1 is the plain sampler (same metric, bit for bit, on validation set 1)
            one = float(metric(draw(1, 0)(ev_kw["val_sets"][0])))
            lo, hi = RANGES[sampler]
            lam, lam_evals = _search_lambda(ev, lambda l, seeds: draw(w_best, c_best, l)(seeds),
                                            f"w={w_best},c={c_best}", lo, hi, cfg.coarse, cfg.refine)
            tses_val = ev(f"w={w_best},c={c_best}|lam={lam!r}", draw(w_best, c_best, lam), "val")
            return {"window": w_best, "cutoff": c_best, "data_var": data_var, "ts_val": ts_val, "ts_search": evals,
                    "window1_metric": one, "window1_equals_baseline": one == base_val[0], "lam": lam,
                    "tses_val": tses_val, "tses_search": lam_evals}

        ts, cached = store.get_or_run(f"cmp_ts_{sampler}_{steps}", {"part": "ts", "sampler": sampler, "steps": steps,
                                      "rule": cfg.ts_rule, "windows": TS_WINDOW_FRACTIONS, "cutoffs": TS_CUTOFFS,
                                      "range": RANGES[sampler], **common}, run_ts)
        cell["methods"]["TS"] = _method(ts["ts_val"], base_val, {"window": ts["window"], "cutoff": ts["cutoff"]},
                                        f"w {ts['window']}, t_c {ts['cutoff']}", ts["ts_search"])
        cell["methods"]["TS+ES"] = _method(ts["tses_val"], base_val, {"window": ts["window"], "cutoff": ts["cutoff"],
                                           "lam": ts["lam"]}, f"w {ts['window']}, t_c {ts['cutoff']}, "
                                           f"λ {ts['lam']:.4f}", ts["tses_search"])
        cell["ts_window1_equals_baseline"] = ts["window1_equals_baseline"]
        tick(f"{sampler} {steps} steps: TS w {ts['window']} t_c {ts['cutoff']}, TS+ES λ {ts['lam']:.4f}", cached)

        if ip is not None:
            ipr, cached = store.get_or_run(f"cmp_ip_{sampler}_{steps}", {"part": "ip", "sampler": sampler,
                                           "steps": steps, "range": RANGES[sampler], **common},
                                           lambda: es_part(ip_den, sampler, steps, **kw))
            cell["methods"]["IP"] = _method(ipr["baseline_val"], base_val, {}, "γ 0.1")
            cell["methods"]["IP+ES"] = _method(ipr["best_val"], base_val, {"lam": ipr["candidate"]["b"]},
                                               f"γ 0.1, λ {ipr['candidate']['b']:.4f}",
                                               [{"lam": 1.0 if e["schedule"] is None else e["schedule"]["b"],
                                                 "mean": e["mean"]} for e in ipr["evaluations"]])
            cell["ip_es_vs_ip"] = {"gain": ipr["gain"], "gain_ci": list(ipr["gain_ci"])}
            tick(f"{sampler} {steps} steps: IP, IP+ES λ {ipr['candidate']['b']:.4f}", cached)
        cells.append(cell)

    for sampler, nfe in edm_cells:
        steps = steps_for(sampler, nfe)
        nfe_real = SamplingPlan(sampler, steps, sch).nfe
        cell = {"kind": "edm", "sampler": sampler, "steps": steps, "nfe": nfe_real, "nfe_cell": nfe, "methods": {}}
        es, cached = store.get_or_run(f"cmp_es_{sampler}_{steps}", {"part": "es", "sampler": sampler,
                                      "steps": steps, "range": RANGES[sampler], **common},
                                      lambda: es_part(den, sampler, steps))
        base_val = es["baseline_val"]
        cell["methods"]["baseline"] = _method(base_val, base_val, {}, "")
        cell["methods"]["ES"] = _method(es["best_val"], base_val, {"lam": es["candidate"]["b"]},
                                        f"λ {es['candidate']['b']:.4f}")
        tick(f"{sampler} {nfe_real} NFE: ES λ {es['candidate']['b']:.4f}", cached)

        def run_churn(sampler=sampler, steps=steps):
            from ..diagnostics.calibrate import _search_1d

            ev = _Paired(metric, **ev_kw)

            def draw(churn, s_noise, lam=None):
                return lambda seeds: sample(den, sampler, steps, shape, seeds, schedule=sch,
                                            es=None if lam is None else Uniform(lam), batch_size=bs, device=dev,
                                            S_churn=churn, S_noise=s_noise)

            churn_evals = []

            def score_churn(g):
                m = ev.mean(f"churn={g * steps!r},sn=1.0", draw(g * steps, 1.0))
                churn_evals.append({"S_churn": g * steps, "gamma": g, "mean": m})
                return m

            g_best = min(CHURN_GAMMAS, key=score_churn)
            churn = g_best * steps
            sn_evals = []

            def score_sn(sn):
                m = ev.mean(f"churn={churn!r},sn={sn!r}", draw(churn, sn))
                sn_evals.append({"S_noise": sn, "mean": m})
                return m

            sn, _ = _search_1d(score_sn, *S_NOISE_RANGE, max(cfg.coarse, 2), cfg.refine,
                               floor=S_NOISE_RANGE[0] - 1e-12)  # inflation only: S_noise >= 1
            churn_val = ev(f"churn={churn!r},sn=1.0", draw(churn, 1.0), "val")
            sn_val = ev(f"churn={churn!r},sn={sn!r}", draw(churn, sn), "val")
            lo, hi = RANGES[sampler]
            lam, lam_evals = _search_lambda(ev, lambda l, seeds: draw(churn, sn, l)(seeds),
                                            f"churn={churn!r},sn={sn!r}", lo, hi, cfg.coarse, cfg.refine)
            es_val = ev(f"churn={churn!r},sn={sn!r}|lam={lam!r}", draw(churn, sn, lam), "val")
            return {"S_churn": churn, "gamma": g_best, "S_noise": float(sn), "lam": lam, "churn_val": churn_val,
                    "sn_val": sn_val, "es_val": es_val, "churn_search": churn_evals, "sn_search": sn_evals,
                    "lam_search": lam_evals}

        ch, cached = store.get_or_run(f"cmp_churn_{sampler}_{steps}", {"part": "churn", "sampler": sampler,
                                      "steps": steps, "gammas": CHURN_GAMMAS, "s_noise": S_NOISE_RANGE,
                                      "range": RANGES[sampler], **common}, run_churn)
        cell["methods"]["churn"] = _method(ch["churn_val"], base_val, {"S_churn": ch["S_churn"], "S_noise": 1.0},
                                           f"S_churn {ch['S_churn']:.3g}", ch["churn_search"])
        cell["methods"]["churn+S_noise"] = _method(ch["sn_val"], base_val, {"S_churn": ch["S_churn"],
                                                   "S_noise": ch["S_noise"]},
                                                   f"S_churn {ch['S_churn']:.3g}, S_noise {ch['S_noise']:.4f}",
                                                   ch["sn_search"])
        cell["methods"]["churn+S_noise+ES"] = _method(ch["es_val"], base_val, {"S_churn": ch["S_churn"],
                                                      "S_noise": ch["S_noise"], "lam": ch["lam"]},
                                                      f"S_churn {ch['S_churn']:.3g}, S_noise {ch['S_noise']:.4f}, "
                                                      f"λ {ch['lam']:.4f}", ch["lam_search"])
        tick(f"{sampler} {nfe_real} NFE: churn {ch['S_churn']:.3g}, S_noise {ch['S_noise']:.4f}", cached)
        cells.append(cell)

    results = {
        "config": asdict(cfg), "metric": metric.name, "model": str(cfg.model),
        "ip_model": None if ip_path is None else str(ip_path),
        "ip_training": None if ip is None else {k: ip.config.get("training", {}).get(k) for k in
                                                ("options", "step", "train_seconds", "hardware", "final_loss",
                                                 "heldout_loss_ema")},
        "ts_rule": cfg.ts_rule, "ts_data_var": data_var, "seed_sets": {"search": len(sets[:cfg.n_sets]),
                                                                      "val": cfg.n_val_sets, "n_samples": n},
        "cells": cells, "wall_time_s": time.time() - t0, **store.accounting(),
    }
    write_compare(results, out)
    return results


# ---- report ----------------------------------------------------------------------------------------------------
def _fmt_method(m: dict, is_base: bool, best: bool) -> str:
    mean, sd = float(np.mean(m["val"])), float(np.std(m["val"], ddof=1)) if len(m["val"]) > 1 else 0.0
    v = f"{mean:.2f} ± {sd:.2f}"
    if best:
        v = f"**{v}**"
    if is_base:
        return v
    lo, hi = m["gain_ci"]
    mark = "" if m["significant"] else (", worse" if lo > 0 else ", n.s.")
    return f"{v} ({100 * m['gain']:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}) · {m['label']}"


def _table(cells, methods, col_of) -> list:
    cols = sorted({col_of(c) for c in cells})
    rows = [["method"] + [f"{c} {'steps' if cells[0]['kind'] == 'vp' else 'NFE'}" for c in cols]]
    by_col = {col_of(c): c for c in cells}
    best = {}
    for col, c in by_col.items():
        means = {k: float(np.mean(v["val"])) for k, v in c["methods"].items()}
        best[col] = min(means, key=means.get)
    for meth in methods:
        if not any(meth in c["methods"] for c in cells):
            continue
        row = [meth]
        for col in cols:
            c = by_col[col]
            m = c["methods"].get(meth)
            row.append("–" if m is None else _fmt_method(m, meth == "baseline", best[col] == meth))
        rows.append(row)
    return rows


def compare_blocks(results: dict) -> list:
    """Report blocks (``("h2", text)``, ``("p", text)``, ``("table", rows)``) of a compare result, in the format of
    :func:`diffusion_es.experiments.report.build_blocks`, so the section can be added to the repro report."""
    from .repro import SAMPLER_NAMES

    cfg = results["config"]
    ss = results["seed_sets"]
    blocks = [("h2", "Epsilon Scaling and the other fixes for exposure bias, on the same model and noise")]
    ip_txt = ("no IP model was given (pass --ip-model PATH or --train-ip)" if not results.get("ip_model") else
              f"the IP model `{Path(results['ip_model']).name}` was trained with the same recipe and budget and "
              f"ip_gamma {IP_GAMMA}")
    blocks.append(("p", f"Primary metric: **{results['metric']}** (lower is better). Every method's parameter was "
                        f"chosen on {ss['search']} search seed set(s) and measured on {ss['val']} fresh validation seed "
                        f"sets of {ss['n_samples']} samples each; all methods use the same seed sets, hence identical "
                        f"initial and step noise (paired). Each cell: validation mean ± sd over seed sets, the relative "
                        f"change against the baseline of the same sampler and steps with its 95 % t-interval "
                        f"(n.s.: the interval includes 0; worse: it lies above 0), and the tuned parameter; the best "
                        f"mean per column is bold. "
                        f"ES: uniform λ (searched from the sampler's range and walked past an end of it while that "
                        f"end wins, so λ < 1 can be chosen); TS: Time-Shift sampler (window w, cutoff t_c; rule "
                        f"`{results['ts_rule']}`, data variance {results['ts_data_var']:.4f}); {ip_txt}."))
    vp = [c for c in results["cells"] if c["kind"] == "vp"]
    for s in cfg["samplers"]:
        cs = [c for c in vp if c["sampler"] == s]
        if cs:
            blocks.append(("h3", SAMPLER_NAMES[s]))
            blocks.append(("table", _table(cs, VP_METHODS, lambda c: c["steps"])))
    edm = [c for c in results["cells"] if c["kind"] == "edm"]
    for s in cfg["edm_samplers"]:
        cs = [c for c in edm if c["sampler"] == s]
        if cs:
            blocks.append(("h3", f"{SAMPLER_NAMES[s]} (stochastic churn: S_churn, S_noise)"))
            blocks.append(("table", _table(cs, EDM_METHODS, lambda c: c["nfe"])))
    if edm:
        blocks.append(("p", "EDM rows: baseline and ES are deterministic (S_churn = 0); churn searches EDM's S_churn "
                            "(per-step γ = S_churn / steps in {" + ", ".join(map(str, CHURN_GAMMAS)) + "}) with "
                            f"S_noise = 1; S_noise (searched from [{S_NOISE_RANGE[0]}, {S_NOISE_RANGE[1]}], upward "
                            f"past {S_NOISE_RANGE[1]} while the upper end wins) only acts "
                            "through the churn noise; the last row adds ES on top."))
    ok = [c.get("ts_window1_equals_baseline") for c in vp]
    if ok:
        blocks.append(("p", f"Invariant: the Time-Shift sampler with window 1 reproduced the baseline's metric exactly "
                            f"in {sum(bool(v) for v in ok)} of {len(ok)} cells."))
    return blocks


def write_compare(results: dict, out) -> None:
    from ..io import atomic_path, write_json
    from .report import cost_line, render_html, render_md

    out = Path(out)
    cfg = results["config"]
    cmd = "diffusion-es compare" + (" --quick" if cfg["quick"] else "") + f" --out {cfg['out']}"
    if cfg["model"] != "default":
        cmd += f" --model {cfg['model']}"
    head = [("h1", "Exposure-bias fixes compared"),
            ("p", f"Generated by `{cmd}`. {cost_line(results)}. Do not edit by hand (rerun the command, it resumes "
                  f"from `{cfg['out']}/parts`).")]
    blocks = head + compare_blocks(results)
    write_json(out / "results_compare.json", results)
    with atomic_path(out / "compare.md", suffix=".md") as tmp:
        tmp.write_text(render_md(blocks))
    with atomic_path(out / "compare.html", suffix=".html") as tmp:
        tmp.write_text(render_html(blocks, out))
