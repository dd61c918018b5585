"""Power calculation for paired seed-set comparisons: how many samples per set and how many sets are needed to
resolve a given relative FD change (e.g. 3 % at 20 steps) before spending the compute.

**The test.** Per seed set k both arms (baseline A, candidate B) are sampled from the same seeds and the paired
relative difference d_k = FD_B / FD_A − 1 is computed against one fixed reference. The claim is judged by the
two-sided one-sample t-test on d_1..d_K (the t-interval of ``diagnostics.calibrate.paired_gain``). With true
mean δ and per-set sd σ its power is exact from the noncentral t distribution:

    power(K) = P(|T| > t_{1−α/2, K−1}),   T ~ t'(df = K − 1, nc = δ √K / σ).

:func:`required_sets` returns the smallest K with power(K) ≥ the target (monotone in K, searched directly);
:func:`required_sets_iterative` is the textbook iteration K = ((t_{1−α/2,K−1} + t_{power,K−1}) σ/δ)² on the
degrees of freedom (central t quantiles in place of the noncentral t), which agrees within one set and can be
one too few at very small K.

**How σ depends on the samples per set n.** FD's sample-side noise is an average over the n samples, so its
variance falls as 1/n; a part that does not shrink with n is a per-set *floor*:

    σ(n)² = (σ₀² − floor²) · n₀ / n + floor²,

with σ₀ measured at n₀ (:func:`sd_at`); :func:`sd_upper_bound` turns a measured σ₀ into a conservative one. :func:`fit_sd_scaling` fits ``var = a/n + b`` (b ≥ 0) to sds measured at
several n (e.g. from prefixes of the same seed sets, ``metrics.variance.paired_sd_by_size``). With a fixed
reference the reference's own noise is **not** a per-set floor: it is the same for every set, cancels from the
spread over sets and is not reduced by more sets or samples (``metrics.variance``). Give it as ``ref_sd`` only
for a claim about the population rather than about this reference; then the test uses the total standard error
sqrt(σ²/K + ref_sd²) (an approximation; df = K − 1 kept) and no plan exists once
ref_sd ≥ δ / (t_{1−α/2} + t_{power}) — only a larger reference helps.

**The effect also depends on n.** FD is biased upward by about k/n (``metrics.fd_infinity``); when both arms
carry the same bias a relative change δ∞ of the bias-free FD∞ shows up at n samples as

    δ(n) = δ∞ · FD∞ / (FD∞ + k/n),

smaller at small n. Pass ``fd_inf`` and ``fd_slope`` (k) to :func:`power_plan` to plan for a change of FD∞;
without them δ is taken as the same at every n.

**Cost.** A plan (n, K) costs ``arms · n · K · nfe_per_sample`` network evaluations (NFE; both arms are sampled).
:func:`power_plan` evaluates every n of a grid, takes the smallest K for each, and picks the cheapest plan within
the budget; :func:`PowerAnalysis.statement` is the sentence for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["t_power", "required_sets", "detectable_effect", "MAX_PLANNED_SETS", "required_sets_iterative", "sd_at", "fit_sd_scaling", "sd_upper_bound",
           "PowerPlan", "PowerAnalysis", "power_plan", "paired_relative_sd", "DEFAULT_SAMPLE_GRID"]

DEFAULT_SAMPLE_GRID = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000)


MAX_PLANNED_SETS = 1000  # a repro's power plan looks no further ("more than 1,000 seed sets needed")


def _check(effect: float, sd: float, alpha: float, power: Optional[float] = None):
    if not (math.isfinite(effect) and effect != 0):
        raise ValueError(f"effect must be a finite non-zero number, got {effect}")
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sd must be a positive number, got {sd}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if power is not None and not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")


def t_power(effect: float, sd: float, n_sets: int, alpha: float = 0.05, ref_sd: float = 0.0) -> float:
    """Power of the two-sided paired t-test over ``n_sets`` sets (module docstring); ``ref_sd`` > 0 adds a shared
    reference term to the standard error (approximation)."""
    from scipy import stats

    _check(effect, sd, alpha)
    k = int(n_sets)
    if k < 2:
        return float("nan")
    se = math.sqrt(sd * sd / k + ref_sd * ref_sd)
    nc = abs(effect) / se
    c = stats.t.ppf(1.0 - alpha / 2.0, k - 1)
    # P(T > c) + P(T < -c); the far tail P(T < -c) is taken as P(T' > c) with T' ~ t'(df, -nc) (the mirror image),
    # because scipy's nct.cdf returns NaN deep in the left tail (df 49, nc 10.6, scipy 1.17)
    upper, lower = stats.nct.sf(c, k - 1, nc), stats.nct.sf(c, k - 1, -nc)
    if not (np.isfinite(upper) and np.isfinite(lower)):
        raise FloatingPointError(f"noncentral t tail is not finite (df={k - 1}, nc={nc:.4g})")
    return float(min(1.0, upper + lower))


def required_sets(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8, ref_sd: float = 0.0,
                  min_sets: int = 2, max_sets: int = 100_000) -> Optional[int]:
    """Smallest K ≥ ``min_sets`` with :func:`t_power` ≥ ``power``; None when not reached by ``max_sets``."""
    _check(effect, sd, alpha, power)
    lo = max(2, int(min_sets))
    if t_power(effect, sd, lo, alpha, ref_sd) >= power:
        return lo
    if t_power(effect, sd, max_sets, alpha, ref_sd) < power:
        return None
    hi = int(max_sets)
    while hi - lo > 1:  # power is increasing in K: bisection keeps power(lo) < target <= power(hi)
        mid = (lo + hi) // 2
        if t_power(effect, sd, mid, alpha, ref_sd) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def detectable_effect(sd: float, n_sets: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest change a two-sided paired t-test over ``n_sets`` sets detects with probability ``power``:
    the δ > 0 with :func:`t_power` (δ, sd, n_sets) = ``power`` (power rises with δ; bisection to 1e-9 of sd)."""
    _check(1.0, sd, alpha, power)
    if int(n_sets) < 2:
        return math.inf
    lo, hi = 0.0, sd
    while t_power(hi, sd, n_sets, alpha) < power:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-9 * sd:
        mid = (lo + hi) / 2
        if mid > 0 and t_power(mid, sd, n_sets, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def required_sets_iterative(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                            max_iter: int = 100) -> int:
    """The textbook iteration on the degrees of freedom: start from the normal quantiles, then
    K ← ceil(f(K)) with f(K) = ((t_{1−α/2,K−1} + t_{power,K−1}) σ/δ)² until K repeats. At small K it can
    oscillate (t at 1–3 df is large); f is decreasing in K, so the answer is the smallest K ≥ 2 with K ≥ f(K),
    found by stepping from where the iteration stopped."""
    from scipy import stats

    _check(effect, sd, alpha, power)
    r = (sd / abs(effect)) ** 2

    def f(k):
        return (stats.t.ppf(1 - alpha / 2, k - 1) + stats.t.ppf(power, k - 1)) ** 2 * r

    k = max(2, math.ceil((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) ** 2 * r))
    seen = set()
    for _ in range(max_iter):
        nxt = max(2, math.ceil(f(k)))
        if nxt == k or nxt in seen:
            break
        seen.add(k)
        k = nxt
    while k > 2 and k - 1 >= f(k - 1):
        k -= 1
    while k < f(k):
        k += 1
    return k


def sd_at(n: float, sd0: float, n0: float, floor: float = 0.0) -> float:
    """σ(n) = sqrt((σ₀² − floor²) n₀/n + floor²) (module docstring)."""
    if floor > sd0:
        raise ValueError(f"the floor ({floor}) cannot exceed the measured sd ({sd0})")
    return math.sqrt((sd0 * sd0 - floor * floor) * n0 / n + floor * floor)


def fit_sd_scaling(sd_by_n: Dict[int, float]):
    """Least-squares fit of var(n) = a/n + b with b ≥ 0 to measured sds: returns ``(a, b)``, so that
    σ(n) = sqrt(a/n + b) and floor = sqrt(b). Needs two or more sizes."""
    ns = np.asarray(sorted(sd_by_n), dtype=np.float64)
    if len(ns) < 2:
        raise ValueError("the fit needs sds measured at two or more sample counts")
    v = np.asarray([sd_by_n[int(n)] ** 2 for n in ns], dtype=np.float64)
    x = np.stack([1.0 / ns, np.ones_like(ns)], axis=1)
    (a, b), *_ = np.linalg.lstsq(x, v, rcond=None)
    if b < 0:  # constrained optimum on b = 0: a = Σ v/n / Σ 1/n²
        a, b = float(np.sum(v / ns) / np.sum(1.0 / ns ** 2)), 0.0
    if a < 0:
        a, b = 0.0, float(v.mean())
    return float(a), float(b)


def sd_upper_bound(sd: float, n_sets: int, confidence: float = 0.8) -> float:
    """One-sided upper confidence bound of a normal sd estimated from ``n_sets`` values (ddof=1):
    σ ≤ s · sqrt((K − 1) / χ²_{1−c, K−1}) with probability c. An sd from a dozen sets is uncertain by ±20 %;
    planning with this bound instead of s keeps the promised power in most repetitions of the measurement."""
    from scipy import stats

    if int(n_sets) < 2:
        raise ValueError("an sd bound needs at least 2 sets")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    k = int(n_sets) - 1
    return float(sd * math.sqrt(k / stats.chi2.ppf(1.0 - confidence, k)))


def paired_relative_sd(base_values: Sequence[float], new_values: Sequence[float]) -> float:
    """sd (ddof=1) of the per-set paired relative differences new/base − 1."""
    g = np.asarray(new_values, dtype=np.float64) / np.asarray(base_values, dtype=np.float64) - 1.0
    if len(g) < 2:
        raise ValueError("an sd needs at least 2 paired seed sets")
    return float(g.std(ddof=1))


@dataclass
class PowerPlan:
    n_samples: int
    effect: float              # the relative change to resolve at n_samples (diluted by the FD bias, see above)
    n_sets: Optional[int]      # None: the target power is not reachable (ref_sd too large)
    sd: float                  # per-set sd of the paired difference at n_samples
    power: float               # achieved power at (n_samples, n_sets)
    cost_nfe: Optional[int]    # arms · n_samples · n_sets · nfe_per_sample
    within_budget: bool


@dataclass
class PowerAnalysis:
    effect: float
    alpha: float
    target_power: float
    sd0: float
    n0: int
    floor: float
    ref_sd: float
    nfe_per_sample: int
    arms: int
    budget_nfe: Optional[int]
    fd_inf: Optional[float] = None
    fd_slope: float = 0.0
    sd_label: str = "measured"
    options: List[PowerPlan] = field(default_factory=list)
    best: Optional[PowerPlan] = None          # cheapest plan reaching the target within the budget
    best_effort: Optional[PowerPlan] = None   # when none does: the most powerful plan the budget allows

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["statement"] = self.statement()
        return d

    def statement(self) -> str:
        """The sentence for the report."""
        pct = lambda v: f"{100 * v:.2g} %" if abs(100 * v) < 10 else f"{100 * v:.0f} %"  # noqa: E731
        model = (f"sd of the paired relative FD difference {pct(self.sd0)} at {self.n0:,} samples per set "
                 f"({self.sd_label}), scaled as 1/√n" + (f" above a per-set floor of {pct(self.floor)}" if self.floor > 0 else ""))
        test = f"two-sided α = {self.alpha:g}, paired t-test over seed sets"
        if self.best is not None:
            p = self.best
            what = "FD∞" if self.fd_inf is not None else "FD"
            dil = (f", {pct(p.effect)} of the FD at {p.n_samples:,} samples" if self.fd_inf is not None else "")
            s = (f"With {p.n_samples:,} samples per set and {p.n_sets} seed sets a {pct(self.effect)} {what} change"
                 f"{dil} is resolvable at {pct(self.target_power)} power (achieved {p.power:.2f}; {test}); {model} "
                 f"(sd {pct(p.sd)} at {p.n_samples:,}); cost {self.arms} arms × {p.n_samples:,} × {p.n_sets} × "
                 f"{self.nfe_per_sample} = {p.cost_nfe:,} network evaluations"
                 + (f" of a budget of {self.budget_nfe:,}" if self.budget_nfe else "") + ".")
        else:
            s = (f"No plan resolves a {pct(self.effect)} FD change at {pct(self.target_power)} power"
                 + (f" within {self.budget_nfe:,} network evaluations" if self.budget_nfe else "") + f" ({test}; "
                 f"{model})")
            if self.best_effort is not None and self.best_effort.n_sets:
                b = self.best_effort
                s += (f"; the budget allows at most power {b.power:.2f} ({b.n_samples:,} samples × {b.n_sets} "
                      f"sets)")
            s += "."
        if self.ref_sd > 0:
            s += (f" The reference adds sd {pct(self.ref_sd)} shared by all sets (not reduced by more sets or "
                  f"samples; included in the standard error for a claim about the population).")
        return s


def power_plan(effect: float, sd0: float, n0: int, floor: float = 0.0, *, ref_sd: float = 0.0, alpha: float = 0.05,
               power: float = 0.8, nfe_per_sample: int = 20, arms: int = 2, budget_nfe: Optional[int] = None,
               sample_grid: Sequence[int] = DEFAULT_SAMPLE_GRID, min_sets: int = 3, max_sets: int = 10_000,
               fd_inf: Optional[float] = None, fd_slope: float = 0.0,
               sd_label: str = "measured") -> PowerAnalysis:
    """Plans (n, K) over ``sample_grid`` (plus n0) and the cheapest one reaching ``power`` within ``budget_nfe``.

    ``effect``: the relative change to resolve (0.03 for 3 %); ``sd0``: sd of the per-set paired relative
    difference measured at ``n0`` samples per set; ``floor``: the part of sd0 that does not shrink with n;
    ``ref_sd``: shared reference term (module docstring; 0 for a claim about the fixed reference);
    ``fd_inf``, ``fd_slope``: FD = FD∞ + k/n of the baseline, to plan for a relative change of FD∞;
    ``sd_label``: where sd0 comes from, for the statement (e.g. "80 % upper bound of 1.4 % measured over 12 sets").
    Everything after ``floor`` is keyword-only."""
    _check(effect, sd0, alpha, power)
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be a finite number >= 0, got {floor}")
    if not (math.isfinite(ref_sd) and ref_sd >= 0):
        raise ValueError(f"ref_sd must be a finite number >= 0, got {ref_sd}")
    if fd_inf is not None and not (fd_inf > 0 and fd_slope >= 0):
        raise ValueError(f"fd_inf must be > 0 and fd_slope >= 0, got {fd_inf}, {fd_slope}")

    def eff(n):
        return abs(effect) if fd_inf is None else abs(effect) * fd_inf / (fd_inf + fd_slope / n)

    grid = sorted(set(int(n) for n in sample_grid) | {int(n0)})
    out = PowerAnalysis(effect=abs(effect), alpha=alpha, target_power=power, sd0=sd0, n0=int(n0), floor=floor,
                        ref_sd=ref_sd, nfe_per_sample=int(nfe_per_sample), arms=int(arms), budget_nfe=budget_nfe,
                        fd_inf=fd_inf, fd_slope=fd_slope, sd_label=sd_label)
    unit = int(arms) * int(nfe_per_sample)
    for n in grid:
        sd = sd_at(n, sd0, n0, floor)
        k = required_sets(eff(n), sd, alpha, power, ref_sd, min_sets=min_sets, max_sets=max_sets)
        cost = None if k is None else unit * n * k
        out.options.append(PowerPlan(n_samples=n, effect=eff(n), n_sets=k, sd=sd,
                                     power=t_power(eff(n), sd, k, alpha, ref_sd) if k else float("nan"), cost_nfe=cost,
                                     within_budget=k is not None and (budget_nfe is None or cost <= budget_nfe)))
    ok = [p for p in out.options if p.within_budget]
    if ok:
        out.best = min(ok, key=lambda p: (p.cost_nfe, p.n_sets))
    elif budget_nfe is not None:
        efforts = []
        for n in grid:
            k = min(int(budget_nfe) // (unit * n), int(max_sets))
            if k >= max(2, min_sets):
                sd = sd_at(n, sd0, n0, floor)
                efforts.append(PowerPlan(n_samples=n, effect=eff(n), n_sets=k, sd=sd,
                                         power=t_power(eff(n), sd, k, alpha, ref_sd),
                                         cost_nfe=unit * n * k, within_budget=True))
        out.best_effort = max(efforts, key=lambda p: (p.power, -p.cost_nfe)) if efforts else None
    return out
