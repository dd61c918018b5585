"""Zero terminal SNR (ᾱ_T = 0, σ = ∞) in our VP schedules, denoisers and samplers: the rescaling against diffusers,
a v-prediction Gaussian oracle, DDIM's closed form on it, and ES's σ = ∞ rule (λ = 1 there, no NaN/Inf)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_es.core.analytic import GaussianDenoiser
from diffusion_es.core.param import DenoiserEpsNet, VPDenoiser
from diffusion_es.core.scaling import Linear, Uniform
from diffusion_es.core.schedules import VPSchedule, respace, zero_terminal_snr
from diffusion_es.samplers import SamplingPlan, SeedNoise, sample

from _tol import F32, cumprod_rtol, tol

F64 = torch.float64
MU, S = 0.3, 0.6
ZS = VPSchedule.linear(zero_snr=True)


class GaussV(nn.Module):
    """The exact v = a·E[ε | x_t] − b·E[x_0 | x_t] of N(MU, S²) data on the VP table of ``schedule``
    (a = sqrt(ᾱ_t), b = sqrt(1 − ᾱ_t)), written in VP coordinates (independent of the sigma-frame oracle):
    with r = x_t − a·MU and V = a²S² + b², E[x_0 | x_t] = MU + a S² r / V, E[ε | x_t] = b r / V."""

    def __init__(self, schedule, dtype=F64):
        super().__init__()
        self.ab = torch.from_numpy(schedule.alphas_cumprod)
        self.anchor = nn.Parameter(torch.zeros((), dtype=dtype), requires_grad=False)

    def forward(self, x_t, t):
        ab = self.ab[t.round().long()].reshape(-1, *([1] * (x_t.ndim - 1)))
        a, b = ab.sqrt(), (1 - ab).sqrt()
        r = x_t.to(F64) - a * MU
        V = a**2 * S**2 + b**2
        return (a * (b * r / V) - b * (MU + a * S**2 * r / V)).to(x_t.dtype)


DEN = VPDenoiser(GaussV(ZS), ZS, prediction="v")


def _sqrt_ab_bound(raw_betas, ours):
    """Per step, |sqrt(ᾱ) of diffusers' float32 rescaling − ours (float64)|. diffusers: s = sqrt(cumprod(1 − β))
    (relative e_k = cumprod_rtol(β_0..k)/2 + eps: the product's bound halved by the root, plus the root's own
    rounding), s' = (s − s_T)·c with c = s_0/(s_0 − s_T) (absolute c·(e_k s_k + e_T s_T) from s_k and s_T,
    relative 2e_0 from c's s_0 and 3 eps from the subtraction, the quotient and the product), then ᾱ' = s'²,
    β' = 1 − ᾱ'_k/ᾱ'_{k−1} and the scheduler's own cumprod(1 − β') whose errors telescope: relative
    cumprod_rtol(β'_0..k) on ᾱ, halved on the root, 2 eps more for the square and the ratio. The last β' (= 1) makes ᾱ_T = 0 exactly on both sides."""
    b = np.asarray(raw_betas, np.float64)
    s = np.sqrt(np.cumprod(1 - b))
    c = s[0] / (s[0] - s[-1])
    e = np.array([cumprod_rtol(b[: k + 1]) for k in range(len(b))]) / 2 + tol(F32)
    r2 = np.array([cumprod_rtol(ours.betas[: k + 1]) for k in range(len(b) - 1)] + [0.0]) / 2
    s_new = np.sqrt(ours.alphas_cumprod)
    return c * (e * s + e[-1] * s[-1]) + s_new * (2 * e[0] + r2 + tol(F32, 1, 5))


def test_rescaling_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for name, ours, kw in (("linear", ZS, {}), ("scaled_linear", None, dict(beta_start=0.00085, beta_end=0.012))):
        s = diffusers.DDIMScheduler(beta_schedule=name, rescale_betas_zero_snr=True, **kw)
        raw = diffusers.DDIMScheduler(beta_schedule=name, **kw).betas.double().numpy()
        if ours is None:  # SD's "scaled_linear": betas = linspace(sqrt(0.00085), sqrt(0.012), T)²
            ours = VPSchedule(zero_terminal_snr(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2))
        ref = s.alphas_cumprod.double().numpy()
        assert ref[-1] == 0.0 and ours.alphas_cumprod[-1] == 0.0 and ours.betas[-1] == 1.0
        # diffusers works in float32 (two cumulative products of 1000 factors and the rescaling): _sqrt_ab_bound
        d = np.abs(np.sqrt(ours.alphas_cumprod) - np.sqrt(ref))
        bound = _sqrt_ab_bound(raw, ours)
        assert np.all(d <= bound), (int(np.argmax(d / bound)), float(np.max(d / bound)))
        # the first ᾱ is unchanged by the rescaling: diffusers' s'_0 = fl(s_0 − s_T)·fl(s_0/fl(s_0 − s_T)) with s_0 =
        # sqrt(fl(1 − β_0)) carries 1 − β (×½ by the root), the root, the subtraction, quotient and product; the
        # square doubles those (2·(1 + 1 + 3) − 1 = 9 counted), then the square's own rounding and 1 − ᾱ: n = 11
        np.testing.assert_allclose(ours.alphas_cumprod[0], VPSchedule(s.betas.double().numpy()[:1]).alphas_cumprod[0],
                                   rtol=tol(F32, 1, 11))


def test_schedule_tables_at_infinity():
    assert ZS.zero_snr and ZS.sigmas[-1] == math.inf and ZS.sigma_max == math.inf and np.isfinite(ZS.sigmas[:-1]).all()
    assert float(ZS.sigma_to_t(math.inf)) == 999.0 and ZS.t_to_sigma(999.0) == math.inf
    np.testing.assert_array_equal(ZS.sigma_to_t(ZS.sigmas[:-1]), np.arange(999.0))  # the finite table is exact
    assert float(ZS.sigma_to_t(1e12)) == 998.0  # no log-linear interpolation towards ∞
    assert not VPSchedule.linear().zero_snr
    chain = ZS.respaced(respace(1000, 5, "trailing"))
    for k in ("betas", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance", "large_variance"):
        assert np.isfinite(getattr(chain, k)).all(), k
    assert SamplingPlan("ddim", 5, ZS, spacing="trailing").sigmas[0] == math.inf


def test_v_oracle_denoiser_at_infinity_and_finite_sigma():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(DEN(x, math.inf), torch.full_like(x, MU), rtol=0, atol=1e-15)
    gauss = GaussianDenoiser(3, mean=MU, std=S)
    for t in (0, 10, 500, 998):
        s = float(ZS.sigmas[t])
        # four float64 operations on numbers up to (1 + σ)|x|: 1e-14·(1 + σ) absolute
        torch.testing.assert_close(DEN(x, s), gauss(x, s), rtol=0, atol=1e-14 * (1 + s))
    per = DEN(x, torch.tensor([math.inf, 1.0, 2.0, math.inf, 0.1], dtype=F64))
    torch.testing.assert_close(per[[0, 3]], torch.full_like(per[[0, 3]], MU), rtol=0, atol=1e-15)
    # the inverse view: at ᾱ = 0 the ε-network of a denoiser returns its input (ε is exact there)
    epsnet = DenoiserEpsNet(gauss, ZS)
    assert torch.equal(epsnet(x, torch.full((5,), 999)), x)


def _ddim_affine(chain, lams):
    """DDIM (η = 0, no clipping) on the oracle with ES, as an affine map x_0 = A·z + B written from the formulas:
    finite σ: x0 = x_t(1 − (1 − c)/λ)/a + MU(1 − c)/λ with c = S²/(S² + σ²); σ = ∞: x0 = MU, ε = x_t."""
    A, B = 1.0, 0.0
    for step, i in enumerate(range(len(chain) - 1, -1, -1)):
        ab, abp = chain.alphas_cumprod[i], chain.alphas_cumprod_prev[i]
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        if ab == 0:
            x0A, x0B, eA, eB = 0.0, MU, A, B
        else:
            lam, c = lams[step], S**2 / (S**2 + chain.sigmas[i] ** 2)
            k = (1 - (1 - c) / lam) / a
            x0A, x0B = k * A, k * B + MU * (1 - c) / lam
            eA, eB = (A - a * x0A) / b, (B - a * x0B) / b
        A, B = math.sqrt(abp) * x0A + math.sqrt(1 - abp) * eA, math.sqrt(abp) * x0B + math.sqrt(1 - abp) * eB
    return A, B


@pytest.mark.parametrize("spacing", ["trailing", "adm"])
@pytest.mark.parametrize("es", [None, Uniform(1.04), Linear(0.02, 0.98)])
def test_ddim_closed_form_from_sigma_infinity(spacing, es):
    n = 6
    chain = ZS.respaced(respace(1000, n, spacing))
    lams = np.ones(n) if es is None else np.where(np.isinf(chain.sigmas[::-1]), 1.0, es.values(n))
    x = sample(DEN, "ddim", n, (3,), range(5), schedule=ZS, es=es, spacing=spacing, clip=False)
    z = SeedNoise(range(5), (3,)).initial()
    A, B = _ddim_affine(chain, lams)
    torch.testing.assert_close(x, A * z + B, rtol=0, atol=1e-12)  # ~10 float64 operations per step on O(1) numbers


def test_es_first_step_unchanged_lambda_one_exact_and_finite():
    recs = {}
    for tag, es in (("base", None), ("es", Uniform(1.2)), ("lin", Linear(0.1, 0.9)), ("one", Uniform(1.0))):
        for sampler, kw in (("ddim", {}), ("ddpm", {})):
            infos = []
            x = sample(DEN, sampler, 5, (3,), range(4), schedule=ZS, es=es, spacing="trailing",
                       callback=lambda info, seeds: infos.append(info), **kw)
            assert torch.isfinite(x).all() and all(torch.isfinite(i.denoised).all() for i in infos)
            recs[tag, sampler] = (x, infos)
    for sampler in ("ddim", "ddpm"):
        base_x, base = recs["base", sampler]
        assert base[0].sigma == math.inf and torch.equal(base[0].eps, base[0].x)  # ε at σ = ∞ is the state
        assert torch.equal(recs["one", sampler][0], base_x)  # λ = 1 is the baseline bit for bit
        for tag in ("es", "lin"):
            x, infos = recs[tag, sampler]
            assert torch.equal(infos[0].denoised, base[0].denoised)  # λ = 1 at σ = ∞ (the first step)
            assert torch.equal(infos[1].x, base[1].x)  # so the state after the first step is the baseline's
            assert not torch.equal(x, base_x)


def test_eps_prediction_is_refused_at_infinity():
    den = VPDenoiser(lambda x, t: x, ZS, prediction="eps")
    with pytest.raises(ValueError, match="ε-prediction network cannot give x̂_0 at σ = ∞"):
        sample(den, "ddim", 4, (3,), range(2), schedule=ZS, spacing="trailing")
    sample(den, "ddim", 4, (3,), range(2), schedule=ZS, spacing="leading")  # a grid without T − 1 is fine
    with pytest.raises(ValueError, match="finite σ_max.*use ddpm or ddim"):
        SamplingPlan("euler", 4, ZS)
