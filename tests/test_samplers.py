"""Samplers: exact identities, equivalences, analytic oracles, closed-form ES, noise protocol, callbacks, errors."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest
from torch import nn

from diffusion_es.core.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from diffusion_es.core.param import VPDenoiser
from diffusion_es.samplers import (SamplingPlan, SeedNoise, common, sample, sample_ddim, sample_ddpm,
                                   sample_euler, sample_heun)
from diffusion_es.core.scaling import EpsilonScaled, Linear, PerStep, Uniform
from diffusion_es.core.schedules import VPSchedule, karras_sigmas, respace

from _tol import loop_tol, mag, tol

F64 = torch.float64
SCH = VPSchedule.linear()
MIX1 = GaussianMixtureDenoiser([-1.0, 0.6], stds=[0.25, 0.4], weights=[0.35, 0.65])   # 1-D, bimodal
MIX2 = GaussianMixtureDenoiser([[-0.8, 0.3], [0.5, -0.6], [0.4, 0.7]], stds=[0.15, 0.3, 0.2])


class TinyEps(nn.Module):
    """A fixed random ε-network on (x_t, t): one hidden tanh layer plus a skip, time-dependent (2C outputs
    with learned variance)."""

    def __init__(self, dim=4, hidden=32, learned_variance=False, dtype=torch.float32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        out = 2 * dim if learned_variance else dim
        self.w1 = nn.Parameter(torch.randn(dim + 2, hidden, generator=g, dtype=dtype) / math.sqrt(dim + 2))
        self.b1 = nn.Parameter(0.1 * torch.randn(hidden, generator=g, dtype=dtype))
        self.w2 = nn.Parameter(torch.randn(hidden, out, generator=g, dtype=dtype) / math.sqrt(hidden))
        self.dim, self.learned_variance = dim, learned_variance

    def forward(self, x_t, t):
        u = (t / 1000.0).reshape(-1, 1)
        h = torch.tanh(torch.cat([x_t, torch.sin(3 * u), torch.cos(3 * u)], dim=1) @ self.w1 + self.b1)
        out = h @ self.w2
        eps = 0.8 * x_t * u.sqrt() + 0.5 * out[:, :self.dim]
        if self.learned_variance:
            return torch.cat([eps, torch.tanh(out[:, self.dim:])], dim=1)
        return eps


NET = VPDenoiser(TinyEps(), SCH)
NET64 = VPDenoiser(TinyEps(dtype=F64), SCH)
NET_LV = VPDenoiser(TinyEps(learned_variance=True), SCH, learned_variance=True)
NET_LV64 = VPDenoiser(TinyEps(learned_variance=True, dtype=F64), SCH, learned_variance=True)

# (sampler, steps, denoiser, kwargs)
CONFIGS = {
    "ddpm-small-clip": ("ddpm", 12, NET, dict(variance="small", clip=True)),
    "ddpm-small-noclip": ("ddpm", 12, NET, dict(variance="small", clip=False)),
    "ddpm-large": ("ddpm", 12, NET, dict(variance="large", clip=True)),
    "ddpm-learned": ("ddpm", 12, NET_LV, dict(variance="learned", clip=True)),
    "ddpm-learned-noclip": ("ddpm", 12, NET_LV, dict(variance="learned", clip=False)),
    "ddim-eta0": ("ddim", 12, NET, dict(eta=0.0, clip=True)),
    "ddim-eta0-noclip": ("ddim", 12, NET, dict(eta=0.0, clip=False)),
    "ddim-eta1": ("ddim", 12, NET, dict(eta=1.0, clip=True)),
    "euler": ("euler", 12, NET, {}),
    "heun": ("heun", 12, NET, {}),
    "euler-churn": ("euler", 12, NET, dict(S_churn=8.0, S_tmin=0.05, S_tmax=50.0)),
    "heun-churn": ("heun", 12, NET, dict(S_churn=8.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)),
}


def _run(name, es=None, seeds=range(6), batch_size=256, **extra):
    sampler, steps, den, kw = CONFIGS[name]
    return sample(den, sampler, steps, (4,), seeds, schedule=SCH, es=es, batch_size=batch_size, **kw, **extra)


# ---- λ = 1 is the baseline bit for bit ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lambda_one_is_bit_identical(name):
    sampler, steps, den, kw = CONFIGS[name]
    base = _run(name)
    assert torch.equal(_run(name, es=Uniform(1.0)), base)
    assert torch.equal(_run(name, es=PerStep([1.0] * steps)), base)
    # an explicit wrapper with λ = 1 (not short-circuited by epsilon_scaled) through the sampler itself
    plan = SamplingPlan(sampler, steps, SCH)
    for lam in (Uniform(1.0), PerStep([1.0] * steps)):
        noise = SeedNoise(range(6), (4,))
        with torch.no_grad():
            out = plan.run(EpsilonScaled(den, lam.bind(plan.sigmas)), noise.initial(), noise, **kw)
        assert torch.equal(out, base)
    # and λ ≠ 1 really changes it
    assert not torch.allclose(_run(name, es=Uniform(1.05)), base, atol=1e-6)


# ---- equivalences ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("den", [NET64, MIX1, MIX2], ids=["mlp64", "mix1", "mix2"])
@pytest.mark.parametrize("steps,spacing", [(10, "adm"), (37, "adm"), (20, "trailing")])
def test_ddim_eta0_equals_euler_in_sigma_space(den, steps, spacing):
    dim = den.shape[0] if hasattr(den, "shape") else 4
    ch = SCH.respaced(respace(SCH.T, steps, spacing))
    x_T = torch.randn(64, dim, generator=torch.Generator().manual_seed(steps), dtype=F64)
    ddim = sample_ddim(den, x_T, ch, eta=0.0, clip=False)
    grid = np.concatenate([ch.sigmas[::-1], [0.0]])
    euler = sample_euler(den, x_T * math.sqrt(1 + ch.sigmas[-1] ** 2), grid)
    torch.testing.assert_close(ddim, euler, rtol=0, atol=1e-12)


@pytest.mark.parametrize("den", [NET64, MIX2], ids=["mlp64", "mix2"])
@pytest.mark.parametrize("steps", [8, 25])
def test_ddim_eta1_equals_ancestral_ddpm_with_the_same_noise(den, steps):
    dim = den.shape[0] if hasattr(den, "shape") else 4
    kw = dict(schedule=SCH, batch_size=16)
    ddpm = sample(den, "ddpm", steps, (dim,), range(40), variance="small", clip=False, **kw)
    ddim = sample(den, "ddim", steps, (dim,), range(40), eta=1.0, clip=False, **kw)
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-12)
    # also with ES (the equivalence is a property of the sampler, whatever the denoiser)
    es = Linear(0.002, 1.0)
    torch.testing.assert_close(sample(den, "ddim", steps, (dim,), range(40), eta=1.0, clip=False, es=es, **kw),
                               sample(den, "ddpm", steps, (dim,), range(40), clip=False, es=es, **kw),
                               rtol=0, atol=1e-12)


# ---- analytic oracles: convergence to the true distribution --------------------------------------------------
def _ode_oracle(plan, x_first):
    """The exact probability-flow map of a 1-D mixture: quantile transport from the marginal at σ_0 to the data."""
    return torch.from_numpy(MIX1.ppf(MIX1.cdf(x_first.numpy(), plan.sigmas[0]), 0.0))


# KS distance of the end points to the data law: with 6000 exact draws, P(KS > 0.045) ≈ 2·exp(−2·6000·0.045²) ≈ 6e-11
# (Kolmogorov's tail), so the bound leaves room for the samplers' own small discretisation error; with 1500 draws it
# was about 0.005 per check, and "5 steps are 3 times worse" failed about 3 % of re-seedings
KS_N, KS_BOUND = 6000, 0.045


@pytest.mark.parametrize("sampler,few,many,kw", [
    ("ddim", 5, 500, dict(eta=0.0, clip=False)),
    ("euler", 5, 500, {}),
    ("heun", 5, 60, {}),
])
def test_deterministic_samplers_converge_to_the_exact_ode_map(sampler, few, many, kw):
    seeds = range(300)
    errs = []
    for steps in (few, many):
        plan = SamplingPlan(sampler, steps, SCH)
        noise = SeedNoise(seeds, (1,))
        x0 = plan.initial(noise.initial())
        x_first = x0 * math.sqrt(1 + plan.sigmas[0] ** 2) if plan.chain is not None else x0
        out = plan.run(MIX1, noise.initial(), noise, **kw)
        errs.append(float((out - _ode_oracle(plan, x_first)).abs().max()))
    assert errs[1] < 0.02, errs
    assert errs[1] < errs[0] / 20, errs
    # the end points land on the data distribution too (KS_BOUND)
    x = sample(MIX1, sampler, many, (1,), range(KS_N), schedule=SCH, batch_size=KS_N, **kw)
    assert kstest(x.numpy().ravel(), MIX1.cdf).statistic < KS_BOUND


@pytest.mark.parametrize("sampler,few,many,kw", [
    ("ddpm", 5, 100, dict(variance="small", clip=False)),
    ("ddpm", 5, 100, dict(variance="large", clip=False)),
    ("ddim", 5, 100, dict(eta=1.0, clip=False)),
    ("euler", 5, 100, dict(S_churn=10.0)),
    ("heun", 5, 50, dict(S_churn=10.0, S_tmin=0.05, S_tmax=50.0)),
])
def test_stochastic_samplers_converge_in_distribution(sampler, few, many, kw):
    ks = [kstest(sample(MIX1, sampler, n, (1,), range(KS_N), schedule=SCH, batch_size=KS_N, **kw).numpy().ravel(),
                 MIX1.cdf).statistic for n in (few, many)]
    assert ks[1] < KS_BOUND, ks
    assert ks[0] > 3 * ks[1], ks  # 5 steps: about 0.11; the many-step KS would have to pass about 0.037 to fail it


@pytest.mark.parametrize("sampler,kw,steps", [
    ("ddpm", dict(variance="small", clip=False), (4, 1000)),
    ("ddpm", dict(variance="large", clip=False), (4, 1000)),
    ("ddim", dict(eta=0.0, clip=False), (4, 1000)),
    ("ddim", dict(eta=1.0, clip=False), (4, 1000)),
    ("euler", {}, (4, 400)),
    ("heun", {}, (4, 100)),
    ("heun", dict(S_churn=5.0), (4, 100)),
])
def test_gaussian_moments_converge(sampler, kw, steps):
    """N(μ, s²) in 2048 dimensions: per-coordinate mean and variance of 64 samples (131k numbers). With s = 0.3
    the first-order samplers converge slowly (DDPM-100 is still ~18 % low in variance), hence the step counts.

    The variance error's standard error is √(2/131072) = 0.0039; the samplers' own discretisation bias at the
    larger step count was measured at up to 0.023 (DDPM fixed-small, DDIM η = 1), so the bound 0.04 sits 4.4 SEs
    above the worst case (a false failure under another random stream: about 1e-5; with 8 samples it was about
    0.06 for those two). The mean error's SE is 0.3/√131072 = 0.0008 against a bound of 0.01."""
    mu = torch.linspace(-0.5, 0.5, 2048, dtype=F64)
    g = GaussianDenoiser(2048, mean=mu, std=0.3)
    errs = []
    for n in steps:
        x = sample(g, sampler, n, (2048,), range(64), schedule=SCH, **kw)
        r = x - mu
        errs.append((abs(float(r.mean())), abs(float(r.var()) / 0.09 - 1)))
    assert errs[1][0] < 0.01 and errs[1][1] < 0.04, errs
    assert errs[0][1] > 10 * errs[1][1], errs


