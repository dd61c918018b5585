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
