"""Epsilon Scaling: λ schedules (validation, JSON), σ-keyed binding and the denoiser wrapper."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_es.core.analytic import GaussianMixtureDenoiser
from diffusion_es.core.param import VPDenoiser
from diffusion_es.samplers import sample_heun
from diffusion_es.core.scaling import (EpsilonScaled, Linear, PerStep, SigmaKeyed, Uniform, epsilon_scaled,
                                  load_schedule, save_schedule, schedule_from_dict)
from diffusion_es.core.schedules import VPSchedule, karras_sigmas
from diffusion_es.errors import UsageError

F64 = torch.float64
MIX = GaussianMixtureDenoiser([[-1.0, 0.5], [1.0, -1.0]], stds=[0.3, 0.5])


# ---- schedules: values, JSON, validation ---------------------------------------------------------------------
SCHEDULES = [Uniform(1.017), Uniform(0.998), Uniform(), Linear(0.0025, 1.0), Linear(-0.0001, 1.004),
             PerStep([1.01, 1.005, 1.0, 0.999])]


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_json_round_trip(sch, tmp_path):
    d = json.loads(sch.to_json())
    back = schedule_from_dict(d)
    assert back == sch and type(back) is type(sch)
    np.testing.assert_array_equal(back.values(4), sch.values(4))
    # files: bare schedule, and wrapped with metadata
    p = tmp_path / "lam.json"
    save_schedule(p, sch)
    assert load_schedule(p) == sch
    save_schedule(p, sch, model="digits", steps=4, fd=1.23)
    raw = json.loads(p.read_text())
    assert raw["schedule"] == sch.to_dict() and raw["model"] == "digits"
    assert load_schedule(p) == sch
    # a hand-written wrapper is accepted too
    p.write_text(json.dumps({"schedule": d, "note": "hand-written"}))
    assert load_schedule(p) == sch


def test_values_and_lambda_below_one():
    np.testing.assert_array_equal(Uniform(1.017).values(3), [1.017] * 3)
    np.testing.assert_array_equal(Uniform(0.9985).values(2), [0.9985] * 2)  # EDM Heun's best λ is below 1
    np.testing.assert_array_equal(PerStep([0.5, 2.0]).values(2), [0.5, 2.0])
    assert Uniform(1.0).is_identity(5) and PerStep([1.0, 1.0]).is_identity(2) and not Uniform(1.001).is_identity(5)


@pytest.mark.parametrize("n", [1, 2, 20, 100])
def test_linear_convention_t0_is_the_last_step(n):
    k, b = 0.0025, 1.0
    v = Linear(k, b).values(n)
    assert len(v) == n
    assert v[-1] == b                          # t = 0: the last (least noisy) step
    assert v[0] == pytest.approx(k * (n - 1) + b, rel=1e-15)  # t = n-1: the first (noisiest) step
    np.testing.assert_allclose(v, k * np.arange(n - 1, -1, -1) + b, rtol=1e-15)
    if n > 1:
        assert np.all(np.diff(v) < 0)          # λ largest at the noisiest step


BAD = [
    (lambda: Uniform(0.0), "finite and > 0"),
    (lambda: Uniform(-1.01), "finite and > 0"),
    (lambda: Uniform(float("nan")), "finite and > 0"),
    (lambda: Uniform(float("inf")), "finite and > 0"),
    (lambda: Linear(0.01, 0.0), "finite and > 0"),
    (lambda: Linear(float("nan"), 1.0), "finite"),
    (lambda: Linear(0.0, float("inf")), "finite"),
    (lambda: Linear(-0.1, 1.0).values(20), "finite and > 0"),  # goes negative at the noisiest step
    (lambda: PerStep([1.0, 0.0]), "finite and > 0"),
    (lambda: PerStep([1.0, float("nan")]), "finite and > 0"),
    (lambda: PerStep([]), "empty"),
    (lambda: PerStep([1.0, 1.01]).values(3), "2 values but the sampler runs 3 steps"),
    (lambda: PerStep([1.0, 1.01]).bind(karras_sigmas(3, 0.01, 80)), "2 values but the sampler runs 3 steps"),
    (lambda: schedule_from_dict({"b": 1.0}), "kind"),
    (lambda: schedule_from_dict([1.0]), "kind"),
    (lambda: schedule_from_dict({"kind": "cosine"}), "unknown"),
    (lambda: schedule_from_dict({"kind": "uniform"}), "missing or has a malformed field"),
    (lambda: schedule_from_dict({"kind": "linear", "k": 0.1}), "missing or has a malformed field"),
    (lambda: schedule_from_dict({"kind": "per_step", "values": None}), "flat list or 1-D array, got NoneType"),
    (lambda: schedule_from_dict({"kind": "uniform", "b": -2}), "finite and > 0"),
    (lambda: SigmaKeyed(1.01), "callable"),
    (lambda: SigmaKeyed(lambda s: 1.0).to_dict(), "cannot be written as JSON"),
    (lambda: SigmaKeyed(lambda s: 0.0).bind([2.0, 1.0]), "finite and > 0"),
    (lambda: Uniform(1.01).bind([1.0, 2.0]), "strictly decreasing"),
    (lambda: Uniform(1.01).bind([0.0]), "strictly decreasing"),
    # one number where one is meant, a flat list where a list is: never silently the first value or a flattening
    (lambda: Uniform(np.array([1.01, 1.02])), "one real number, got ndarray of shape \\(2,\\)"),
    (lambda: Uniform(torch.tensor([1.01, 1.02])), "one real number, got Tensor"),
    (lambda: Uniform("1.01"), "one real number, got str"),
    (lambda: Uniform(True), "one real number, got bool"),
    (lambda: Linear([0.01], 1.0), "linear schedule: k must be one real number"),
    (lambda: PerStep(np.ones((2, 2))), "flat list or 1-D array, got ndarray of 2"),
    (lambda: PerStep(1.01), "flat list or 1-D array"),
    (lambda: PerStep(["1.01", "x"]), "must be numbers"),
    (lambda: PerStep([True, 1.0]), "not booleans"),
    (lambda: schedule_from_dict({"kind": "per_step", "values": "1.01"}), "flat list"),
    (lambda: schedule_from_dict({"kind": "uniform", "b": "1.01"}), "one real number, got str"),
    (lambda: Uniform(0.0), "got 0.0$"),  # the value as written, not np.float64(0.0)
]


@pytest.mark.parametrize("call,msg", BAD)
def test_invalid_lambda_is_a_clear_value_error(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2", '{"kind": "uniform", "b": 0}', '"uniform"',
                                  '{"schedule": {"kind": "per_step", "values": [1.0, -1.0]}}'])
def test_malformed_schedule_file(tmp_path, text):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=str(p.name)):
        load_schedule(p)


def test_a_calibration_result_is_made_for_its_own_setting(tmp_path):
    """A `calibrate --json` result holds its sampler and steps beside the schedule (no made_for block): they count."""
    from diffusion_es.core.scaling import read_schedule

    p = tmp_path / "cal.json"
    p.write_text(json.dumps({"sampler": "ddpm", "steps": 20, "schedule": {"kind": "uniform", "b": 1.02}}))
    sched, made_for = read_schedule(p)
    assert sched.to_dict() == {"kind": "uniform", "b": 1.02} and made_for == {"sampler": "ddpm", "steps": 20}
    p.write_text(json.dumps({"sampler": "ddim", "steps": 20, "spacing": "trailing", "schedule": {"kind": "uniform",
                                                                                              "b": 1.02}}))
    assert read_schedule(p)[1] == {"sampler": "ddim", "steps": 20, "spacing": "trailing"}


def test_a_calibration_without_a_winner_says_so(tmp_path):
    p = tmp_path / "cal.json"
    p.write_text(json.dumps({"schedule": None, "candidate": {"kind": "uniform", "b": 1.0075}, "significant": False}))
    with pytest.raises(ValueError, match="found no λ that beat the baseline.*sample without ES.*1.0075"):
        load_schedule(p)


def test_missing_schedule_file(tmp_path):
    with pytest.raises(UsageError, match="no such"):
        load_schedule(tmp_path / "nope.json")


# ---- binding: lookups keyed on σ -----------------------------------------------------------------------------
def test_bound_lambda_keys_on_sigma():
    grid = karras_sigmas(6, 0.01, 80.0)          # 6 steps + final 0
    lam = PerStep([1.6, 1.5, 1.4, 1.3, 1.2, 1.1]).bind(grid)
    s = grid[:-1]
    np.testing.assert_array_equal(lam.sigmas, s)
    np.testing.assert_array_equal(lam(s), [1.6, 1.5, 1.4, 1.3, 1.2, 1.1])
    # a σ inside (σ_i, σ_{i-1}) belongs to step i; above σ_0 to step 0; below σ_{n-1} to the last step
    mid = np.sqrt(s[:-1] * s[1:])
    np.testing.assert_array_equal(lam(mid), [1.5, 1.4, 1.3, 1.2, 1.1])
    np.testing.assert_array_equal(lam([200.0, 1e-4]), [1.6, 1.1])
    # tiny float noise on a grid σ still hits that step
    np.testing.assert_array_equal(lam(s * (1 + 1e-12)), lam(s))
    np.testing.assert_array_equal(lam(s * (1 - 1e-12)), lam(s))
    # sigma-keyed: λ = fn(σ) wherever it is evaluated
    sk = SigmaKeyed(lambda v: 1 + 0.01 * math.log1p(v)).bind(grid)
    np.testing.assert_allclose(sk(mid), 1 + 0.01 * np.log1p(mid), rtol=1e-15)
    assert not sk.identity


def _implied_lambda_recorder(inner):
    """callback recording (i, stage, σ, λ implied by the ε used vs the inner denoiser's ε at the same input)."""
    rec = []

    def cb(info):
        eps_inner = (info.x - inner(info.x, info.sigma)) / info.sigma
        ratio = eps_inner / info.eps
        rec.append((info.i, info.stage, info.sigma, float(ratio.mean()), float(ratio.std())))
    return rec, cb


def test_heun_correction_gets_the_next_steps_lambda():
    n = 8
    grid = karras_sigmas(n, 0.01, 80.0)
    lams = 1.0 + 0.01 * np.arange(n, 0, -1)                # distinct λ per step
    den = EpsilonScaled(MIX, PerStep(lams).bind(grid))
    rec, cb = _implied_lambda_recorder(MIX)
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sample_heun(den, x, grid, callback=cb)
    assert [r[:2] for r in rec] == [(i, st) for i in range(n) for st in ("step", "correction")][:2 * n - 1]
    for i, stage, sigma, lam, spread in rec:
        j = i if stage == "step" else i + 1
        assert sigma == pytest.approx(grid[j], rel=1e-15)
        assert lam == pytest.approx(lams[j], rel=1e-10), (i, stage)
        assert spread < 1e-9


def test_churned_sigma_inside_the_interval_gets_this_steps_lambda():
    n = 8
    grid = karras_sigmas(n, 0.01, 80.0)
    lams = 1.0 + 0.01 * np.arange(n, 0, -1)
    den = EpsilonScaled(MIX, PerStep(lams).bind(grid))
    rec, cb = _implied_lambda_recorder(MIX)
    g = torch.Generator().manual_seed(1)
    x = 80.0 * torch.randn(64, 2, generator=g, dtype=F64)
    churn = 0.2 * n                                         # γ = 0.2: σ̂_i = 1.2 σ_i < σ_{i-1} on this grid
    assert np.all(grid[:-2] / grid[1:-1] > 1.2)
    sample_heun(den, x, grid, S_churn=churn, noise=lambda i: torch.randn(64, 2, generator=g, dtype=F64),
                callback=cb)
    steps = [r for r in rec if r[1] == "step"]
    assert len(steps) == n
    for i, _, sigma, lam, _ in steps:
        assert sigma == pytest.approx(1.2 * grid[i], rel=1e-12)
        assert grid[i] < sigma < (grid[i - 1] if i > 0 else np.inf)
        assert lam == pytest.approx(lams[i], rel=1e-10)
    for i, _, sigma, lam, _ in (r for r in rec if r[1] == "correction"):
        assert lam == pytest.approx(lams[i + 1], rel=1e-10)


def test_churned_sigma_above_the_previous_grid_point_still_gets_this_steps_lambda():
    """EDM's own settings (e.g. 40 steps, S_churn = 40 → γ = √2 − 1) push σ̂_i = (1 + γ) σ_i above σ_{i−1}
    at the noisy end of a Karras grid. The churned evaluation is still step i (the paper scales step i's
    evaluations by λ_i; "stochastic churn is unchanged"), so a per-step or linear schedule must give λ_i there."""
    n = 40
    grid = karras_sigmas(n, 0.01, 80.0)
    lams = Linear(0.001, 1.0).values(n)
    den = EpsilonScaled(MIX, Linear(0.001, 1.0).bind(grid))
    rec, cb = _implied_lambda_recorder(MIX)
    g = torch.Generator().manual_seed(2)
    x = 80.0 * torch.randn(16, 2, generator=g, dtype=F64)
    sample_heun(den, x, grid, S_churn=40.0, noise=lambda i: torch.randn(16, 2, generator=g, dtype=F64),
                callback=cb)
    crossed = [(i, sigma, lam) for i, st, sigma, lam, _ in rec if st == "step" and i > 0 and sigma >= grid[i - 1]]
    assert crossed, "test premise: some churned σ̂_i lies above σ_{i-1}"
    wrong = [(i, round(lam, 6), round(float(lams[i]), 6)) for i, _, lam in crossed if abs(lam - lams[i]) > 1e-9]
    assert not wrong, f"churned evaluations got another step's λ: (step, λ used, λ_i) = {wrong[:5]}"


# ---- the wrapper ------------------------------------------------------------------------------------------------
def test_epsilon_scaled_formula_and_mixed_identity():
    grid = np.array([10.0, 1.0, 0.1])
    den = EpsilonScaled(MIX, PerStep([1.25, 1.0, 0.8]).bind(grid))
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    s = torch.tensor([10.0, 1.0, 0.1], dtype=F64)
    D = MIX(x, s)
    out = den(x, s)
    lam = torch.tensor([1.25, 1.0, 0.8], dtype=F64)[:, None]
    torch.testing.assert_close(out, x - (x - D) / lam, rtol=1e-15, atol=1e-15)
    assert torch.equal(out[1], D[1])                         # λ = 1 rows are the inner output bit for bit
    # ε used = ε / λ
    torch.testing.assert_close((x - out) / s[:, None], (x - D) / s[:, None] / lam, rtol=1e-12, atol=0)


def test_epsilon_scaled_identity_returns_the_denoiser_itself():
    grid = karras_sigmas(5, 0.01, 80.0)
    assert epsilon_scaled(MIX, None, grid) is MIX
    assert epsilon_scaled(MIX, Uniform(1.0), grid) is MIX
    assert epsilon_scaled(MIX, PerStep([1.0] * 5), grid) is MIX
    assert isinstance(epsilon_scaled(MIX, Uniform(1.001), grid), EpsilonScaled)
    # an explicit wrapper with λ = 1 is also exact
    den = EpsilonScaled(MIX, Uniform(1.0).bind(grid))
    x = torch.randn(4, 2, dtype=F64)
    assert torch.equal(den(x, 3.0), MIX(x, 3.0))


class LearnedVarNet(nn.Module):
    """A float64 ε-network with 2C outputs: ε from an oracle, then a fixed variance value."""

    def __init__(self, sch):
        super().__init__()
        self.sch = sch
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64), requires_grad=False)

    def forward(self, x_t, t):
        ab = torch.from_numpy(np.interp(t.numpy(), np.arange(self.sch.T), self.sch.alphas_cumprod))[:, None]
        x = x_t / ab.sqrt()
        s = ((1 - ab) / ab).sqrt().reshape(-1)
        eps = (x - MIX(x, s)) / s[:, None]
        return torch.cat([eps, torch.tanh(x_t)], dim=1)


def test_epsilon_scaled_scales_only_eps_and_passes_learned_variance_through():
    sch = VPSchedule.linear()
    base = VPDenoiser(LearnedVarNet(sch), sch, learned_variance=True)
    t = np.array([999, 500, 100, 5])
    grid = sch.sigmas[t]
    den = EpsilonScaled(base, PerStep([1.1, 1.05, 1.02, 0.99]).bind(grid))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    s = torch.from_numpy(grid)
    D, extras = base.forward_full(x, s)
    D_es, extras_es = den.forward_full(x, s)
    assert set(extras_es) == {"var_values"}
    assert torch.equal(extras_es["var_values"], extras["var_values"])        # variance channels untouched
    eps = (x - D) / s[:, None]
    eps_es = (x - D_es) / s[:, None]
    torch.testing.assert_close(eps_es, eps / torch.tensor([1.1, 1.05, 1.02, 0.99], dtype=F64)[:, None],
                               rtol=1e-11, atol=1e-13)