# ---- closed-form Epsilon Scaling on Gaussian data --------------------------------------------------------------
S = 0.5
GAUSS = GaussianDenoiser(3, mean=0.0, std=S)


def _euler_factor(grid, lams):
    """Euler on N(0, s²): D' = x (1 - σ²/((s²+σ²) λ)), so x_{i+1} = x_i (1 - (σ_i - σ_{i+1}) σ_i / ((s²+σ_i²) λ_i))."""
    f = 1.0
    for i in range(len(grid) - 1):
        si, sn = grid[i], grid[i + 1]
        f *= 1.0 - (si - sn) * si / ((S**2 + si**2) * lams[i])
    return f


def _heun_factor(grid, lams):
    """Heun on N(0, s²): d(σ, λ) = σ / ((s²+σ²) λ) per unit x; the correction at σ_{i+1} uses λ_{i+1}; the last
    step (to σ = 0) is a plain Euler step."""
    d = lambda s, lam: s / ((S**2 + s**2) * lam)  # noqa: E731
    f = 1.0
    for i in range(len(grid) - 1):
        si, sn = grid[i], grid[i + 1]
        x_next = 1.0 + (sn - si) * d(si, lams[i])
        if sn > 0:
            x_next = 1.0 + (sn - si) * 0.5 * (d(si, lams[i]) + d(sn, lams[i + 1]) * x_next)
        f *= x_next
    return f


