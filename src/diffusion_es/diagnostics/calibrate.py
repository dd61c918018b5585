"""Choose λ automatically: a cheap, paired, coarse-to-fine search of a sample-quality metric.

The paper tunes λ by hand with FID sweeps. Here a candidate schedule is scored by a metric (lower is better,
e.g. FD on classifier features) of samples drawn with *the same seeds* as every other candidate (paired), over
``n_sets`` disjoint seed sets. The search:

* **uniform** ``λ = b``: a coarse grid over ``lam_range`` (walked past an end, with doubling steps, while that end
  keeps winning), then ``refine`` rounds that halve the step around the best point (a 1-D coarse-to-fine search,
  not a dense grid);
* **linear** ``λ_t = k·t + b``: start at the best uniform b, search the slope at fixed mean λ (the paper's
  observation that its linear schedules keep the mean near the best uniform b), then the mean at that slope.

The chosen schedule's gain over λ = 1 is then measured on ``n_val_sets`` *fresh* seed sets (never used for
choosing, so the estimate is not biased by the selection), with a t-interval. If the interval does not lie
below zero, the result says plainly that no λ beat the baseline and carries no schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ..progress import advance as _advance
from ..progress import task as _task
from ..devices import check_device
from ..errors import UsageError
from ..samplers import SamplingPlan, default_schedule, get_sampler, sample
from ..core.scaling import LambdaSchedule, Linear, Uniform
from ..core.schedules import VPSchedule

__all__ = ["CalibrationResult", "calibrate", "paired_gain", "mean_t_interval", "t_half_width", "finite_value"]


@dataclass
class CalibrationResult:
    kind: str
    sampler: str
    steps: int
    metric: str
    schedule: Optional[dict]          # the chosen schedule, or None when nothing beat the baseline
    candidate: dict                   # the best candidate found by the search (even if not significant)
    significant: bool
    gain: float                       # mean relative change of the metric vs λ = 1 on fresh seed sets (< 0 is better)
    gain_ci: tuple                    # 95 % t-interval of that mean
    gain_per_set: list
    baseline_val: list                # metric at λ = 1 on the validation sets
    best_val: list                    # metric of the chosen candidate on the validation sets
    lam_spread: float                 # std over search seed sets of each set's own best b (uniform search)
    evaluations: list = field(default_factory=list)   # every search evaluation: schedule + per-set values
    extra_val: dict = field(default_factory=dict)     # other metrics on the validation sets: name -> baseline/best
    nfe: int = 0                      # network evaluations spent in total (search + validation)
    n_samples: int = 0
    message: str = ""
    lam_range_searched: list = field(default_factory=list)  # [lo, hi] after extending past a range end that won
    at_range_edge: bool = False       # the choice is still an end of the searched range: the optimum may lie beyond
    min_lambda: Optional[float] = None  # the floor every λ_t of a candidate kept to (1: the paper's ES only)
    spacing: Optional[str] = None     # the VP timestep respacing it was calibrated with (ddpm / ddim; None for others)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def t_half_width(sd: float, n: int, alpha: float = 0.05) -> float:
    """Half-width of the two-sided (1 − α) t-interval of a mean of ``n`` values with sd ``sd`` (inf for n < 2)."""
    from scipy.stats import t

    return float(t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.inf


def mean_t_interval(values) -> tuple:
    """Mean of ``values`` (e.g. paired differences, one per seed set) and the half-width of its two-sided 95 %
    t-interval (inf for fewer than 2 values)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("inf")
    return float(v.mean()), t_half_width(float(v.std(ddof=1)), len(v))


def finite_value(v, what: str) -> float:
    """A metric's value as a float; NaN or inf would steer the search and the verdict silently, so it is refused."""
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{what} returned {f} on a seed set's samples; it must return a finite number (check the "
                         f"metric and the model's samples)")
    return f


def paired_gain(base: Sequence[float], new: Sequence[float]):
    """Relative change per paired seed set, its mean and 95 % t-interval. The baseline values must be > 0 (a
    relative change of a metric like FD)."""
    b = np.asarray(base, dtype=np.float64)
    if not np.all(b > 0):
        raise ValueError(f"a relative change needs baseline values > 0 (a metric like FD: lower is better, positive), "
                         f"got {b.min():g}")
    g = np.asarray(new, dtype=np.float64) / b - 1.0
    m, half = mean_t_interval(g)
    return g.tolist(), m, (m - half, m + half)


