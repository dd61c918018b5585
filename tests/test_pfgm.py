"""PFGM++ (issue 15 item 4): the kernel's draws against Beta' and isotropy, D → ∞ against EDM (in distribution and
byte for byte), the exact posterior mean of Gaussian data as an oracle (grid against scipy quadrature, orthogonality
on kernel draws, a Heun run from the PFGM++ prior landing on the data), ES through the one wrapper, churn refused.
Training and CLI checks are at the end."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from _tol import loop_tol
from diffusion_es.core.analytic import GaussianDenoiser, PFGMGaussianDenoiser
from diffusion_es.core.param import FnDenoiser
from diffusion_es.core.pfgm import (EDMDenoiser, EDMSchedule, check_D, generator_scales, perturb, prior,
                                    seed_scales)
from diffusion_es.core.scaling import EpsilonScaled, Uniform
from diffusion_es.core.schedules import karras_sigmas
from diffusion_es.samplers import SamplingPlan, SeedNoise, sample, sample_euler, sample_heun

F64 = torch.float64
SHAPE = (2, 2, 2)  # N = 8
N = 8
SEEDS = list(range(4000))


def _radius2(x):
    return (x.reshape(x.shape[0], -1) ** 2).sum(1).numpy()


# ---- (a) the kernel's draws ---------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [4.0, 128.0])
def test_seed_draws_radius_is_beta_prime(D):
    """R²/r² = ‖x − y‖²/(σ² D) ~ Beta'(N/2, D/2) for the per-seed prior draws at unit σ (KS, fixed seeds); the
    Gaussian draws of the same seeds fail the same test, so it can fail."""
    x = SeedNoise(SEEDS, SHAPE, pfgm_D=D).initial()
    p = stats.kstest(_radius2(x) / D, stats.betaprime(N / 2, D / 2).cdf).pvalue
    assert p > 0.01
    gauss = SeedNoise(SEEDS, SHAPE).initial()
    assert stats.kstest(_radius2(gauss) / D, stats.betaprime(N / 2, D / 2).cdf).pvalue < (1e-6 if D == 4 else 0.01)


def test_training_draws_radius_is_beta_prime():
    """The training stream (one torch generator, :func:`generator_scales`) gives the same law."""
    D, g = 16.0, torch.Generator().manual_seed(5)
    z = torch.randn((4000, *SHAPE), generator=g, dtype=F64)
    x = perturb(torch.zeros_like(z), 1.0, z, generator_scales(g, 4000, D))
    assert stats.kstest(_radius2(x) / D, stats.betaprime(N / 2, D / 2).cdf).pvalue > 0.01
    # its radius also matches the paper's construction R = r sqrt(b/(1 − b)), b ~ Beta(N/2, D/2) (two-sample KS)
    b = np.random.default_rng(1).beta(N / 2, D / 2, size=4000)
    assert stats.ks_2samp(_radius2(x), D * b / (1 - b)).pvalue > 0.01


@pytest.mark.parametrize("D", [4.0, 128.0])
def test_seed_draws_are_isotropic(D):
    """Directions x/‖x‖ are uniform on the sphere: mean 0 and second moment I/N within sampling error; and the
    radius is independent of the direction (correlation of R with the direction's first coordinate² ≈ 0)."""
    x = SeedNoise(SEEDS, SHAPE, pfgm_D=D).initial().reshape(len(SEEDS), -1).numpy()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(SEEDS)
    assert np.all(np.abs(u.mean(0)) < 5 * math.sqrt(1 / N / n))
    second = u.T @ u / n
    sd_diag = math.sqrt(2 * (N - 1) / (N * N * (N + 2)) / n)  # sd of the mean of u_i² on the sphere
    assert np.all(np.abs(np.diag(second) - 1 / N) < 5 * sd_diag)
    off = second[~np.eye(N, dtype=bool)]
    assert np.all(np.abs(off) < 5 * math.sqrt(1 / (N * (N + 2)) / n))
    r = np.linalg.norm(x, axis=1)
    assert abs(np.corrcoef(r, u[:, 0] ** 2)[0, 1]) < 5 / math.sqrt(n)


def test_draws_depend_only_on_the_seed():
    a = SeedNoise([3, 11, 42], SHAPE, pfgm_D=4).initial()
    b = SeedNoise([11], SHAPE, pfgm_D=4).initial()
    assert torch.equal(a[1], b[0])
    assert np.array_equal(seed_scales([11], 4), seed_scales([3, 11], 4)[1:])


# ---- (b) D → ∞ is EDM ---------------------------------------------------------------------------------------
def test_large_D_is_gaussian_in_distribution():
    """D = 1e8: ‖x‖² ~ χ²_N (KS) and every scale √w within 6 sd (sqrt(1/(2D))) of 1; D = 4 fails the χ² test."""
    x = SeedNoise(SEEDS, SHAPE, pfgm_D=1e8).initial()
    assert stats.kstest(_radius2(x), stats.chi2(N).cdf).pvalue > 0.01
    s = seed_scales(SEEDS[:500], 1e8)
    assert np.all(np.abs(s - 1) < 6 * math.sqrt(1 / (2 * 1e8)))
    assert stats.kstest(_radius2(SeedNoise(SEEDS, SHAPE, pfgm_D=4).initial()), stats.chi2(N).cdf).pvalue < 1e-6


def test_infinite_D_is_byte_identical_to_edm():
    """D = ∞ (or None) takes EDM's path: the same initial noise and the same samples, byte for byte."""
    seeds = [0, 1, 2, 7]
    assert torch.equal(SeedNoise(seeds, SHAPE, pfgm_D=math.inf).initial(), SeedNoise(seeds, SHAPE).initial())
    assert check_D(None) == math.inf and seed_scales(seeds, None).tolist() == [1.0] * 4
    z = SeedNoise(seeds, SHAPE).initial()
    assert torch.equal(prior(z, 80.0), z * 80.0)
    den = GaussianDenoiser(SHAPE, 0.3, 0.6)
    sched = EDMSchedule(pfgm_D=math.inf)
    for name, fn in (("heun", sample_heun), ("euler", sample_euler)):
        ours = sample(den, name, 6, SHAPE, seeds, schedule=sched)
        grid = karras_sigmas(6, sched.sigma_min, sched.sigma_max, 7.0)
        edm = fn(den, z * float(grid[0]), grid)
        assert torch.equal(ours, edm)


def test_edm_schedule_refuses_vp_and_flow_samplers_and_bad_D():
    for name in ("ddim", "ddpm", "flow_euler"):
        with pytest.raises(ValueError, match="EDM-preconditioned model .*use euler or heun"):
            SamplingPlan(name, 4, EDMSchedule(pfgm_D=128))
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(ValueError, match="positive number or inf"):
            EDMSchedule(pfgm_D=bad)


# ---- (c) the analytic oracle ------------------------------------------------------------------------------
MU, S = 0.3, 0.6


@pytest.mark.parametrize("D", [4.0, 128.0])
def test_oracle_grid_matches_scipy_quadrature(D):
    """The posterior shrink E[s²/(s² + σ²w) | x] on the float64 grid against scipy.integrate.quad (epsrel 1e-13)
    at points across σ and radii, typical and far out; agreement to 1e-10 relative (quadrature error)."""
    o = PFGMGaussianDenoiser(SHAPE, MU, S, D)
    for sigma in (0.01, 0.3, 1.0, 5.0, 80.0):
        for r2 in (N * (S * S + sigma * sigma) * f for f in (0.05, 1.0, 20.0)):
            grid = float(o.shrink(np.array([r2]), np.array([sigma]))[0])
            assert grid == pytest.approx(o.shrink_quad(r2, sigma), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("D", [4.0, 128.0])
def test_oracle_is_the_posterior_mean_of_the_kernel(D):
    """On draws y ~ N(μ, s²), x = y + σ√w z (our kernel), the residual y − E[y | x] is orthogonal to functions of x
    (x − μ and ‖x − μ‖²(x − μ)); the Gaussian-kernel formula, wrong for finite D, fails at small D."""
    g = torch.Generator().manual_seed(2)
    n, sigma = 20000, 1.0
    y = MU + S * torch.randn((n, *SHAPE), generator=g, dtype=F64)
    z = torch.randn((n, *SHAPE), generator=g, dtype=F64)
    x = perturb(y, sigma, z, generator_scales(g, n, D))
    o = PFGMGaussianDenoiser(SHAPE, MU, S, D)

    def tstats(den):
        res = (y - den(x, sigma)).reshape(n, -1)
        xc = (x - MU).reshape(n, -1)
        out = []
        for f in (xc, xc * (xc ** 2).sum(1, keepdim=True)):
            v = (res * f).sum(1)
            out.append(abs(float(v.mean())) / (float(v.std()) / math.sqrt(n)))
        return out

    assert max(tstats(o)) < 4.5
    if D == 4.0:
        assert max(tstats(GaussianDenoiser(SHAPE, MU, S))) > 10


def _heun_from_prior(den, D, steps, seeds, es=None):
    return sample(den, "heun", steps, SHAPE, seeds, schedule=EDMSchedule(pfgm_D=D), es=es, batch_size=len(seeds))


@pytest.mark.parametrize("D", [4.0, math.inf])
def test_heun_with_the_oracle_from_the_pfgm_prior_lands_on_the_data(D):
    """The EDM ODE is exact for every D (the kernel is a Gaussian scale mixture with w independent of σ): Heun
    (32 steps) with the oracle from the PFGM++ prior at σ_max = 80 ends at N(μ, s²): mean and sd within 4 standard
    errors plus a Heun-discretisation slack of 2 % of s (measured: 1.3 % at D = 4, 4 % at 18 steps, 0.5 % at 40).
    Starting the D = 4 oracle from the Gaussian prior instead misses the sd by more than 4 standard errors."""
    seeds = list(range(400))
    o = PFGMGaussianDenoiser(SHAPE, MU, S, D)
    x = _heun_from_prior(o, D, 32, seeds).reshape(-1).numpy()
    n = x.size
    se_mean, se_sd = S / math.sqrt(n), S / math.sqrt(2 * n)
    assert abs(x.mean() - MU) < 4 * se_mean + 0.02 * S
    assert abs(x.std() - S) < 4 * se_sd + 0.02 * S
    if D == 4.0:
        wrong = _heun_from_prior(o, math.inf, 32, seeds).reshape(-1).numpy()
        assert abs(wrong.std() - S) > 4 * se_sd and x.std() - wrong.std() > 0.05 * S


def test_es_on_pfgm_is_the_wrapper_formula():
    """ES on a PFGM++ model goes through the one wrapper: the run equals a hand-written D' = x − (x − D)/λ
    (within loop rounding), λ = 1 is the baseline byte for byte, and λ > 1 widens the samples (less shrink)."""
    D, seeds, steps = 16.0, list(range(200)), 8
    o = PFGMGaussianDenoiser(SHAPE, MU, S, D)
    base = _heun_from_prior(o, D, steps, seeds)
    assert torch.equal(_heun_from_prior(o, D, steps, seeds, es=1.0), base)
    lam = 1.05
    es = _heun_from_prior(o, D, steps, seeds, es=lam)
    by_hand = FnDenoiser(lambda x, s: x - (x - o(x, s)) / lam)
    hand = _heun_from_prior(by_hand, D, steps, seeds)
    scale = float(max(es.abs().max(), 80.0))
    assert torch.allclose(es, hand, rtol=0, atol=loop_tol(F64, scale, steps))
    assert float(es.std()) > float(base.std()) * 1.02


def test_es_on_the_gaussian_limit_matches_the_closed_form():
    """D = ∞, μ = 0: the ES ODE dx/dσ = xσ/(λ(s² + σ²)) has x(σ) ∝ (s² + σ²)^{1/(2λ)}. Heun is second order: its
    error at 40 steps (~1 %) falls ~4× at 80, and the Richardson extrapolation (4·x_80 − x_40)/3 meets the closed
    form to 5e-4 relative, for λ = 1 and λ = 1.05 (which moves the end point by about 25 %)."""
    seeds, lam = list(range(8)), 1.05
    o = GaussianDenoiser(SHAPE, 0.0, S)
    sched = EDMSchedule()
    x0 = SeedNoise(seeds, SHAPE).initial() * sched.sigma_max
    ends = {}
    for l in (1.0, lam):
        x40, x80 = (sample(o, "heun", n, SHAPE, seeds, schedule=sched, es=l) for n in (40, 80))
        exact = x0 * ((S * S + sched.sigma_min ** 2) / (S * S + sched.sigma_max ** 2)) ** (1 / (2 * l))
        e40, e80 = float(((x40 - exact) / exact).abs().max()), float(((x80 - exact) / exact).abs().max())
        assert 3 < e40 / e80 < 5
        assert torch.allclose((4 * x80 - x40) / 3, exact, rtol=5e-4, atol=0)
        ends[l] = exact
    assert float((ends[lam] / ends[1.0]).min()) > 1.2


def test_churn_is_refused_for_finite_D():
    o = PFGMGaussianDenoiser(SHAPE, MU, S, 16.0)
    with pytest.raises(ValueError, match=r"S_churn > 0 adds Gaussian noise.*PFGM\+\+ model \(D = 16\)"):
        sample(o, "heun", 4, SHAPE, [0, 1], schedule=EDMSchedule(pfgm_D=16), S_churn=1.0)
    # the sampler function itself refuses too, for a denoiser that carries D
    den = EDMDenoiser(lambda x, t: torch.zeros_like(x), EDMSchedule(pfgm_D=16))
    with pytest.raises(ValueError, match="S_churn"):
        sample_heun(den, torch.zeros((1, *SHAPE), dtype=F64), [1.0, 0.5, 0.0], S_churn=1.0, noise=lambda i: 0)
    wrapped = EpsilonScaled(den, Uniform(1.1).bind([1.0, 0.5]))
    assert wrapped.pfgm_D == 16
    # D = ∞ keeps EDM's churn
    x = sample(GaussianDenoiser(SHAPE, MU, S), "heun", 4, SHAPE, [0, 1], schedule=EDMSchedule(), S_churn=1.0)
    assert torch.isfinite(x).all()