def _ddim_factor(ch, lams):
    """DDIM (η = 0, no clip) in VP space: with c = 1 - σ²/((s²+σ²)λ), x̂_0 = c x_t/√ᾱ, ε = (1-c) x_t/√(1-ᾱ),
    x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev) ε."""
    f = 1.0
    for step, i in enumerate(range(len(ch) - 1, -1, -1)):
        ab, abp, s2 = ch.alphas_cumprod[i], ch.alphas_cumprod_prev[i], ch.sigmas[i] ** 2
        c = 1.0 - s2 / ((S**2 + s2) * lams[step])
        f *= math.sqrt(abp) * c / math.sqrt(ab) + math.sqrt(1 - abp) * (1 - c) / math.sqrt(1 - ab)
    return f


LAMS = {"uniform": Uniform(1.02), "linear": Linear(0.004, 1.0), "below1": Uniform(0.97)}


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("lam", list(LAMS))
@pytest.mark.parametrize("steps", [3, 10, 40])
def test_es_closed_form_euler_heun(sampler, lam, steps):
    es = LAMS[lam]
    factor = _euler_factor if sampler == "euler" else _heun_factor
    plan = SamplingPlan(sampler, steps, SCH)
    lams = es.values(steps)
    x = sample(GAUSS, sampler, steps, (3,), range(5), schedule=SCH, es=es)
    z = SeedNoise(range(5), (3,)).initial()
    want = z * plan.grid[0] * factor(plan.grid, lams)
    torch.testing.assert_close(x, want, rtol=1e-10, atol=0)
    base = sample(GAUSS, sampler, steps, (3,), range(5), schedule=SCH)
    torch.testing.assert_close(base, z * plan.grid[0] * factor(plan.grid, np.ones(steps)), rtol=1e-10, atol=0)
    # direction: λ > 1 shrinks less (larger output variance), λ < 1 more, sample by sample with the same noise
    # (Heun at 3 steps on a σ_max = 157 grid overshoots through zero, where "shrinks less" has no meaning)
    if sampler == "heun" and steps < 10:
        return
    if np.all(lams >= 1) and np.any(lams > 1):
        assert torch.all(x.abs() > base.abs())
    elif np.all(lams < 1):
        assert torch.all(x.abs() < base.abs())