class _Scorer:
    """Scores a schedule on fixed seed sets, with a cache keyed on the schedule's JSON."""

    def __init__(self, denoiser, plan_kw, shape, metric, seed_sets, batch_size, sampler_kwargs, progress,
                 extra_metrics=None, device="cpu", shard=None, store=None):
        self.den, self.plan_kw, self.shape, self.metric = denoiser, plan_kw, shape, metric
        self.shard = shard or list  # distributed runs: this process's part of a seed set (see distributed.py)
        self.seed_sets, self.batch_size, self.kw, self.progress = seed_sets, batch_size, sampler_kwargs, progress
        self.extra_metrics, self.device = extra_metrics or {}, device
        self.cache, self.extra, self.order, self.nfe = {}, {}, [], 0
        self.nfe_per_sample = SamplingPlan(**plan_kw).nfe
        self.store = store
        if store is not None:  # everything besides the store's own fingerprint (model, metric) that a value depends on
            self.part = {"sampler": plan_kw["sampler"], "steps": int(plan_kw["steps"]), "spacing": plan_kw["spacing"],
                         "schedule": _object_id(plan_kw["schedule"]), "shape": [int(s) for s in shape],
                         "batch_size": batch_size, "options": {k: str(v) for k, v in sorted(sampler_kwargs.items())},
                         "extra": sorted(self.extra_metrics)}

    def _score(self, sched, seeds) -> dict:
        x = sample(self.den, self.plan_kw["sampler"], self.plan_kw["steps"], self.shape, self.shard(seeds),
                   schedule=self.plan_kw["schedule"], spacing=self.plan_kw["spacing"], es=sched,
                   batch_size=self.batch_size, device=self.device, **self.kw)
        value = finite_value(self.metric(x), "the metric")
        if value <= 0:  # found now, not after the whole search (paired_gain's relative changes need it > 0)
            raise ValueError(f"the metric returned {value:g} on a seed set's samples; calibrate compares relative "
                             f"changes, so it needs a metric > 0 (like FD; a KID can be negative: add an offset or "
                             f"use FD)")
        return {"value": value,
                "extra": {name: finite_value(f(x), f"the metric {name!r}") for name, f in self.extra_metrics.items()}}

    def __call__(self, sched: Optional[LambdaSchedule]) -> list:
        key = "baseline" if sched is None else sched.to_json()
        if key not in self.cache:
            vals, extra = [], {name: [] for name in self.extra_metrics}
            for seeds in self.seed_sets:
                if self.store is None:
                    r = self._score(sched, seeds)
                else:  # kept on disk: an interrupted calibration resumes with the candidates it had scored
                    r, cached = self.store.get_or_run("score", {**self.part, "es": key, "seeds": [
                        int(seeds[0]), int(seeds[-1]), len(seeds)]}, lambda: self._score(sched, seeds))
                    if cached:  # the samples a bar expects from this set, drawn in the earlier run
                        _advance(len(self.shard(seeds)))
                self.nfe += len(seeds) * self.nfe_per_sample
                vals.append(r["value"])
                for name in self.extra_metrics:
                    extra[name].append(r["extra"][name])
            self.cache[key], self.extra[key] = vals, extra
            self.order.append({"schedule": None if sched is None else sched.to_dict(), "values": vals,
                               "mean": float(np.mean(vals))})
            if self.progress:
                self.progress(self.order[-1])
        return self.cache[key]


def _object_id(obj) -> str:
    """A short hash of a schedule object's fields (arrays by their bytes), for the keys of stored scores."""
    import dataclasses

    from ..hashing import json_hash

    if dataclasses.is_dataclass(obj):
        d = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            d[f.name] = json_hash(np.asarray(v).tobytes().hex()) if isinstance(v, np.ndarray) else repr(v)
        return json_hash([type(obj).__name__, d], 16)
    return json_hash([type(obj).__name__, repr(obj)], 16)


MAX_EXTEND = 6  # steps a search may take past an end of its range (doubling: up to 2**6 - 1 = 63 coarse steps out)


@dataclass
class Search1D:
    """Result of :func:`search_1d`: the best point, every evaluation, the range actually searched, and whether
    the best point still lies at an end of it (the optimum may lie further out)."""

    best: float
    vals: dict
    lo: float
    hi: float
    at_edge: bool

    def __iter__(self):  # best, vals = search_1d(...)
        return iter((self.best, self.vals))


def search_1d(score: Callable[[float], float], lo: float, hi: float, coarse: int, refine: int,
               floor: float = -math.inf, ceil: float = math.inf, max_extend: int = MAX_EXTEND) -> Search1D:
    """Coarse grid over [lo, hi]; if the best point is an end of the grid, walk outward while the score improves,
    doubling the step each time (at most ``max_extend`` steps, never to ``floor``/``ceil`` or beyond), which
    brackets an optimum far outside the range in a few evaluations; then halve the step around the best point
    until it is ``refine`` halvings below the coarse step (one extra round per doubling)."""
    pts = list(np.linspace(lo, hi, coarse))
    vals = {float(p): score(float(p)) for p in pts}
    h = (hi - lo) / (coarse - 1) if coarse > 1 else (hi - lo) / 2
    best = min(vals, key=vals.get)
    rounds = refine
    for _ in range(max_extend):
        if best == min(vals) and best - h > floor:
            p = best - h
        elif best == max(vals) and best + h < ceil:
            p = best + h
        else:
            break
        vals[p] = score(p)
        if not vals[p] < vals[best]:
            break  # bracketed: the optimum lies within h of best
        best, h, rounds = p, 2 * h, rounds + 1
    lo, hi = min(vals), max(vals)
    for _ in range(rounds):
        h /= 2
        for p in (best - h, best + h):
            if lo - 1e-12 <= p <= hi + 1e-12 and p not in vals:
                vals[p] = score(p)
        best = min(vals, key=vals.get)
    at_edge = best in (lo, hi) and (best - h > floor if best == lo else best + h < ceil)
    return Search1D(best, vals, lo, hi, at_edge)


