"""Noise schedules, respacing and sigma grids against hand formulas and against diffusers' own spacing code."""

import math

import numpy as np
import pytest

from diffusion_es.core.schedules import VPSchedule, cosine_betas, karras_sigmas, linear_betas, respace


# ---- VP schedules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1000, 250, 4000])
def test_linear_alpha_bar_matches_hand_formula(T):
    sch = VPSchedule.linear(T)
    scale = 1000.0 / T
    lo, hi = scale * 1e-4, scale * 0.02
    prod, want = 1.0, []
    for t in range(T):
        beta = lo + (hi - lo) * t / (T - 1)       # DDPM's linear beta, ADM's 1000/T scaling
        prod *= 1.0 - beta
        want.append(prod)
    np.testing.assert_allclose(sch.alphas_cumprod, want, rtol=1e-12, atol=0)
    assert sch.betas[0] == pytest.approx(lo, rel=1e-15) and sch.betas[-1] == pytest.approx(hi, rel=1e-15)
    np.testing.assert_allclose(sch.sigmas, np.sqrt((1 - np.array(want)) / np.array(want)), rtol=1e-12)
    assert sch.T == T and sch.sigma_min == sch.sigmas[0] and sch.sigma_max == sch.sigmas[-1]


def test_linear_default_known_values():
    sch = VPSchedule.linear()
    # DDPM's T=1000 linear schedule: well-known endpoints of the sigma range
    assert sch.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-12)
    assert sch.alphas_cumprod[-1] == pytest.approx(4.035829e-05, rel=1e-5)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_alpha_bar_matches_hand_formula(T):
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    sch = VPSchedule.cosine(T)
    betas = np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(T)])
    np.testing.assert_allclose(sch.betas, betas, rtol=1e-13)
    # where the 0.999 clip is inactive, ᾱ_t = f(t+1) / f(0) exactly
    unclipped = np.cumsum(betas >= 0.999) == 0
    want = np.array([f(t + 1) / f(0) for t in range(T)])
    np.testing.assert_allclose(sch.alphas_cumprod[unclipped], want[unclipped], rtol=1e-10)
    assert unclipped.sum() >= T - 2
    assert np.all(sch.betas <= 0.999) and np.all(np.diff(sch.alphas_cumprod) < 0)


def test_from_name():
    np.testing.assert_array_equal(VPSchedule.from_name("linear", 500).betas, linear_betas(500))
    np.testing.assert_array_equal(VPSchedule.from_name("cosine", 500).betas, cosine_betas(500))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        VPSchedule.from_name("quadratic")


# ---- respacing -----------------------------------------------------------------------------------------------
def _space_timesteps(num_timesteps, section_counts):
    """guided-diffusion's respace.space_timesteps (integer section counts), transcribed: each section's
    fractional stride is summed in a float and each running total rounded with Python's round."""
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("T", [1000, 4000])
def test_adm_spacing_is_guided_diffusions_space_timesteps(T):
    """For every step count (it was round(linspace), which differs from ADM's running sum at 278 of n = 1..1000
    for T = 1000, e.g. n = 21: 500 where ADM has 499)."""
    for n in range(1, T + 1) if T == 1000 else [*range(1, 301), 1000, 3999, 4000]:
        ts = respace(T, n, "adm")
        assert list(ts) == sorted(_space_timesteps(T, [n])), n
        assert ts[0] == 0 and (n == 1 or ts[-1] == T - 1)
        assert len(ts) == n and np.all(np.diff(ts) > 0)
    assert respace(1000, 21, "adm")[10] == 499 and respace(1000, 21, "linspace")[10] == 500
    for n in (10, 20, 50, 100):  # the paper's step counts: both rules agree there
        np.testing.assert_array_equal(respace(1000, n, "adm"), respace(1000, n, "linspace"))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T,n,offset", [(1000, 10, 0), (1000, 20, 1), (1000, 50, 0), (1000, 7, 0), (1000, 30, 1),
                                        (1000, 333, 0), (1000, 1000, 0), (500, 3, 1)])
def test_spacings_equal_diffusers_set_timesteps(spacing, T, n, offset):
    dif = pytest.importorskip("diffusers")
    if spacing == "linspace":
        offset = 0  # diffusers ignores steps_offset for linspace
    ours = respace(T, n, "adm" if spacing == "linspace" else spacing, steps_offset=offset)[::-1]
    for cls in (dif.DDPMScheduler, dif.DDIMScheduler):
        sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        sched.set_timesteps(n)
        np.testing.assert_array_equal(sched.timesteps.numpy(), ours, err_msg=f"{cls.__name__} {spacing}")


def test_leading_and_trailing_hand_values():
    np.testing.assert_array_equal(respace(1000, 4, "leading"), [0, 250, 500, 750])
    np.testing.assert_array_equal(respace(1000, 4, "leading", steps_offset=1), [1, 251, 501, 751])
    np.testing.assert_array_equal(respace(1000, 4, "trailing"), [249, 499, 749, 999])
    np.testing.assert_array_equal(respace(1000, 3, "trailing"), [332, 666, 999])


