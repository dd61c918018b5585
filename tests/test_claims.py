"""The report's claim checks (experiments/claims.py), on results written by hand."""

import numpy as np
import pytest
from scipy.stats import rankdata

from diffusion_es.experiments.claims import check_claims


def _cell(nfe, lam, gain=-0.05):
    return {"sampler": "ddpm", "nfe_per_sample": nfe, "nfe_cell": nfe, "steps": nfe, "significant": True,
            "gain": gain, "gain_ci": [gain - 0.01, gain + 0.01], "gain_per_set": [gain, gain],
            "candidate": {"b": lam}, "lambda1_equals_baseline": True, "best_val": [1.0, 1.0]}


def _claim_c(nfes, lams):
    results = {"table": [_cell(n, lam) for n, lam in zip(nfes, lams)], "exposure": {},
               "config": {"nfe": list(nfes)}, "linear": []}
    return next(c for c in check_claims(results) if c["claim"].startswith("(c)"))


def _spearman(x, y):  # the definition: Pearson's r of the average ranks
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


@pytest.mark.parametrize("lams", [[1.01, 1.02, 1.01, 1.01], [1.03, 1.02, 1.02, 1.01], [1.01, 1.01, 1.02, 1.02]])
def test_fewer_steps_want_a_larger_lambda_uses_spearman_with_tied_ranks(lams):
    """λ comes from a grid, so cells tie; ordinal ranks (argsort of argsort) broke ties by position: for the first
    case they gave ρ = +0.40 where Spearman's ρ is −0.26, and the claim's verdict flipped."""
    nfes = [10, 20, 30, 40]
    rho = _spearman(nfes, lams)
    c = _claim_c(nfes, lams)
    assert f"{rho:+.2f} (1 samplers)" in c["evidence"], c
    assert c["reproduced"] is (rho < 0)
    assert _claim_c(nfes, [1.01] * 4)["reproduced"] is None  # one λ everywhere: no trend to judge


def test_cells_of_one_nfe_give_no_trend():
    """Two significant cells at the same NFE (e.g. repeated columns) with different λ: no ρ (it was NaN)."""
    c = _claim_c([10, 10], [1.01, 1.02])
    assert c["reproduced"] is None and "inconclusive" in c["evidence"]


def test_linear_claim_uses_the_main_tables_t_interval_and_names_the_schedule():
    """Claim (e) with 4 validation sets: a change whose mean ± 2 SE excluded 0 but whose 95 % t-interval (t = 3.18
    at 3 degrees of freedom) does not is inconclusive, and the schedule reads as λ at its ends, not a dict."""
    from diffusion_es.diagnostics.calibrate import paired_gain

    uniform = [50.0, 52.0, 48.0, 51.0]
    ratio = np.array([0.97, 0.99, 0.95, 0.985])  # mean −2.6 %, sd 1.7 %: 2 SE = 1.7 %, t-half = 2.7 %
    linear = list(np.asarray(uniform) * ratio)
    cell = _cell(20, 1.02)
    cell["best_val"] = uniform
    results = {"table": [cell], "exposure": {}, "config": {"nfe": [20]},
               "linear": [{"sampler": "ddpm", "steps": 20, "best_val": linear,
                           "candidate": {"kind": "linear", "k": 0.002, "b": 1.0}}]}
    c = next(c for c in check_claims(results) if c["claim"].startswith("(e)"))
    _, m, (lo, hi) = paired_gain(uniform, linear)
    g = ratio - 1
    assert m + 2 * g.std(ddof=1) / 2 < 0 < hi  # the old rule said "yes"; the t-interval does not
    assert c["reproduced"] is None
    assert f"[{100 * lo:+.1f}, {100 * hi:+.1f}], paired 95 % t-interval" in c["evidence"]
    assert "linear λ 1.038 → 1.000, first to last step (k 0.002, b 1.0000)" in c["evidence"], c


def _exposure(raw, used, d_base, d_es):
    def curve(ratio, delta, key):
        return {key: list(ratio), "delta": list(delta)}
    return {"ddpm": {"baseline": {"mean_ratio_raw": float(np.mean(raw)), "sum_delta": float(np.sum(d_base)),
                                  "steps": 20, "es": None},
                     "es": {"mean_ratio_used": float(np.mean(used)), "sum_delta": float(np.sum(d_es)), "steps": 20,
                            "es": {"kind": "uniform", "b": 1.02}},
                     "curves": {"baseline": curve(raw, d_base, "ratio_raw"), "es": curve(used, d_es, "ratio_used")}}}


def _claims(**kw):
    results = {"table": [_cell(20, 1.02)], "exposure": {}, "config": {"nfe": [20]}, "linear": [], **kw}
    return {c["claim"].split(" (")[0] if c["claim"].startswith("ES pulls") else c["claim"][:3]: c
            for c in check_claims(results)}


def test_pulls_toward_training_is_judged_per_step_not_by_a_signed_mean():
    """The digits DDPM case: ES moves 19 of 20 steps away from the training curve (1.00 → 0.95) and the last one
    further up (1.51 → 1.57); the signed mean ratio went from 1.029 to 1.002, which read as "pulled toward"."""
    raw = np.array([1.0] * 19 + [1.51])
    used = np.array([0.95] * 19 + [1.57])
    assert abs(np.mean(used) - 1) < abs(np.mean(raw) - 1)  # what the old rule compared
    c = _claims(exposure=_exposure(raw, used, np.ones(20), np.ones(20)))["ES pulls the used ε-norm toward the training curve"]
    assert c["reproduced"] is False and "closer at 0 of 20 steps" in c["evidence"], c
    assert "|ratio − 1|: baseline 0.0255, ES (used ε) 0.0760" in c["evidence"]