def calibrate(denoiser, sampler: str, steps: int, shape: Sequence[int], metric: Callable, kind: str = "uniform",
              lam_range=(0.99, 1.03), n_samples: int = 500, n_sets: int = 3, n_val_sets: int = 3,
              coarse: int = 5, refine: int = 3, max_extend: int = MAX_EXTEND, seed: int = 0,
              schedule: Optional[VPSchedule] = None,
              batch_size: int = 500, metric_name: str = "metric", progress: Optional[Callable] = None,
              extra_metrics: Optional[dict] = None, device="cpu", shard: Optional[Callable] = None,
              spacing: str = "adm", min_lambda: Optional[float] = None, store=None,
              **sampler_kwargs) -> CalibrationResult:
    """Find the λ schedule (``kind`` = uniform or linear) that minimises ``metric(samples)`` for one sampler
    setting. ``metric`` takes a float64 tensor (N, *shape) and returns a float > 0, lower is better (the search
    compares relative changes; a value <= 0 is refused when it first appears).
    ``extra_metrics`` (name -> callable) are only reported, on the validation sets, for λ = 1 and the choice.
    ``shard(seeds) -> seeds``: in a distributed run, the part of each seed set this process samples; ``metric``
    (and ``extra_metrics``) then get only that part and must combine the parts (distributed.ShardedMetric).
    ``min_lambda``: no candidate may have λ_t below it at any step (1: only Epsilon Scaling in the paper's sense,
    which shrinks the predicted noise; never the enlarging λ < 1 that trades recall for precision). The range and
    its extensions are cut there. ``store``: a :class:`diffusion_es.store.PartStore` whose fingerprint identifies the
    model and the metric; every candidate's score on a seed set is kept there, so an interrupted calibration run
    again with the same arguments and store scores only what is missing (in a torchrun job every rank opens the
    store with ``snapshot=True`` and only rank 0 writes, see :class:`~diffusion_es.store.PartStore`)."""
    check_device(device)
    try:
        lo, hi = (float(v) for v in lam_range)
    except (TypeError, ValueError):
        raise UsageError(f"lam_range must be two numbers (low, high), got {lam_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= lo:
        raise UsageError(f"empty or invalid λ range [{lo}, {hi}]: give two finite values 0 < low < high")
    floor = 0.0
    if min_lambda is not None:
        min_lambda = float(min_lambda)
        if not (math.isfinite(min_lambda) and min_lambda > 0):
            raise UsageError(f"min_lambda must be a finite number > 0, got {min_lambda}")
        if hi <= min_lambda:
            raise UsageError(f"min_lambda {min_lambda:g} is not below the top of the λ range [{lo:g}, {hi:g}]: lower "
                             f"it or raise the range's upper end")
        lo = max(lo, min_lambda)
        floor = min_lambda  # extensions stop above it; the range itself starts at it (lo below)
    if kind not in ("uniform", "linear"):
        raise UsageError(f"unknown calibration kind {kind!r}: use uniform or linear")
    if n_samples < 2 or n_sets < 1 or n_val_sets < 2:
        raise UsageError("need n_samples >= 2, at least 1 search seed set and at least 2 validation seed sets")
    if coarse < 2:
        raise UsageError("coarse grid needs at least 2 points")
    if max_extend < 0:
        raise UsageError(f"max_extend must be >= 0, got {max_extend}")
    if schedule is None:
        schedule = default_schedule(denoiser)
    base_seed = seed * 10_000_019
    sets = [list(range(base_seed + j * n_samples, base_seed + (j + 1) * n_samples))
            for j in range(n_sets + n_val_sets)]
    plan_kw = {"sampler": sampler, "steps": steps, "schedule": schedule, "spacing": spacing}
    SamplingPlan(**plan_kw).spec.resolve(sampler_kwargs)  # refuse bad sampler options before any work
    search = _Scorer(denoiser, plan_kw, shape, metric, sets[:n_sets], batch_size, sampler_kwargs, progress,
                     device=device, shard=shard, store=store)
    val = _Scorer(denoiser, plan_kw, shape, metric, sets[n_sets:], batch_size, sampler_kwargs, progress,
                  extra_metrics, device, shard=shard, store=store)

    def at_least_min(b):  # a grid point a rounding error below the floor is the floor itself
        return b if min_lambda is None else max(b, min_lambda)

    def mean_uniform(b):
        b = at_least_min(b)
        return float(np.mean(search(None if b == 1.0 else Uniform(b))))

    # announced work (samples this process draws) for progress bars: the search without extensions, then
    # baseline and choice on the validation sets; the bar settles to what was really drawn
    n_search = sum(len(search.shard(s)) for s in sets[:n_sets])
    n_val = sum(len(val.shard(s)) for s in sets[n_sets:])
    candidates = (coarse + 2 * refine) * (3 if kind == "linear" else 1)
    with _task(candidates * n_search + 2 * n_val):
        found = search_1d(mean_uniform, lo, hi, coarse, refine, floor=floor, max_extend=max_extend)
        b_best, vals, searched = at_least_min(found.best), found.vals, [found.lo, found.hi]
        edges = [("λ", found)] if found.at_edge else []
        # each search set's own best b: the spread says how well the optimum is determined
        grid = [at_least_min(b) for b in sorted(vals)]
        per_set = np.array([search(None if b == 1.0 else Uniform(b)) for b in grid])
        lam_spread = float(np.std(np.asarray(grid)[per_set.argmin(axis=0)], ddof=1)) if n_sets > 1 else float("nan")
        best: LambdaSchedule = Uniform(b_best)
        if kind == "linear":
            n = steps
            span = max(abs(b_best - 1.0), (hi - lo) / 4)
            k_hi = 4 * span / max(n - 1, 1)

            def linear_at(k, mean):
                return Linear(k, mean - k * (n - 1) / 2)

            def score_k(k, mean=b_best):
                sched = linear_at(k, mean)
                if min_lambda is not None and sched.b < min_lambda:  # k ≥ 0: λ is smallest at the last step, b
                    return float("inf")
                try:
                    return float(np.mean(search(sched)))
                except ValueError:  # λ would leave (0, inf) somewhere on the grid
                    return float("inf")

            # k ≥ 0: λ largest at the noisiest step
            k_found = search_1d(score_k, 0.0, k_hi, coarse, refine, floor=-1e-12, max_extend=max_extend)
            mean_found = search_1d(lambda m: score_k(k_found.best, m), lo, hi, coarse, refine, floor=floor,
                                    max_extend=max_extend)
            cand = linear_at(k_found.best, mean_found.best)
            if np.mean(search(cand)) <= np.mean(search(best)):
                best = cand
                edges = [(name, f) for name, f in (("the slope k", k_found), ("the mean λ", mean_found)) if f.at_edge]
                searched = [min(searched[0], mean_found.lo), max(searched[1], mean_found.hi)]

        best_key = None if best.is_identity(steps) else best
        base_v, best_v = val(None), val(best_key)
        extra_val = {name: {"baseline": val.extra["baseline"][name],
                            "best": val.extra["baseline" if best_key is None else best.to_json()][name]}
                     for name in (extra_metrics or {})}
    per, g, ci = paired_gain(base_v, best_v)
    significant = ci[1] < 0
    if significant:
        msg = (f"λ schedule {best!r} lowers {metric_name} by {-100 * g:.1f} % "
               f"(95 % interval {-100 * ci[1]:.1f} to {-100 * ci[0]:.1f} %) on {n_val_sets} fresh seed sets")
    else:
        msg = (f"no λ beat the baseline beyond the noise: the best candidate {best!r} changed {metric_name} by "
               f"{100 * g:+.1f} % (95 % interval {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} %) on fresh seed sets; "
               f"keep λ = 1")
    for name, f in edges:
        how = (f"even after extending it to [{f.lo:.4g}, {f.hi:.4g}]" if max_extend > 0 else
               f"[{f.lo:.4g}, {f.hi:.4g}] (not extended: max_extend 0)")
        msg += (f"; note: {name} of the best candidate lies at the edge of its searched range {how}, the optimum may "
                f"lie further out (widen the range)")
    return CalibrationResult(
        kind=kind, sampler=sampler, steps=steps, metric=metric_name,
        schedule=best.to_dict() if significant else None, candidate=best.to_dict(), significant=significant,
        gain=g, gain_ci=ci, gain_per_set=per, baseline_val=base_v, best_val=best_v, lam_spread=lam_spread,
        evaluations=search.order, extra_val=extra_val, nfe=search.nfe + val.nfe, n_samples=n_samples, message=msg,
        lam_range_searched=searched, at_range_edge=bool(edges), min_lambda=min_lambda,
        spacing=spacing if get_sampler(sampler).grid == "vp" else None,
    )
