"""One conversion module: eps / x0 / v, VP <-> sigma space, networks <-> denoisers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_es.core.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from diffusion_es.core.param import (DenoiserEpsNet, FnDenoiser, VPDenoiser, alpha_bar_to_sigma, as_denoiser,
                                eps_from_x0, eps_x0_from_v, sigma_batch, sigma_to_alpha_bar, sigma_to_vp_space,
                                v_from_eps_x0, vp_to_sigma_space, x0_from_eps)
from diffusion_es.core.schedules import VPSchedule

F64 = torch.float64
SCH = VPSchedule.linear()
MIX = GaussianMixtureDenoiser([[-1.0, 0.5, 0.0], [1.0, 1.0, -0.5], [0.0, -1.5, 1.0]], stds=[0.3, 0.6, 0.2],
                              weights=[0.5, 0.3, 0.2])


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---- scalar relations and prediction conversions ------------------------------------------------------------
def test_sigma_alpha_bar_and_spaces_round_trip():
    sig = torch.tensor([1e-2, 0.1, 1.0, 10.0, 157.0], dtype=F64)
    ab = sigma_to_alpha_bar(sig)
    torch.testing.assert_close(alpha_bar_to_sigma(ab), sig, rtol=1e-11, atol=0)  # 1 - ᾱ cancels for small σ
    np.testing.assert_allclose(alpha_bar_to_sigma(SCH.alphas_cumprod), SCH.sigmas, rtol=1e-12)
    np.testing.assert_allclose(sigma_to_alpha_bar(SCH.sigmas), SCH.alphas_cumprod, rtol=1e-12)
    x = _rand(5, 3)
    for s in (0.01, 1.0, 80.0):
        ab = sigma_to_alpha_bar(s)
        x_t = sigma_to_vp_space(x, s)
        torch.testing.assert_close(x_t, x * math.sqrt(ab), rtol=1e-14, atol=0)
        torch.testing.assert_close(vp_to_sigma_space(x_t, ab), x, rtol=1e-12, atol=0)


@pytest.mark.parametrize("ab", [0.9999, 0.7, 0.3, 1e-3])
def test_eps_x0_v_conversions_round_trip(ab):
    x0, eps = _rand(64, seed=1), _rand(64, seed=2)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    scale = 1 / math.sqrt(min(ab, 1 - ab))  # conditioning of the inversion
    torch.testing.assert_close(x0_from_eps(x_t, eps, ab), x0, rtol=0, atol=1e-13 * scale)
    torch.testing.assert_close(eps_from_x0(x_t, x0, ab), eps, rtol=0, atol=1e-13 * scale)
    v = v_from_eps_x0(eps, x0, ab)
    torch.testing.assert_close(v, math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0, rtol=0, atol=1e-15)
    e2, x02 = eps_x0_from_v(x_t, v, ab)
    torch.testing.assert_close(e2, eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(x02, x0, rtol=0, atol=1e-12)
    # v is a rotation: |x_t|² + |v|² = |x0|² + |eps|²
    assert float((x_t**2 + v**2).sum()) == pytest.approx(float((x0**2 + eps**2).sum()), rel=1e-12)


def test_sigma_batch():
    x = torch.zeros(4, 2, dtype=F64)
    assert sigma_batch(0.5, x).shape == (4,) and sigma_batch(0.5, x).dtype == F64
    torch.testing.assert_close(sigma_batch(torch.arange(4.0), x), torch.arange(4.0, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        sigma_batch(torch.ones(3), x)


# ---- oracle networks: the same ideal denoiser seen as eps / x0 / v networks on integer-or-float t ---------
def _sigma_of_t(t: torch.Tensor) -> torch.Tensor:
    """Exact inverse of VPSchedule.sigma_to_t (log-sigma linear interpolation)."""
    ls = np.interp(t.detach().double().numpy(), np.arange(SCH.T), np.log(SCH.sigmas))
    return torch.from_numpy(np.exp(ls))


class OracleNet(nn.Module):
    """An analytic network predicting eps, x0 or v from (x_t, t); float64 (a float64 parameter sets its dtype)."""

    def __init__(self, denoiser, prediction, learned_var=None):
        super().__init__()
        self.den, self.prediction, self.learned_var = denoiser, prediction, learned_var
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64), requires_grad=False)
        self.seen_t = []

    def forward(self, x_t, t):
        self.seen_t.append(t.clone())
        s = _sigma_of_t(t)
        ab = (1 / (1 + s**2)).reshape(-1, *([1] * (x_t.ndim - 1)))
        x = x_t / ab.sqrt()
        x0 = self.den(x, s)
        eps = eps_from_x0(x_t, x0, ab)
        out = {"eps": eps, "x0": x0, "v": v_from_eps_x0(eps, x0, ab)}[self.prediction]
        if self.learned_var is not None:
            out = torch.cat([out, self.learned_var.expand_as(out)], dim=1)
        return out


@pytest.mark.parametrize("sigma", [float(SCH.sigmas[0]), float(SCH.sigmas[137]), 0.05, 0.7, 3.0, 40.0,
                                   float(SCH.sigmas[-1])])
def test_vp_denoiser_eps_x0_v_agree_with_the_oracle(sigma):
    x = MIX.sample(16, 3) + sigma * _rand(16, 3, seed=4)
    want = MIX(x, sigma)
    outs = {p: VPDenoiser(OracleNet(MIX, p), SCH, prediction=p)(x, sigma) for p in ("eps", "x0", "v")}
    # eps-prediction reconstructs D = x - σ ε: cancellation costs digits where σ is large
    tol = 1e-12 * max(1.0, sigma)
    for p, D in outs.items():
        torch.testing.assert_close(D, want, rtol=0, atol=tol, msg=lambda m, p=p: f"{p} at sigma={sigma}: {m}")
    assert all(D.dtype == F64 for D in outs.values())


def test_vp_denoiser_gives_table_sigmas_integer_timesteps():
    net = OracleNet(MIX, "eps")
    den = VPDenoiser(net, SCH)
    x = _rand(3, 3)
    for t in (0, 1, 17, 500, 998, 999):
        den(x, float(SCH.sigmas[t]))
        assert torch.equal(net.seen_t[-1], torch.full((3,), float(t), dtype=F64))
    # per-sample sigmas map per sample
    den(x, torch.from_numpy(SCH.sigmas[[3, 400, 999]]))
    assert net.seen_t[-1].tolist() == [3.0, 400.0, 999.0]


def test_vp_denoiser_casts_at_the_network_boundary():
    seen = {}

    class Net32(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x_t, t):
            seen["dtypes"] = (x_t.dtype, t.dtype)
            return torch.zeros_like(x_t)

    D = VPDenoiser(Net32(), SCH)(_rand(2, 3), 1.0)
    assert seen["dtypes"] == (torch.float32, torch.float32)
    assert D.dtype == F64
    torch.testing.assert_close(D, _rand(2, 3))  # eps = 0 => D = x


def test_vp_denoiser_learned_variance_split():
    var = torch.tensor([[0.25, -0.5, 0.75]], dtype=F64)
    net = OracleNet(MIX, "eps", learned_var=var)
    den = VPDenoiser(net, SCH, learned_variance=True)
    x = _rand(4, 3)
    D, extras = den.forward_full(x, 2.0)
    torch.testing.assert_close(D, MIX(x, 2.0), rtol=0, atol=1e-12)
    assert set(extras) == {"var_values"}
    assert torch.equal(extras["var_values"], var.expand(4, 3))
    # a plain eps network declared as learned-variance has the wrong channel count
    with pytest.raises(ValueError, match="learned-variance network must output 6 channels"):
        VPDenoiser(OracleNet(MIX, "eps"), SCH, learned_variance=True)(x, 2.0)
    # and a learned-variance network not declared as such has the wrong shape
    with pytest.raises(ValueError, match="does not match"):
        VPDenoiser(net, SCH)(x, 2.0)


def test_vp_denoiser_rejects_unknown_prediction():
    with pytest.raises(ValueError, match="unknown prediction type"):
        VPDenoiser(OracleNet(MIX, "eps"), SCH, prediction="score")


# ---- denoiser <-> eps network round trips -------------------------------------------------------------------
def test_eps_net_to_denoiser_to_eps_net_round_trip_integer_t():
    net = OracleNet(MIX, "eps")
    back = DenoiserEpsNet(VPDenoiser(net, SCH), SCH)
    for t in (0, 10, 250, 999):
        ab = SCH.alphas_cumprod[t]
        x_t = math.sqrt(ab) * MIX.sample(8, t) + math.sqrt(1 - ab) * _rand(8, 3, seed=t)
        tt = torch.full((8,), t)
        torch.testing.assert_close(back(x_t, tt), net(x_t, tt.double()), rtol=0, atol=1e-10)
        torch.testing.assert_close(back(x_t, t), net(x_t, tt.double()), rtol=0, atol=1e-10)  # scalar t


def test_denoiser_to_eps_net_to_denoiser_round_trip_table_sigmas():
    """VPDenoiser(DenoiserEpsNet(D)) == D on the schedule's own sigmas, in float64.

    An analytic denoiser has no parameters; wrapping it in DenoiserEpsNet must not drop the round trip to
    float32 precision (VPDenoiser picks the network dtype from parameters and defaults to float32).
    """
    rt = VPDenoiser(DenoiserEpsNet(MIX, SCH), SCH)
    for t in (0, 10, 137, 500, 999):
        s = float(SCH.sigmas[t])
        x = MIX.sample(8, t) + s * _rand(8, 3, seed=t)
        torch.testing.assert_close(rt(x, s), MIX(x, s), rtol=0, atol=1e-12 * max(1.0, s), msg=lambda m, t=t: f"t={t}: {m}")


def test_denoiser_to_eps_net_to_denoiser_round_trip_between_table_sigmas():
    """Off the table (EDM/Karras grids) the round trip must still evaluate D at the same σ: DenoiserEpsNet's
    fractional-t → σ map must invert VPDenoiser's σ → t map (log-σ interpolation)."""

    class Float64Eps(DenoiserEpsNet):  # isolate the σ mapping from the dtype question above
        def __init__(self, *a):
            super().__init__(*a)
            self.anchor = nn.Parameter(torch.zeros((), dtype=F64), requires_grad=False)

    rt = VPDenoiser(Float64Eps(MIX, SCH), SCH)
    for s in (0.05, 0.5, 3.0, 40.0):
        x = MIX.sample(8, 1) + s * _rand(8, 3, seed=2)
        torch.testing.assert_close(rt(x, s), MIX(x, s), rtol=0, atol=1e-10 * max(1.0, s), msg=lambda m, s=s: f"sigma={s}: {m}")