@pytest.mark.parametrize("spacing,n", [("adm", 20), ("adm", 7), ("leading", 50), ("trailing", 25), ("adm", 1000)])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respaced_chain_reproduces_base_alpha_bar(spacing, n, name):
    base = VPSchedule.from_name(name)
    ts = respace(base.T, n, spacing)
    ch = base.respaced(ts)
    assert len(ch) == n
    # (1 - β' loses relative digits where β' is close to 1, at the end of the cosine schedule)
    np.testing.assert_allclose(np.cumprod(1 - ch.betas), base.alphas_cumprod[ts], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(ch.alphas_cumprod, base.alphas_cumprod[ts])
    np.testing.assert_allclose(ch.sigmas, base.sigmas[ts], rtol=1e-14)
    # posterior q(x_{i-1} | x_i, x_0) of the respaced chain: β̃_i = β'_i (1 - ᾱ_{i-1}) / (1 - ᾱ_i)
    ab, abp = ch.alphas_cumprod, np.concatenate([[1.0], ch.alphas_cumprod[:-1]])
    np.testing.assert_allclose(ch.posterior_variance, ch.betas * (1 - abp) / (1 - ab), rtol=1e-12)
    assert ch.posterior_variance[0] == 0.0
    np.testing.assert_allclose(np.exp(ch.posterior_log_variance_clipped[1:]), ch.posterior_variance[1:], rtol=1e-12)
    np.testing.assert_allclose(ch.large_variance[1:], ch.betas[1:], rtol=0)
    # posterior mean coefficients make the mean exact for x_t built from x_0 with zero noise
    x0 = 0.37
    for i in range(1, n):
        xt = math.sqrt(ab[i]) * x0
        mean = ch.posterior_mean_coef1[i] * x0 + ch.posterior_mean_coef2[i] * xt
        assert mean == pytest.approx(math.sqrt(abp[i]) * x0, rel=1e-12)
    if n == base.T:
        np.testing.assert_allclose(ch.betas, base.betas, rtol=1e-9)


def test_linear_betas_say_when_the_1000_over_t_scaling_passes_one():
    with pytest.raises(ValueError, match="scaled by 1000/T as in ADM.*T = 10 it would end at β = 2"):
        VPSchedule.linear(T=10)
    assert VPSchedule.linear(T=20).betas[-1] == pytest.approx(1.0)  # the edge: β = 1 at the last step only


# ---- Karras grid -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 18, 40])
def test_karras_grid(n):
    smin, smax, rho = 0.002, 80.0, 7.0
    g = karras_sigmas(n, smin, smax, rho)
    assert len(g) == n + 1 and g[-1] == 0.0 and g[0] == smax
    assert np.all(np.diff(g) < 0)
    if n > 1:
        assert g[-2] == smin
        i = np.arange(n)
        want = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho  # EDM eq. (5)
        np.testing.assert_allclose(g[:-1], want, rtol=1e-12)


# ---- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: linear_betas(0),
    lambda: cosine_betas(0),
    lambda: respace(1000, 0),
    lambda: respace(10, 11),
    lambda: respace(1000, 10, "quadratic"),
    lambda: respace(1000, 10, "leading", steps_offset=901),
    lambda: respace(10, 7, "leading", steps_offset=4),
    lambda: karras_sigmas(0, 0.002, 80),
    lambda: karras_sigmas(10, 80, 0.002),
    lambda: karras_sigmas(10, 0.0, 80),
    lambda: karras_sigmas(10, 0.002, float("inf")),
    lambda: karras_sigmas(10, 0.002, 80, rho=0),  # was a ZeroDivisionError
    lambda: karras_sigmas(10, 0.002, 80, rho=-1),  # was a grid rising from 0.008
    lambda: karras_sigmas(10, 0.002, 80, rho=float("nan")),
    lambda: VPSchedule(np.array([1.0, 0.1])),  # β = 1 only at the last step (zero terminal SNR)
    lambda: VPSchedule(np.array([0.1, 1.5])),
    lambda: VPSchedule(np.array([1.0])),
    lambda: VPSchedule(np.array([0.0, 0.1])),
    lambda: VPSchedule(np.array([0.1, np.nan])),
    lambda: VPSchedule(np.zeros((2, 2)) + 0.1),
    lambda: VPSchedule(np.array([])),
    lambda: VPSchedule.linear(20).respaced([3, 3, 5]),
    lambda: VPSchedule.linear(20).respaced([5, 3]),
    lambda: VPSchedule.linear(20).respaced([0, 20]),  # a timestep past T - 1
    lambda: VPSchedule.linear(20).respaced([-1, 3]),
    lambda: VPSchedule.linear(20).respaced([]),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_sigma_to_t_exact_on_table_and_monotone_between():
    sch = VPSchedule.linear()
    t = sch.sigma_to_t(sch.sigmas)
    np.testing.assert_array_equal(t, np.arange(sch.T, dtype=np.float64))
    mid = np.sqrt(sch.sigmas[:-1] * sch.sigmas[1:])  # geometric midpoints -> t + 1/2 (log-linear interpolation)
    np.testing.assert_allclose(sch.sigma_to_t(mid), np.arange(sch.T - 1) + 0.5, atol=1e-9)
    # out-of-range sigmas clamp to the table ends
    assert sch.sigma_to_t(1e-9) == 0.0 and sch.sigma_to_t(1e9) == sch.T - 1


def test_an_alpha_bar_table_passed_as_betas_is_refused_with_the_conversion():
    """ᾱ lies in (0, 1) like β; read as β it gave a schedule whose first step removes almost all the signal."""
    for ref in (VPSchedule.linear(), VPSchedule.cosine(), VPSchedule.linear(T=20)):
        ab = ref.alphas_cumprod
        with pytest.raises(ValueError, match="looks like ᾱ"):
            VPSchedule(ab)
        betas = 1 - ab / np.concatenate([[1.0], ab[:-1]])  # the conversion the message names
        np.testing.assert_allclose(VPSchedule(betas).alphas_cumprod, ab, rtol=64 * np.finfo(np.float64).eps * len(ab),
                                   atol=0)
    VPSchedule(np.array([0.6, 0.7, 0.8]))  # large but rising β: a (coarse) schedule, accepted