@pytest.mark.parametrize("lam", list(LAMS))
@pytest.mark.parametrize("steps", [3, 10, 40])
def test_es_closed_form_ddim(lam, steps):
    es = LAMS[lam]
    ch = SCH.respaced(respace(SCH.T, steps, "adm"))
    lams = es.values(steps)
    x = sample(GAUSS, "ddim", steps, (3,), range(5), schedule=SCH, es=es, clip=False)
    z = SeedNoise(range(5), (3,)).initial()
    torch.testing.assert_close(x, z * _ddim_factor(ch, lams), rtol=1e-10, atol=0)
    base = sample(GAUSS, "ddim", steps, (3,), range(5), schedule=SCH, clip=False)
    if np.all(lams >= 1) and np.any(lams > 1):
        assert torch.all(x.abs() > base.abs())
    elif np.all(lams < 1):
        assert torch.all(x.abs() < base.abs())


@pytest.mark.parametrize("lam", [1.0, 1.01, 1.05, 0.98])
def test_es_continuous_ode_limit(lam):
    """dx/dσ = x σ / ((s² + σ²) λ)  ⇒  x(0) = x(σ_max) · (s² / (s² + σ_max²))^{1/(2λ)}."""
    smax = SCH.sigma_max
    want = (S**2 / (S**2 + smax**2)) ** (1 / (2 * lam))
    es = Uniform(lam)
    z = SeedNoise(range(3), (3,)).initial()
    heun = sample(GAUSS, "heun", 800, (3,), range(3), schedule=SCH, es=es) / (z * smax)
    # Heun is second order down to σ_min (slowly: the Karras grid is coarse at σ_max); its last step to 0 is
    # one Euler step with factor 1 - σ_min²/((s²+σ_min²)λ)
    smin = SCH.sigma_min
    want_grid = ((S**2 + smin**2) / (S**2 + smax**2)) ** (1 / (2 * lam)) * (1 - smin**2 / ((S**2 + smin**2) * lam))
    torch.testing.assert_close(heun, torch.full_like(heun, want_grid), rtol=5e-5, atol=0)
    torch.testing.assert_close(heun, torch.full_like(heun, want), rtol=5e-4, atol=0)
    # DDIM on the full chain (1000 steps) approaches the same limit from its VP start x_T = z
    ddim = sample(GAUSS, "ddim", 1000, (3,), range(3), schedule=SCH, es=es, clip=False)
    torch.testing.assert_close(ddim / (z * math.sqrt(1 + smax**2)), torch.full_like(ddim, want), rtol=5e-3, atol=0)
    # the output std relative to the data std: λ > 1 inflates it, λ < 1 deflates it
    ratio = want * smax / S
    assert (ratio > 1) == (lam > 1) or lam == 1.0