def test_fn_denoiser_and_as_denoiser():
    g = GaussianDenoiser(3, mean=0.5, std=0.7)
    assert as_denoiser(g) is g
    fd = as_denoiser(lambda x, s: x * 0 + s[:, None])
    assert isinstance(fd, FnDenoiser)
    D, extras = fd.forward_full(torch.zeros(2, 3, dtype=F64), 0.25)
    assert extras == {} and torch.equal(D, torch.full((2, 3), 0.25, dtype=F64))


# ---- the analytic oracles themselves --------------------------------------------------------------------------
def test_gaussian_oracle_formula_and_sample():
    g = GaussianDenoiser((2, 3), mean=torch.arange(3.0), std=0.5)
    x = _rand(4, 2, 3)
    s = torch.tensor([0.0, 0.1, 1.0, 10.0], dtype=F64)
    want = torch.arange(3.0, dtype=F64) + (x - torch.arange(3.0, dtype=F64)) * (0.25 / (0.25 + s**2))[:, None, None]
    torch.testing.assert_close(g(x, s), want, rtol=1e-15, atol=0)
    d = g.sample(20000, 0)
    assert d.shape == (20000, 2, 3) and d.dtype == F64
    torch.testing.assert_close(d.mean(0), g.mean, atol=0.02, rtol=0)
    assert float(d.std(0).mean()) == pytest.approx(0.5, rel=0.01)
    assert torch.equal(g.sample(5, 7), g.sample(5, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError):
        GaussianDenoiser(3, std=0.0)


def test_mixture_oracle_is_the_posterior_mean():
    """D(x, σ) = E[x0 | x]: the residual x0 - D is orthogonal to every function of x (checked on a few)."""
    m = GaussianMixtureDenoiser([-2.0, 1.0], stds=[0.3, 0.5], weights=[0.3, 0.7])
    x0 = m.sample(200_000, 0)
    sig = 0.8
    x = x0 + sig * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    r = x0 - m(x, sig)
    for f in (torch.ones_like(x), x, torch.tanh(2 * x), (x > 0).double()):
        # 4.5 standard errors: a false failure about 7e-6 per check under another random stream (4 checks)
        assert abs(float((r * f).mean())) < 4.5 * float((r * f).std()) / math.sqrt(len(x)) + 1e-4
    # one component == the Gaussian oracle
    one = GaussianMixtureDenoiser([[0.5, -1.0]], stds=0.4)
    g = GaussianDenoiser(2, mean=[0.5, -1.0], std=0.4)
    xx = _rand(7, 2) * 3
    torch.testing.assert_close(one(xx, 1.3), g(xx, 1.3), rtol=1e-14, atol=1e-15)
    # σ → 0 returns x; σ → ∞ returns the data mean
    torch.testing.assert_close(m(x[:10], 0.0), x[:10], rtol=1e-14, atol=0)
    torch.testing.assert_close(m(x[:10] * 0, 1e8), m.mean.expand(10, 1), rtol=0, atol=1e-9)
    # CDF / quantiles of the 1-D mixture
    q = np.array([0.01, 0.3, 0.5, 0.99])
    np.testing.assert_allclose(m.cdf(m.ppf(q, 2.0), 2.0), q, atol=1e-13)
    assert float((x0[:, 0] < -0.5).double().mean()) == pytest.approx(float(m.cdf(-0.5)), abs=0.005)
    with pytest.raises(ValueError):
        GaussianMixtureDenoiser([0.0, 1.0], weights=[1.0])


def _module_trees():
    """Module trees whose first parameter / first floating buffer is not simply the root's."""
    shared = nn.Linear(2, 2).double()
    nested = nn.Sequential(nn.Identity(), nn.Sequential(nn.ReLU(), nn.Linear(3, 3).half()), nn.Linear(3, 3))
    with_none = nn.Module()
    with_none.skip = None
    with_none.register_parameter("gone", None)
    with_none.body = nn.Sequential(nn.Identity(), shared, shared)
    buffers_only = nn.Module()
    buffers_only.register_buffer("index", torch.arange(3))  # not floating: skipped
    buffers_only.child = nn.Module()
    buffers_only.child.register_buffer("scale", torch.ones(2, dtype=torch.bfloat16))
    return [nested, with_none, buffers_only, nn.Sequential(nn.ReLU()), nn.BatchNorm1d(4).half()]


@pytest.mark.parametrize("tree", _module_trees())
def test_net_dtype_walk_matches_torchs_generators(tree):
    from diffusion_es.core.param import _first_tensor
    params = list(tree.parameters())
    floats = [b for b in tree.buffers() if b.is_floating_point()]
    assert _first_tensor(tree, "_parameters") is (params[0] if params else None)
    assert _first_tensor(tree, "_buffers", torch.is_floating_point) is (floats[0] if floats else None)
    expected = params[0].dtype if params else floats[0].dtype if floats else torch.float64
    assert VPDenoiser(tree, VPSchedule.linear())._net_dtype() == expected


def _dtype_holders():
    class ClassAttr(nn.Linear):
        dtype = torch.float16

    class Prop(nn.Linear):  # like diffusers' ModelMixin.dtype
        @property
        def dtype(self):
            return torch.bfloat16

    class Raising(nn.Linear):  # a property that fails: as if there were none (the first parameter's dtype)
        @property
        def dtype(self):
            raise AttributeError("no dtype here")

    inst = nn.Linear(2, 2)
    inst.dtype = torch.float64  # an instance attribute

    def fn(x_t, t):
        return x_t
    fn.dtype = torch.float16
    return [(ClassAttr(2, 2), torch.float16), (Prop(2, 2), torch.bfloat16), (inst, torch.float64),
            (fn, torch.float16), (lambda x_t, t: x_t, torch.float64), (nn.Linear(2, 2).half(), torch.float16),
            (Raising(2, 2).half(), torch.float16)]


@pytest.mark.parametrize("net,expected", _dtype_holders())
def test_net_dtype_reads_a_dtype_attribute_first(net, expected):
    assert VPDenoiser(net, VPSchedule.linear())._net_dtype() == expected


def test_exact_sqrt_is_correctly_rounded_for_tensors_arrays_and_floats():
    """The oracle is math.sqrt (IEEE 754 requires a correctly rounded root), and for float32 the float64 root rounded
    to float32 (exact: 53 >= 2 * 24 + 2 bits, so the double rounding cannot err). torch's own CPU sqrt misses it for
    about 0.7 % of float64 values on an Intel Xeon (MKL), so 20,000 values would fail without the numpy root."""
    from diffusion_es.core.param import exact_sqrt
    g = torch.Generator().manual_seed(3)
    v = torch.cat([torch.rand(10_000, generator=g, dtype=F64),
                   torch.exp(torch.empty(10_000, dtype=F64).uniform_(-700, 700, generator=g)),
                   torch.tensor([0.0, 0.5, 2.0, 1e-300, 5e-324, math.inf], dtype=F64)])
    want = torch.tensor([math.sqrt(a) for a in v.tolist()], dtype=F64)
    for got in (exact_sqrt(v), exact_sqrt(v.reshape(2, -1)[:, ::2].T.contiguous().T), exact_sqrt(v.numpy())):
        got = torch.as_tensor(got).reshape(-1)
        ref = want if got.numel() == v.numel() else want.reshape(2, -1)[:, ::2].reshape(-1)
        assert got.dtype == F64 and torch.equal(got, ref)
    v32 = v[:10_000].float()
    assert exact_sqrt(v32).dtype == torch.float32
    assert torch.equal(exact_sqrt(v32), torch.tensor([math.sqrt(a) for a in v32.tolist()], dtype=F64).float())
    half = torch.tensor(0.5, dtype=F64)  # 0-d tensors keep their shape; one of the values torch's MKL root misses
    assert exact_sqrt(half).shape == () and exact_sqrt(half).item() == math.sqrt(0.5) == exact_sqrt(0.5)
    assert math.isnan(exact_sqrt(torch.tensor([-1.0]))[0])  # as torch: NaN, no warning (pytest -W error)
    w = torch.tensor([4.0, 9.0], dtype=F64, requires_grad=True)  # autograd: torch's root, with its gradient
    exact_sqrt(w).sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([0.25, 1 / 6], dtype=F64), rtol=4 * torch.finfo(F64).eps, atol=0)


