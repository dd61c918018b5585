"""EDM / k-diffusion style denoiser wrapper: D' = x - (x - D)/λ(σ), attributes passed through."""

import pytest
import torch
from torch import nn

from diffusion_es.adapters.kdiffusion import EpsilonScaledDenoiser
from diffusion_es.core.scaling import Linear, PerStep, SigmaKeyed, Uniform
from diffusion_es.core.schedules import karras_sigmas

from _tol import F32, F64, loop_tol, mag, tol


class TinyEDM(nn.Module):
    """An EDM-preconditioned network (c_skip, c_out, c_in, c_noise) with EDM's attribute names; it computes in
    its parameters' dtype (float32 unless converted), whatever the input's, as EDM's networks do."""

    def __init__(self, channels=2, res=4, label_dim=0, sigma_data=0.5):
        super().__init__()
        torch.manual_seed(0)
        self.img_channels, self.img_resolution, self.label_dim = channels, res, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0.002, 80.0, sigma_data
        self.net = nn.Sequential(nn.Conv2d(channels + 1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, channels, 3, padding=1))
        self.calls = 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        self.calls += 1
        dtype = self.net[0].weight.dtype
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        F = self.net(torch.cat([c_in * x, c_noise.expand(-1, 1, *x.shape[2:])], 1))
        return c_skip * x + c_out * F


@torch.no_grad()
def euler(model, x, sigmas):
    """k-diffusion's sample_euler, written out: d = (x - D)/σ, x += d·(σ_next - σ)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        D = model(x, s * torch.ones(x.shape[0]))
        x = x + (x - D) / s * (s_next - s)
    return x


@torch.no_grad()
def heun(model, x, sigmas):
    """EDM's deterministic Heun (Algorithm 1), float64 state, σ handed to the net as a 0-d float64 tensor."""
    x = x.to(torch.float64)
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = (x - model(x, torch.as_tensor(s, dtype=torch.float64)).to(torch.float64)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - model(x_next, torch.as_tensor(s_next, dtype=torch.float64)).to(torch.float64)) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
    return x


@pytest.fixture
def setup():
    net = TinyEDM().eval()
    sigmas = karras_sigmas(5, net.sigma_min, net.sigma_max)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    return net, sigmas, x0


def test_lambda_one_is_exactly_the_network(setup):
    net, sigmas, x0 = setup
    x, s = x0, torch.full((3,), 2.0)
    es = EpsilonScaledDenoiser(net, Uniform(1.0), sigmas)
    assert torch.equal(es(x, s), net(x, s))
    assert torch.equal(euler(es, x0, sigmas), euler(net, x0, sigmas))


def test_formula_and_reference_euler_loop(setup):
    """In float64: the wrapper and the hand-written loop differ by a few roundings per step, which in float32
    the network would carry on to the end mixed with its own."""
    net, sigmas, x0 = setup
    net, x0 = net.to(F64), x0.to(F64)
    sched = Linear(0.002, 0.999)  # λ: 1.007 .. 0.999 (below 1 is allowed)
    lams = sched.values(5)
    es = EpsilonScaledDenoiser(net, sched, sigmas, record=True)
    out = euler(es, x0, sigmas)
    # hand-written loop: ε = (x - D)/σ divided by λ_i of step i
    x = x0
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        with torch.no_grad():
            D = net(x, s * torch.ones(3))
        x = x + (x - D) / s / lams[i] * (s_next - s)
    # a few roundings per step and side on values of the state's size, carried through the later network calls
    torch.testing.assert_close(out, x, atol=loop_tol(F64, mag(x0, x), len(sigmas) - 1), rtol=0)
    assert [float(r[1][0]) for r in es.records] == list(lams)
    assert (out - euler(net, x0, sigmas)).abs().max() > 1e-3


def test_heun_both_evaluations_keyed_on_sigma(setup):
    net, sigmas, x0 = setup
    sched = PerStep([1.01, 1.02, 1.03, 1.04, 1.05])
    es = EpsilonScaledDenoiser(net, sched, sigmas, record=True)
    heun(es, x0, sigmas)
    got = [float(r[1][0]) for r in es.records]
    # Euler at σ_i gets λ_i, the correction at σ_{i+1} gets λ_{i+1}; 2N - 1 evaluations
    assert got == [1.01, 1.02, 1.02, 1.03, 1.03, 1.04, 1.04, 1.05, 1.05]
    # 0-d float64 σ (EDM's protocol) passes straight through; float64 x gives a float32 D like the net
    D = es(x0.double(), torch.tensor(3.0, dtype=torch.float64))
    assert D.dtype == torch.float32


def test_attribute_passthrough_and_module_behaviour(setup):
    net, sigmas, _ = setup
    es = EpsilonScaledDenoiser(net, 1.005)
    assert (es.sigma_min, es.sigma_max, es.img_resolution, es.img_channels, es.label_dim) == (0.002, 80.0, 4, 2, 0)
    assert es.round_sigma(torch.tensor(1.5)) == 1.5
    assert set(dict(es.named_parameters())) == {f"inner.{k}" for k, _ in net.named_parameters()}
    es.eval()
    assert not net.training
    with pytest.raises(AttributeError):
        es.no_such_attribute


def test_per_sample_sigma_and_kwargs(setup):
    net, sigmas, x0 = setup
    es = EpsilonScaledDenoiser(net, SigmaKeyed(lambda s: 1.0 if s < 1 else 1.01))
    s = torch.tensor([0.5, 2.0, 10.0])
    D, Dn = es(x0, s, class_labels=None), net(x0, s)
    assert torch.equal(D[0], Dn[0])  # λ = 1 sample untouched
    x = x0.double()
    expect = x[1:] - (x[1:] - Dn[1:].double()) / 1.01
    # the wrapper in float32: x - D, λ to float32, the quotient, x - (...) (4 roundings); the reference in float64
    torch.testing.assert_close(D[1:].double(), expect, atol=tol(F32, mag(x[1:]) + mag(Dn[1:]), 4), rtol=0)


def test_errors(setup):
    net, sigmas, _ = setup
    with pytest.raises(ValueError, match="pass the sampling grid"):
        EpsilonScaledDenoiser(net, Linear(0.01, 1.0))
    with pytest.raises(ValueError, match="finite and > 0"):
        EpsilonScaledDenoiser(net, 0.0)
    es = EpsilonScaledDenoiser(net, Linear(0.01, 1.0), sigmas)
    es.rebind(karras_sigmas(3, 0.01, 10))
    assert len(es.bound.sigmas) == 3