def test_es_closed_form_ddpm_mean_and_variance():
    """Ancestral DDPM on N(0, s²) (fixed-small, no clip): x_{i-1} = a_i x_i + std_i z with
    a_i = coef1_i c_i / √ᾱ_i + coef2_i. Zero noise gives Π a_i exactly; the variance follows V ← a² V + std²."""
    steps, es = 10, Linear(0.01, 1.0)
    ch = SCH.respaced(respace(SCH.T, steps, "adm"))
    lams = es.values(steps)

    def coeffs(lams):
        a, sd = [], []
        for step, i in enumerate(range(steps - 1, -1, -1)):
            s2 = ch.sigmas[i] ** 2
            c = 1 - s2 / ((S**2 + s2) * lams[step])
            a.append(ch.posterior_mean_coef1[i] * c / math.sqrt(ch.alphas_cumprod[i]) + ch.posterior_mean_coef2[i])
            sd.append(math.sqrt(ch.posterior_variance[i]) if i > 0 else 0.0)
        return a, sd

    plan = SamplingPlan("ddpm", steps, SCH)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    den = EpsilonScaled(GAUSS, es.bind(plan.sigmas))
    out = sample_ddpm(den, z, ch, noise=lambda i: torch.zeros_like(z), clip=False)
    a, sd = coeffs(lams)
    torch.testing.assert_close(out, z * float(np.prod(a)), rtol=1e-10, atol=0)

    def var(a, sd):
        v = 1.0
        for ai, si in zip(a, sd):
            v = ai**2 * v + si**2
        return v

    g = GaussianDenoiser(4096, std=S)
    v_es, v_base = var(*coeffs(lams)), var(*coeffs(np.ones(steps)))
    assert v_es > v_base  # λ > 1 gives the larger output variance
    x_es = sample(g, "ddpm", steps, (4096,), range(4), schedule=SCH, es=es, clip=False)
    x_base = sample(g, "ddpm", steps, (4096,), range(4), schedule=SCH, clip=False)
    assert float(x_es.var()) == pytest.approx(v_es, rel=0.05)
    assert float(x_base.var()) == pytest.approx(v_base, rel=0.05)