def test_exposure_claims_need_a_sign_test_beyond_the_noise():
    """11 of 20 steps above the training curve is a coin flip (p = 0.82), not "most steps"; 16 of 20 is not."""
    from scipy.stats import binomtest

    for above, want in [(11, None), (16, True), (3, False)]:
        raw = np.array([1.01] * above + [0.99] * (20 - above))
        d = np.linspace(0.1, 0.2, 20)
        c = _claims(exposure=_exposure(raw, raw, d, d))["(a)"]
        assert c["reproduced"] is want, (above, c)
        assert f"{above} of 20 steps (sign test p = {binomtest(above, 20).pvalue:.2g})" in c["evidence"]
    # δ_t: smaller at every step that changed -> reproduced; no step changed -> no verdict
    d = np.linspace(0.1, 0.2, 20)
    assert _claims(exposure=_exposure(raw, raw, d, d * 0.9))["(f)"]["reproduced"] is True
    assert _claims(exposure=_exposure(raw, raw, d, d))["(f)"]["reproduced"] is None


def _gain_cell(sampler, nfe, per_set):
    c = _cell(nfe, 1.02, float(np.mean(per_set)))
    c.update(sampler=sampler, gain_per_set=list(per_set), significant=False)
    return c


def test_step_count_and_solver_claims_are_paired_by_seed_set():
    """Every cell is validated on the same seed sets, so the seed sets' own noise is shared: differences per
    set (the scipy paired t-test as the oracle) resolve what an independent-samples comparison cannot."""
    from scipy.stats import ttest_rel

    shared = np.array([-0.08, 0.05, -0.02, 0.09, -0.06, 0.03])  # seed-set noise, the same in every cell
    euler = shared + np.array([-0.020, -0.025, -0.018, -0.022, -0.021, -0.019])
    heun = shared + np.array([0.001, -0.002, 0.002, 0.0, -0.001, 0.001])
    table = [_gain_cell("euler", 10, euler), _gain_cell("heun", 11, heun)]
    for c in table:
        c["nfe_cell"] = 10
    c = _claims(table=table, config={"nfe": [10]})["(d)"]
    lo, hi = ttest_rel(euler, heun).confidence_interval(0.95)
    assert c["reproduced"] is True, c
    assert f"[{100 * lo:+.1f}, {100 * hi:+.1f}], paired by seed set" in c["evidence"]
    assert ttest_rel(euler, heun).pvalue < 0.05  # paired: clear; the old unpaired rule could not see it
    d = euler.mean() - heun.mean()
    se = np.sqrt(euler.var(ddof=1) / 6 + heun.var(ddof=1) / 6)
    assert abs(d) <= 2 * se
    # the same for "gains are largest at low step counts": one sampler's cells at 10 and at 20 NFE
    low, high = _gain_cell("ddpm", 10, euler), _gain_cell("ddpm", 20, heun)
    low["nfe_cell"], high["nfe_cell"] = 10, 20
    c = _claims(table=[low, high], config={"nfe": [10, 20]})["Gai"]
    assert c["reproduced"] is True and f"[{100 * lo:+.1f}, {100 * hi:+.1f}], paired by seed set" in c["evidence"]
    # no cells at one end: no verdict (the mean of no cells was NaN, and NaN read as "no")
    c = _claims(table=[low], config={"nfe": [10, 20]})["Gai"]
    assert c["reproduced"] is None and "no cells" in c["evidence"], c


def test_stochastic_vs_deterministic_lambda_gap_must_exceed_the_search_resolution():
    """DDPM 0.930 vs DDIM 0.940 on a grid with steps of 0.025 says nothing (the MNIST report said "no")."""
    def cell(sampler, lam, grid):
        c = _gain_cell(sampler, 20, [-0.1, -0.12])
        c.update(significant=True, candidate={"kind": "uniform", "b": lam}, lam_spread=float("nan"),
                 evaluations=[{"schedule": None}] + [{"schedule": {"kind": "uniform", "b": g}} for g in grid])
        return c

    key = "Sto"
    close = _claims(table=[cell("ddpm", 0.93, [0.905, 0.93, 0.955]), cell("ddim", 0.94, [0.93, 0.94, 0.95])])[key]
    assert close["reproduced"] is None and "resolves λ to ±0.0250: within it" in close["evidence"], close
    far = _claims(table=[cell("ddpm", 1.05, [1.04, 1.05, 1.06]), cell("ddim", 1.005, [1.0, 1.005, 1.01])])[key]
    assert far["reproduced"] is True, far


def test_a_nan_metric_is_refused_and_a_worse_cell_is_marked_worse():
    """A NaN metric value made a NaN gain, which the table printed as "(n.s.)"; a cell whose whole interval is
    above 0 (ES significantly worse) was printed "(n.s.)" too."""
    from diffusion_es.experiments.blocks import _cell_text
    from diffusion_es.experiments.common import Paired

    class Metric:
        name = "FD-test"

        def __call__(self, x):
            return float("nan")

    ev = Paired(Metric(), [[0, 1]], [[2, 3]])
    with pytest.raises(ValueError, match="FD-test returned nan"):
        ev("k", lambda seeds: seeds)
    c = _cell(20, 1.02)
    c.update(baseline_val=[10.0, 11.0], best_val=[11.0, 12.0], gain=0.095, gain_ci=[0.02, 0.17], significant=False)
    assert _cell_text(c).endswith("(worse))")
    c.update(gain_ci=[-0.02, 0.17])
    assert _cell_text(c).endswith("(n.s.))")
