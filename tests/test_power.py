"""Power calculation (experiments/power.py) on synthetic variances: known sd → known number of seed sets.

Checks: published values of R's ``power.t.test(type = "one.sample")`` (n = 33.37 for δ/σ = 0.5, 9.94 for 1.0,
89.1 for 0.3, α = 0.05 two-sided, power 0.8: 34, 10 and 90 sets); a direct Monte-Carlo simulation of the paired
t-test (M = 40,000 experiments: the rejection rate has sd ≤ 0.0025, checked to 4 sd); the textbook df iteration
within one set of the exact answer; the 1/n scaling, its fit, and the cheapest plan against brute force.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from diffusion_es.experiments.power import (fit_sd_scaling, paired_relative_sd, power_plan, required_sets,
                                            required_sets_iterative, sd_at, sd_upper_bound, t_power)


@pytest.mark.parametrize("ratio,want", [(0.5, 34), (1.0, 10), (0.3, 90)])
def test_required_sets_match_r_power_t_test(ratio, want):
    assert required_sets(0.03, 0.03 / ratio) == want
    assert t_power(0.03, 0.03 / ratio, want) >= 0.8 > t_power(0.03, 0.03 / ratio, want - 1)


@pytest.mark.parametrize("effect,sd", [(0.03, 0.02), (0.03, 0.011 * 2), (-0.05, 0.06)])
def test_power_matches_monte_carlo_of_the_paired_t_test(effect, sd):
    """Simulate M experiments of K paired differences ~ N(effect, sd²), apply the two-sided one-sample t-test,
    count rejections at K and K − 1 sets."""
    k = required_sets(effect, sd)
    rng = np.random.default_rng(0)
    m = 40_000
    for kk in (k - 1, k):
        if kk < 2:
            continue
        d = effect + sd * rng.standard_normal((m, kk))
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(kk))
        rate = float(np.mean(np.abs(t) > stats.t.ppf(0.975, kk - 1)))
        p = t_power(effect, sd, kk)
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / m), (kk, rate, p)
        if kk == k:
            assert rate > 0.8 - 4 * math.sqrt(0.16 / m)
        else:
            assert p < 0.8


def test_type_one_error_is_alpha_and_power_grows_with_sets():
    assert abs(t_power(1e-12, 1.0, 7) - 0.05) < 1e-9
    ps = [t_power(0.03, 0.05, k) for k in range(2, 60)]
    assert all(b > a for a, b in zip(ps, ps[1:]))
    assert t_power(0.03, 0.02, 100_000) == 1.0  # deep tails stay finite (scipy's nct.cdf gives NaN there)


def test_iteration_on_df_agrees_within_one_set():
    """The iteration uses central t quantiles (an approximation of the noncentral t): within one set of the exact
    answer; measured on this grid: equal except δ/σ = 2.1 (exact 5, iteration 4: too few at tiny K)."""
    diff = []
    for ratio in np.linspace(0.2, 3.0, 29):
        exact, it = required_sets(1.0, 1.0 / ratio), required_sets_iterative(1.0, 1.0 / ratio)
        assert abs(it - exact) <= 1, (ratio, exact, it)
        diff.append(it - exact)
    assert sum(d != 0 for d in diff) <= 3


def test_sd_scaling_and_fit():
    assert sd_at(2000, 0.02, 500) == pytest.approx(0.01, rel=1e-12)
    assert sd_at(10**9, 0.02, 500, floor=0.005) == pytest.approx(0.005, rel=1e-5)
    assert sd_at(500, 0.02, 500, floor=0.005) == pytest.approx(0.02, rel=1e-12)
    a, b = 0.3, 4e-5
    ns = [250, 500, 1000, 2000]
    fa, fb = fit_sd_scaling({n: math.sqrt(a / n + b) for n in ns})
    assert fa == pytest.approx(a, rel=1e-9) and fb == pytest.approx(b, rel=1e-6)
    fa, fb = fit_sd_scaling({250: 0.04, 1000: 0.019})  # falls faster than 1/sqrt(n): floor clipped at 0
    assert fb == 0.0 and fa > 0
    assert paired_relative_sd([10, 20, 30], [11, 19, 30]) == pytest.approx(np.std([0.1, -0.05, 0.0], ddof=1))


def test_sd_upper_bound_covers_at_its_confidence():
    """Monte Carlo: the bound from K = 12 normal values exceeds the true sd in a fraction c of M = 20,000 draws
    (sd of that fraction ≤ 0.0035; checked to 4 sd)."""
    rng = np.random.default_rng(1)
    s = rng.standard_normal((20_000, 12)).std(1, ddof=1)
    for c in (0.8, 0.95):
        rate = np.mean(s * sd_upper_bound(1.0, 12, c) >= 1.0)  # the bound is linear in the measured sd
        assert abs(rate - c) < 4 * math.sqrt(c * (1 - c) / 20_000), (c, rate)
    assert sd_upper_bound(0.01, 12, 0.8) > 0.01


def test_cheapest_plan_is_the_brute_force_minimum_and_respects_the_budget():
    kw = dict(effect=0.03, sd0=0.03, n0=500, floor=0.004, nfe_per_sample=20)
    grid = [250, 500, 1000, 2000, 4000, 8000]
    a = power_plan(sample_grid=grid, **kw)
    costs = {}
    for n in grid:
        k = required_sets(0.03, sd_at(n, 0.03, 500, 0.004), min_sets=3)
        costs[n] = 2 * 20 * n * k
    assert a.best.cost_nfe == min(costs.values())
    assert a.best.power >= 0.8 and a.best.n_sets >= 3
    # a budget below the cheapest plan: no plan, and the most powerful affordable one is reported
    b = power_plan(sample_grid=grid, budget_nfe=a.best.cost_nfe - 1, **kw)
    assert b.best is None and b.best_effort is not None and b.best_effort.power < 0.8
    assert b.best_effort.cost_nfe <= a.best.cost_nfe - 1
    assert "No plan resolves a 3 % FD change" in b.statement()
    s = a.statement()
    assert f"{a.best.n_samples:,} samples per set and {a.best.n_sets} seed sets" in s and "80 % power" in s
    assert "3 % at 500 samples" in s


def test_bias_dilution_and_shared_reference_term():
    # FD = 20 + 5000/n: at n = 500 the bias is half of FD, so a 3 % change of FD∞ is 2 % of FD_500
    a = power_plan(0.03, 0.02, 500, fd_inf=20.0, fd_slope=5000.0, sample_grid=[500, 2000])
    by_n = {p.n_samples: p for p in a.options}
    assert by_n[500].effect == pytest.approx(0.02) and by_n[500].n_sets == required_sets(0.02, 0.02, min_sets=3)
    assert "FD∞ change" in a.statement()
    # a reference term shared by all sets: no number of sets resolves δ once ref_sd ≥ δ / (t + t)
    assert required_sets(0.03, 0.01, ref_sd=0.015) is None
    c = power_plan(0.03, 0.01, 500, ref_sd=0.015)
    assert c.best is None and "shared by all sets" in c.statement()
    assert required_sets(0.03, 0.01, ref_sd=0.005) > required_sets(0.03, 0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="sd must be"):
        required_sets(0.03, 0.0)
    with pytest.raises(ValueError, match="effect"):
        required_sets(0.0, 0.1)
    with pytest.raises(ValueError, match="floor"):
        sd_at(100, 0.01, 500, floor=0.02)


def test_power_plan_options_are_keywords_and_checked():
    with pytest.raises(TypeError):
        power_plan(0.03, 0.018, 500, 0.0082, 20)  # was ref_sd = 20 without a word
    with pytest.raises(ValueError, match="ref_sd"):
        power_plan(0.03, 0.018, 500, 0.0082, ref_sd=-1.0)
    with pytest.raises(ValueError, match="floor must be"):
        power_plan(0.03, 0.018, 500, float("nan"))


@pytest.mark.parametrize("sd,n", [(0.017, 8), (0.35, 4), (0.05, 30)])
def test_detectable_effect_is_where_the_noncentral_t_power_is_80_percent(sd, n):
    """The oracle: the power of the paired t-test from scipy's noncentral t (the lower tail through the upper tail
    of the mirrored distribution, where nct.cdf returns NaN), solved for δ with brentq."""
    from scipy import optimize, stats

    from diffusion_es.experiments.power import detectable_effect

    def power(delta):
        c, nc = stats.t.ppf(0.975, n - 1), delta / (sd / np.sqrt(n))
        return stats.nct.sf(c, n - 1, nc) + stats.nct.sf(c, n - 1, -nc)

    want = optimize.brentq(lambda d: power(d) - 0.8, 1e-12, 50 * sd, xtol=1e-14)
    assert detectable_effect(sd, n) == pytest.approx(want, rel=1e-6)
    assert detectable_effect(sd, 1) == np.inf


def test_a_metric_too_noisy_to_plan_uses_the_profiles_cap():
    """More than 1,000 sets needed (a paired sd of 0.2 from 4 pilot sets): required_sets says None, and the plan
    used to fail with a TypeError in max(None, ...)."""
    from diffusion_es.experiments.power import required_sets, sd_upper_bound
    from diffusion_es.experiments.repro import plan_val_sets

    assert required_sets(0.03, sd_upper_bound(0.2, 4, 0.8), max_sets=1000) is None
    assert plan_val_sets(0.2, 4, 2, 8) == (None, 8)
    assert plan_val_sets(0.0, 4, 2, 8) == (2, 2)  # no paired noise at all
    need, used = plan_val_sets(0.0274, 4, 2, 8)  # the digits run's pilot: 22 needed, 8 allowed
    assert need == 22 and used == 8