# ---- noise protocol -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_size_invariance(name):
    """Bit-exact with an elementwise oracle. A real network's matmuls may round differently per batch size
    (BLAS blocking, thread count), which no sampler can prevent, so with the MLP (its float64 twin) the check is
    to float64 rounding: its two sums (6 and 32 terms) per evaluation, on σ-space values up to σ_max = 1/√ᾱ_min."""
    seeds = [3, 1, 4, 15, 9, 2, 6, 5, 35, 8]
    sampler, steps, net, kw = CONFIGS[name]
    net64 = NET_LV64 if net is NET_LV else NET64
    cases = [(net64, (4,), False)] + ([] if kw.get("variance") == "learned" else [(MIX2, (2,), True)])
    for den, shape, exact in cases:
        a = sample(den, sampler, steps, shape, seeds, schedule=SCH, batch_size=7, es=Uniform(1.02), **kw)
        b = sample(den, sampler, steps, shape, seeds, schedule=SCH, batch_size=3, es=Uniform(1.02), **kw)
        c = sample(den, sampler, steps, shape, seeds[4:5], schedule=SCH, batch_size=1, es=Uniform(1.02), **kw)
        if exact:
            assert torch.equal(a, b) and torch.equal(a[4:5], c)
        else:
            atol = loop_tol(F64, mag(a), steps, per_step=2 * (6 + 32), cond=SCH.sigma_max)  # Heun: 2 calls a step
            torch.testing.assert_close(a, b, rtol=0, atol=atol)
            torch.testing.assert_close(a[4:5], c, rtol=0, atol=atol)


def test_seed_noise_depends_only_on_the_seed():
    a, b = SeedNoise([5, 6, 7], (2, 3)), SeedNoise([7], (2, 3))
    assert torch.equal(a.initial()[2:], b.initial())
    assert a.initial().dtype == F64
    for i in (0, 1, 7, 8, 20):                       # skipping steps (and whole blocks) keeps the stream aligned
        assert torch.equal(a(i)[2:], b(i))
    c = SeedNoise([7], (2, 3))
    c.initial()
    assert torch.equal(c(20), b(20))                 # block 16..23 regardless of which steps were asked before
    with pytest.raises(RuntimeError):
        a(3)
    # per-seed streams are distinct
    assert not torch.equal(a.initial()[0], a.initial()[1])


@pytest.mark.parametrize("name", ["ddpm-small-clip", "ddim-eta1", "euler-churn", "heun-churn"])
def test_same_seed_same_noise_with_and_without_es(name, monkeypatch):
    draws = []
    orig_call, orig_init = common.SeedNoise.__call__, common.SeedNoise.initial

    def rec_call(self, i):
        z = orig_call(self, i)
        draws[-1].append((i, z.clone()))
        return z

    def rec_init(self):
        z = orig_init(self)
        draws.append([("init", z.clone())])
        return z

    monkeypatch.setattr(common.SeedNoise, "__call__", rec_call)
    monkeypatch.setattr(common.SeedNoise, "initial", rec_init)
    base = _run(name, seeds=range(5))
    es = _run(name, es=Linear(0.01, 1.01), seeds=range(5))
    assert not torch.allclose(base, es)
    assert len(draws) == 2 and len(draws[0]) == len(draws[1]) > 1
    for (ia, za), (ib, zb) in zip(*draws):
        assert ia == ib and torch.equal(za, zb)


# ---- the per-step callback ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,kw", [("ddpm", dict(variance="small")), ("ddim", dict(eta=0.5)),
                                        ("euler", {}), ("heun", dict(S_churn=3.0))])