@pytest.mark.parametrize("v", [0.0, 1e-300, 0.0123, 0.5, 0.999999, 1.0, 3.7, math.inf])
def test_float_levels_and_tensor_levels_give_the_same_bytes(v):
    """alpha_bar_to_sigma and EDM's preconditioning, given a level as a float or as a 0-d float64 tensor: the same
    bytes (the square roots inside are correctly rounded either way)."""
    from diffusion_es.core.pfgm import edm_scalings
    t = torch.tensor(v, dtype=F64)
    if 0 < v <= 1:
        assert alpha_bar_to_sigma(t).item() == alpha_bar_to_sigma(v)
    if 0 < v < math.inf:
        for a, b in zip(edm_scalings(t, 0.5), edm_scalings(v, 0.5)):
            assert a.item() == b


@pytest.mark.parametrize("v", [0.0, 1e-300, 0.0123, 0.5, 0.999999, 1.0, 3.7, math.inf])
def test_float_fast_paths_equal_the_tensor_paths(v):
    """vp_to_sigma_space / sigma_to_vp_space take a shortcut for one float level; the bytes are the general path's
    (a 0-d float64 tensor level), including the σ = ∞ / ᾱ = 0 pass-through."""
    from diffusion_es.core.param import sigma_to_vp_space
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 7
    t = torch.tensor(v, dtype=torch.float64)
    if v != math.inf:
        assert torch.equal(vp_to_sigma_space(x, v), vp_to_sigma_space(x, t))
    assert torch.equal(sigma_to_vp_space(x, v), sigma_to_vp_space(x, t))


