"""Time-Shift sampler: window 1 is the plain sampler bit for bit; with a Gaussian oracle and a state whose variance
is set to match another timestep it picks that timestep; the cutoff; ES keyed on the nominal step; seed protocol."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_es.core.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from diffusion_es.core.param import Denoiser, VPDenoiser
from diffusion_es.samplers import (SamplingPlan, SeedNoise, TimeShift, choose_timesteps, data_variance, sample,
                                   sample_ddim, sample_ddpm)
from diffusion_es.core.scaling import EpsilonScaled, PerStep, Uniform
from diffusion_es.core.schedules import VPSchedule

from _tol import F64, loop_tol, mag

SCH = VPSchedule.linear()


def sample_timeshift(den, sampler, steps, shape, seeds, window=1, cutoff=0, data_var=0.0, **kw):
    """The front end with the TS policy."""
    return sample(den, sampler, steps, shape, seeds, time_shift=TimeShift(window, cutoff, data_var), **kw)


def sample_ts_ddpm(den, x_T, chain, noise, window=1, cutoff=0, data_var=0.0, trace=None, **kw):
    return sample_ddpm(den, x_T, chain, noise=noise, time_shift=TimeShift(window, cutoff, data_var, trace), **kw)


def sample_ts_ddim(den, x_T, chain, noise=None, window=1, cutoff=0, data_var=0.0, trace=None, **kw):
    return sample_ddim(den, x_T, chain, noise=noise, time_shift=TimeShift(window, cutoff, data_var, trace), **kw)


class TinyEps(nn.Module):
    """A fixed random time-dependent ε-network (float32 unless given), so the equality tests go through a real
    VPDenoiser."""

    def __init__(self, dim=16, hidden=32, seed=0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(dim + 2, hidden, generator=g, dtype=dtype) / math.sqrt(dim + 2))
        self.w2 = nn.Parameter(torch.randn(hidden, dim, generator=g, dtype=dtype) / math.sqrt(hidden))

    def forward(self, x_t, t):
        u = (t / 1000.0).reshape(-1, 1)
        h = torch.tanh(torch.cat([x_t, torch.sin(3 * u), torch.cos(3 * u)], dim=1) @ self.w1)
        return 0.8 * x_t * u.sqrt() + 0.5 * h @ self.w2


NET = VPDenoiser(TinyEps(), SCH)
NET64 = VPDenoiser(TinyEps(dtype=F64), SCH)
MIX = GaussianMixtureDenoiser([[-0.5] * 16, [0.4] * 16], stds=[0.3, 0.2])


@pytest.mark.parametrize("den", [NET, MIX], ids=["net", "mixture"])
@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddpm", {"variance": "large"}), ("ddim", {}),
                                        ("ddim", {"eta": 0.7}), ("ddim", {"clip": False})])
@pytest.mark.parametrize("steps", [5, 20])
def test_window_one_equals_the_plain_sampler_exactly(den, sampler, kw, steps):
    plan = SamplingPlan(sampler, steps, SCH)
    seeds = list(range(9))
    outs = []
    for fn in ("plain", "ts"):
        noise = SeedNoise(seeds, (16,))
        x_T = noise.initial()
        if fn == "plain":
            out = (sample_ddpm(den, x_T, plan.chain, noise=noise, **kw) if sampler == "ddpm"
                   else sample_ddim(den, x_T, plan.chain, noise=noise, **kw))
        else:
            out = (sample_ts_ddpm(den, x_T, plan.chain, noise, window=1, **kw) if sampler == "ddpm"
                   else sample_ts_ddim(den, x_T, plan.chain, noise=noise, window=1, **kw))
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    # the front end too, with ES: TS window 1 + ES == sample() + ES
    es = Uniform(1.02)
    a = sample(den, sampler, steps, (16,), seeds, schedule=SCH, es=es, **kw)
    b = sample_timeshift(den, sampler, steps, (16,), seeds, schedule=SCH, es=es, window=1, **kw)
    assert torch.equal(a, b)


def test_cutoff_above_everything_equals_the_plain_sampler():
    a = sample(NET, "ddpm", 10, (16,), range(5), schedule=SCH)
    b = sample_timeshift(NET, "ddpm", 10, (16,), range(5), schedule=SCH, window=41, cutoff=SCH.T)
    assert torch.equal(a, b)


# ---- the rule, with an oracle of Gaussian data ------------------------------------------------------------------
S = 0.5       # data std: x_0 ~ N(0, S² I)
DIM = 4096


def _exact_var_noise(n, dim, var, seed=0):
    """n rows whose population variance over entries is exactly ``var`` (zero mean)."""
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(dim=1, keepdim=True)
    return z / z.std(dim=1, unbiased=False, keepdim=True) * math.sqrt(var)


def _v(tau, data_var=S**2):
    ab = SCH.alphas_cumprod[tau]
    return ab * data_var + 1 - ab


@pytest.mark.parametrize("target", [181, 190, 200, 213, 229])
def test_choose_timesteps_picks_the_matching_noise_level(target):
    x = _exact_var_noise(3, DIM, _v(target))
    got = choose_timesteps(x, nominal=200, lower=100, upper=np.full(3, 300), base=SCH, window=61, data_var=S**2)
    assert (got == target).all()
    # outside the window: the nearest edge; at or above the current level: never
    far = choose_timesteps(_exact_var_noise(2, DIM, _v(260)), 200, 100, np.full(2, 300), SCH, 21, S**2)
    assert (far == 210).all()
    capped = choose_timesteps(_exact_var_noise(2, DIM, _v(229)), 200, 100, np.array([205, 300]), SCH, 61, S**2)
    assert capped.tolist() == [204, 229]


@pytest.mark.parametrize("mode", ["ddim", "ddpm"])
@pytest.mark.parametrize("target", [170, 200, 236])
def test_sampler_chooses_the_timestep_whose_noise_level_matches(mode, target):
    """Gaussian oracle, clip off, so one step is linear: x_next = m · x_T. A start state with variance
    v(target) / m² lands exactly on the variance of timestep ``target``: the next evaluation happens there."""
    den = GaussianDenoiser(DIM, std=S)
    chain = SCH.respaced([0, 100, 200, 300])
    run = (lambda x, **kw: sample_ts_ddim(den, x, chain, clip=False, **kw)) if mode == "ddim" else \
        (lambda x, **kw: sample_ts_ddpm(den, x, chain, lambda i: torch.zeros_like(x), clip=False, **kw))
    # m from the plain sampler (window 1) on a state of ones
    seen = []
    run(torch.ones(1, DIM, dtype=torch.float64), callback=lambda info: seen.append(info.x_vp[0, 0].item()))
    m = seen[1]
    x_T = _exact_var_noise(4, DIM, _v(target) / m**2, seed=1)
    trace = []
    run(x_T, window=81, data_var=S**2, trace=trace)
    assert (trace[0] == 300).all()        # the first step is never shifted
    assert (trace[1] == target).all()     # the matching timestep, not the nominal 200
    # cutoff: no shifting when the nominal next step is below t_c
    trace_c = []
    run(x_T, window=81, cutoff=201, data_var=S**2, trace=trace_c)
    assert (trace_c[1] == 200).all()
    # the paper's rule (data_var = 0) reads this state as noisier: it shifts up
    trace_p = []
    run(x_T, window=81, data_var=0.0, trace=trace_p)
    assert (trace_p[1] >= trace[1]).all()


def test_callback_reports_the_used_timesteps_and_consistent_choices():
    """Every reported shifted timestep equals the rule applied to the state reported at that step."""
    den = GaussianDenoiser(DIM, std=0.3)
    plan = SamplingPlan("ddpm", 10, SCH)
    infos = []
    x = sample_timeshift(den, "ddpm", 10, (DIM,), range(4), schedule=SCH, window=31, cutoff=50, data_var=0.0,
                         callback=lambda info, seeds: infos.append(info))
    assert x.shape == (4, DIM) and torch.isfinite(x).all()
    ts = plan.chain.timesteps[::-1]
    n_shifted = 0
    for k, info in enumerate(infos):
        if isinstance(info.t, float):
            assert info.t == ts[k]
            continue
        upper = infos[k - 1].t if isinstance(infos[k - 1].t, torch.Tensor) else np.full(4, ts[k - 1])
        lower = ts[k + 1] if k + 1 < len(ts) else -1
        want = choose_timesteps(info.x_vp, int(ts[k]), int(lower), np.asarray(upper), SCH, 31, 0.0)
        assert np.array_equal(info.t.numpy().astype(np.int64), want)
        n_shifted += int((want != ts[k]).sum())
    assert n_shifted > 0  # the narrow oracle under the paper's rule does shift


# ---- ES keyed on the nominal step --------------------------------------------------------------------------------
class Recorder(Denoiser):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward_full(self, x, sigma, step_sigma=None, **kw):
        D, ex = self.inner.forward_full(x, sigma)
        self.calls.append((x.clone(), sigma, step_sigma, D.clone()))
        return D, ex


@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
def test_es_keys_lambda_on_the_nominal_step(mode):
    steps = 8
    plan = SamplingPlan(mode, steps, SCH)
    lams = [1.30, 1.25, 1.20, 1.15, 1.10, 1.07, 1.04, 1.02]
    bound = PerStep(lams).bind(plan.sigmas)
    rec = Recorder(GaussianDenoiser(256, std=0.3))
    es = EpsilonScaled(rec, bound)
    noise = SeedNoise(range(6), (256,))
    outs = []
    fn = sample_ts_ddpm if mode == "ddpm" else sample_ts_ddim
    kw = {"noise": noise} if mode == "ddpm" else {"noise": None}
    fn(es, noise.initial(), plan.chain, window=61, data_var=0.0, callback=outs.append, **kw)
    crossed = 0
    for k, ((x_in, sigma, step_sigma, D_raw), info) in enumerate(zip(rec.calls, outs)):
        assert step_sigma == pytest.approx(plan.sigmas[k], rel=0, abs=0)
        assert torch.allclose(info.denoised, x_in + (D_raw - x_in) / lams[k], rtol=0, atol=1e-12)
        if isinstance(sigma, torch.Tensor):  # keyed on σ instead, some samples would get another step's λ
            crossed += int((bound(sigma.numpy()) != lams[k]).sum())
    assert crossed > 0


@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
def test_a_sample_depends_only_on_its_seed(mode):
    """Per-sample variances and timesteps: bit-exact with an elementwise oracle; with a real network (in float64)
    only to its rounding (BLAS blocking differs per batch size, as for the plain samplers): its two sums (18 and
    32 terms) per step, on σ-space values up to σ_max."""
    kw = dict(schedule=SCH, window=21, data_var=0.0, es=Uniform(1.01))
    for den, exact in ((MIX, True), (NET64, False)):
        a = sample_timeshift(den, mode, 10, (16,), range(7), batch_size=7, **kw)
        b = sample_timeshift(den, mode, 10, (16,), range(7), batch_size=3, **kw)
        c = sample_timeshift(den, mode, 10, (16,), [4], batch_size=1, **kw)
        if exact:
            assert torch.equal(a, b) and torch.equal(a[4:5], c)
        else:
            atol = loop_tol(F64, mag(a), 10, per_step=18 + 32, cond=SCH.sigma_max)
            torch.testing.assert_close(a, b, rtol=0, atol=atol)
            torch.testing.assert_close(a[4:5], c, rtol=0, atol=atol)


def test_data_variance_and_errors():
    x = _exact_var_noise(5, 64, 0.37)
    assert data_variance(x.reshape(5, 1, 8, 8)) == pytest.approx(0.37)
    with pytest.raises(ValueError, match="window"):
        sample_timeshift(NET, "ddpm", 5, (16,), [0], schedule=SCH, window=0)
    with pytest.raises(ValueError, match="cutoff"):
        sample_timeshift(NET, "ddpm", 5, (16,), [0], schedule=SCH, window=3, cutoff=-1)
    with pytest.raises(ValueError, match="no option .time_shift."):
        sample_timeshift(NET, "heun", 5, (16,), [0], schedule=SCH)
    with pytest.raises(ValueError, match="variance"):
        sample_timeshift(NET, "ddpm", 5, (16,), [0], schedule=SCH, variance="learned")