def test_step_info_fields(sampler, kw):
    steps, es = 6, PerStep([1.06, 1.05, 1.04, 1.03, 1.02, 1.01])
    plan = SamplingPlan(sampler, steps, SCH)
    infos = []
    sample(NET64, sampler, steps, (4,), range(5), schedule=SCH, es=es, batch_size=3,
           callback=lambda info, seeds: infos.append((info, list(seeds))), **kw)
    # two batches (3 + 2 seeds), each with one record per network evaluation
    assert [s for _, s in infos] == [[0, 1, 2]] * (len(infos) // 2) + [[3, 4]] * (len(infos) // 2)
    first = [info for info, s in infos if s == [0, 1, 2]]
    assert len(first) == plan.nfe
    lams = es.values(steps)
    for info in first:
        assert info.n == steps
        j = info.i + (info.stage == "correction")
        if sampler in ("ddpm", "ddim"):
            assert info.stage == "step"
            assert info.t == float(plan.chain.timesteps[steps - 1 - info.i])
            assert info.sigma == plan.sigmas[info.i]
        elif info.stage == "step":
            assert info.t is None and info.sigma >= plan.sigmas[info.i]
        else:
            assert info.sigma == plan.grid[info.i + 1]
        # ε used = ε_θ / λ, with ε_θ from the unscaled network at the same input
        eps_theta = (info.x - NET64(info.x, info.sigma)) / info.sigma
        torch.testing.assert_close(info.eps, eps_theta / lams[j], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(info.eps, (info.x - info.denoised) / info.sigma, rtol=1e-12, atol=1e-12)
        # x·sqrt(1/(1+σ²)) (core's form, correctly rounded root) vs x/sqrt(1+σ²): 3 + 2 roundings relative
        torch.testing.assert_close(info.x_vp, info.x / math.sqrt(1 + info.sigma**2), rtol=tol(F64, n=5),
                                   atol=tol(F64, mag(info.x_vp), n=5))
    assert [info.i for info in first if info.stage == "step"] == list(range(steps))


# ---- errors ------------------------------------------------------------------------------------------------------
def _x(n=2):
    return torch.zeros(n, 2, dtype=F64)


ERRORS = [
    (lambda: sample(MIX2, "plms", 10, (2,), [0]), "unknown sampler"),
    (lambda: sample(MIX2, "ddim", 0, (2,), [0]), "steps"),
    (lambda: sample(MIX2, "euler", -3, (2,), [0]), "steps"),
    (lambda: sample(MIX2, "ddpm", 1001, (2,), [0]), "steps"),
    (lambda: sample(MIX2, "ddim", 10, (2,), [0], eta=-0.1), "eta"),
    (lambda: sample(MIX2, "ddim", 10, (2,), [0], eta=float("nan")), "eta"),
    (lambda: sample(MIX2, "ddpm", 10, (2,), [0], variance="tiny"), "variance"),
    (lambda: sample(MIX2, "ddpm", 10, (2,), [0], variance="learned"), "learned-variance model"),
    (lambda: sample(MIX2, "ddim", 10, (2,), []), "no seeds"),
    (lambda: sample(MIX2, "ddim", 10, (2,), [0], batch_size=0), "batch size"),
    (lambda: sample(MIX2, "ddim", 10, (2,), [0], es=PerStep([1.0, 1.1])), "2 values but the sampler runs 10"),
    (lambda: sample(MIX2, "heun", 10, (2,), [0], S_noise=0.0), "S_noise"),
    (lambda: sample(MIX2, "heun", 10, (2,), [0], S_churn=-1.0), "S_churn"),
    (lambda: sample_ddim(MIX2, _x(), SCH.respaced([0, 500, 999]), eta=0.5), "noise source"),
    (lambda: sample_euler(MIX2, _x(), [80.0, 1.0, 0.0], S_churn=1.0), "noise source"),
    (lambda: sample_euler(MIX2, _x(), [1.0, 80.0, 0.0]), "decreasing"),
    (lambda: sample_heun(MIX2, _x(), [80.0]), "decreasing"),
    (lambda: sample_heun(MIX2, _x(), [80.0, 1.0, -1.0]), "ending at >= 0"),
]


@pytest.mark.parametrize("call,msg", ERRORS)
def test_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_heun_nfe_and_grid():
    for n in (1, 2, 7):
        calls = []
        plan = SamplingPlan("heun", n, SCH)
        sample(lambda x, s: calls.append(1) or x * 0, "heun", n, (2,), [0], schedule=SCH)
        assert len(calls) == plan.nfe == 2 * n - 1
        np.testing.assert_array_equal(plan.grid, karras_sigmas(n, SCH.sigma_min, SCH.sigma_max))