# ---- what a network may return, and the dtype of a plain function around one ------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, t):
        return self.lin(x) * (1 + t.reshape(-1, 1) / 1000)


class _Out:  # what a diffusers model returns (UNet2DOutput)
    def __init__(self, sample):
        self.sample = sample


@pytest.mark.parametrize("wrap", [lambda o: (o,), lambda o: [o], lambda o: _Out(o)])
def test_a_network_may_return_a_tuple_or_a_diffusers_output(wrap):
    """diffusers models return UNet2DOutput (or a tuple with return_dict=False): the denoisers take the tensor from
    it, the same bytes as the tensor itself; a plain function gets its dtype from ``dtype=``."""
    from diffusion_es.core.param import FlowDenoiser
    from diffusion_es.core.pfgm import EDMDenoiser, EDMSchedule

    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(4, 3, dtype=torch.float64)
    for make in (lambda n, **kw: VPDenoiser(n, VPSchedule.linear(), **kw), lambda n, **kw: FlowDenoiser(n, **kw)):
        ref = make(net)(x, 0.7)
        assert torch.equal(make(lambda a, t: wrap(net(a, t)), dtype=torch.float32)(x, 0.7), ref)
        assert torch.equal(make(lambda a, t: wrap(net(a, t)), dtype="float32")(x, 0.7), ref)
    net64 = _Net().double()  # (EDMDenoiser has no dtype option: a plain function runs in float64)
    assert torch.equal(EDMDenoiser(lambda a, t: wrap(net64(a, t)), EDMSchedule())(x, 0.7),
                       EDMDenoiser(net64, EDMSchedule())(x, 0.7))
    with pytest.raises(TypeError, match="returned dict, not a tensor"):
        VPDenoiser(lambda a, t: {"eps": a}, VPSchedule.linear())(x, 0.7)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype.*got 'int8'"):
        VPDenoiser(net, VPSchedule.linear(), dtype="int8")
    with pytest.raises(TypeError, match=r"FlowDenoiser's schedule must be a FlowSchedule.*got float"):
        FlowDenoiser(net, 3.0)
    with pytest.raises(TypeError, match=r"must be a FlowSchedule.*got VPSchedule"):
        FlowDenoiser(net, VPSchedule.linear())
