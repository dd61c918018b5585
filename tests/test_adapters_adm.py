"""ADM / guided-diffusion style ε networks: only the ε channels are scaled, λ keyed on the respaced grid."""

import math

import pytest
import torch
from torch import nn

from diffusion_es.adapters.adm import EpsilonScaledEpsNet
from diffusion_es.core.scaling import Linear
from diffusion_es.core.schedules import VPSchedule, respace

from _tol import F32, F64, mag, tol


class TinyADM(nn.Module):
    def __init__(self, channels=3, learned_sigma=True):
        super().__init__()
        torch.manual_seed(0)
        self.out = 2 * channels if learned_sigma else channels
        self.conv = nn.Conv2d(channels, self.out, 3, padding=1)
        self.num_classes = None

    def forward(self, x, t, y=None):
        return self.conv(x) + (t.float() / 1000).reshape(-1, 1, 1, 1)


class FakeSpacedDiffusion:
    """The attributes of guided-diffusion's SpacedDiffusion that the wrapper reads."""

    def __init__(self, base: VPSchedule, ts, rescale):
        self.timestep_map = list(ts)
        self.alphas_cumprod = base.alphas_cumprod[ts]
        self.rescale_timesteps = rescale
        self.original_num_steps = base.T


@pytest.fixture
def parts():
    sched = VPSchedule.linear(1000)
    ts = respace(1000, 10, "adm")
    return TinyADM(), sched, ts


def ref_lambda(schedule, ts, t):
    """λ of an original timestep t by its position in the respaced grid (first sampling step = noisiest)."""
    order = list(ts[::-1])
    return schedule.values(len(ts))[order.index(int(t))]


def test_only_eps_channels_scaled_and_keyed_on_grid(parts):
    net, sched, ts = parts
    lin = Linear(0.01, 1.0)
    es = EpsilonScaledEpsNet(net, sched, lin, timesteps=ts)
    x = torch.randn(2, 3, 4, 4)
    for t in ts:
        tt = torch.full((2,), int(t))
        out, ref = es(x, tt), net(x, tt)
        lam = ref_lambda(lin, ts, t)
        assert torch.equal(out[:, 3:], ref[:, 3:])  # variance channels untouched
        torch.testing.assert_close(out[:, :3], ref[:, :3] / lam, atol=0, rtol=0)


def test_lambda_one_returns_network_output(parts):
    net, sched, ts = parts
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([999, 999])
    out = net(x, t)
    assert torch.equal(EpsilonScaledEpsNet(net, sched, 1.0, timesteps=ts)(x, t), out)
    # the last step of a linear schedule with b = 1 has λ = 1: untouched too
    assert torch.equal(EpsilonScaledEpsNet(net, sched, Linear(0.01, 1.0), timesteps=ts)(x, torch.tensor([0, 0])),
                       net(x, torch.tensor([0, 0])))


def test_per_sample_timesteps_and_eps_only_net(parts):
    _, sched, ts = parts
    net = TinyADM(learned_sigma=False)
    lin = Linear(0.01, 1.0)
    es = EpsilonScaledEpsNet(net, sched, lin, timesteps=ts, learned_variance=False)
    x, t = torch.randn(3, 3, 4, 4), torch.tensor([int(ts[0]), int(ts[5]), int(ts[9])])
    out, ref = es(x, t), net(x, t)
    for b in range(3):
        # ours: the float64 quotient rounded to float32 (1 rounding); the reference: λ rounded to float32, and
        # torch may divide by multiplying with its rounded reciprocal (3)
        torch.testing.assert_close(out[b], ref[b] / ref_lambda(lin, ts, t[b]), atol=0, rtol=tol(F32, 1, 4))
    with pytest.raises(ValueError, match="must output 6 channels"):
        EpsilonScaledEpsNet(net, sched, 1.01, timesteps=ts, learned_variance=True)(x, t)


def test_spaced_diffusion_with_rescaled_timesteps(parts):
    net, sched, ts = parts
    lin = Linear(0.01, 1.0)
    for rescale in (False, True):
        diff = FakeSpacedDiffusion(sched, ts, rescale)
        es = EpsilonScaledEpsNet.from_spaced_diffusion(net, diff, lin)
        for t in ts:
            given = torch.tensor([float(t) * (1000.0 / 1000 if rescale else 1.0)])
            assert es.lam(given)[0] == ref_lambda(lin, ts, t)
    # T = 4000 with rescale: the network sees t·1000/4000
    base = VPSchedule.linear(4000)
    ts4 = respace(4000, 8, "adm")
    es = EpsilonScaledEpsNet.from_spaced_diffusion(net, FakeSpacedDiffusion(base, ts4, True), lin)
    assert [es.lam(torch.tensor([t * 0.25]))[0] for t in ts4] == [ref_lambda(lin, ts4, t) for t in ts4]


def test_x0_and_v_predictions_scale_their_eps(parts):
    _, sched, ts = parts
    eps_net = TinyADM(learned_sigma=False)
    ab_tab = torch.from_numpy(sched.alphas_cumprod)

    class Other(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, x, t):
            eps = eps_net(x.float(), t).double()
            ab = ab_tab[t].reshape(-1, 1, 1, 1)
            x0 = (x.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
            return x0 if self.kind == "x0" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    x, t = torch.randn(2, 3, 4, 4).double(), torch.tensor([int(ts[3])] * 2)
    ab = ab_tab[t].reshape(-1, 1, 1, 1)
    eps_es = EpsilonScaledEpsNet(eps_net, sched, 1.05, timesteps=ts)(x.float(), t).double()
    # ε/λ in float32 (λ to float32, its reciprocal, the quotient: 3 roundings) against float64 conversions
    # ε -> x0/v -> ES -> ε (~16 roundings, grown by at most 1/(√ᾱ·√(1-ᾱ)))
    a, b = math.sqrt(float(ab[0])), math.sqrt(1 - float(ab[0]))
    atol = tol(F32, mag(eps_es), 3) + tol(F64, mag(x, eps_es) / (a * b), 16)
    for kind in ("x0", "v"):
        out = EpsilonScaledEpsNet(Other(kind), sched, 1.05, timesteps=ts, prediction=kind)(x, t)
        eps = (x - ab.sqrt() * out) / (1 - ab).sqrt() if kind == "x0" else ab.sqrt() * out + (1 - ab).sqrt() * x
        torch.testing.assert_close(eps, eps_es, atol=atol, rtol=0)


def test_passthrough_and_errors(parts):
    net, sched, ts = parts
    es = EpsilonScaledEpsNet(net, sched, 1.01, timesteps=ts)
    assert es.num_classes is None and es.conv is net.conv
    with pytest.raises(ValueError, match="prediction type 'score'"):
        EpsilonScaledEpsNet(net, sched, 1.01, prediction="score")
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        EpsilonScaledEpsNet(net, sched, 1.01, timesteps=[0, 1000])


def test_zero_terminal_snr_table_gets_lambda_one_at_the_last_timestep():
    """ᾱ_{T-1} = 0 (σ = ∞): λ = 1 there, the v-prediction output untouched and finite; other steps scaled."""
    zs = VPSchedule.linear(T=50, zero_snr=True)
    g = torch.Generator().manual_seed(0)

    def vnet(x, t):
        return 0.5 * x + 0.1 * t.reshape(-1, 1).float() / 50

    es = EpsilonScaledEpsNet(vnet, zs, 1.05, timesteps=respace(50, 5, "trailing"), prediction="v")
    x = torch.randn(4, 3, generator=g)
    t = torch.tensor([49, 49, 10, 0])
    out = es(x, t)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:2], vnet(x, t)[:2])  # σ = ∞: the network's output itself
    assert list(es.lam(t)) == [1.0, 1.0, 1.05, 1.05]
    assert not torch.equal(out[2:], vnet(x, t)[2:])


def test_an_empty_grid_is_one_clear_error(parts):
    net, sched, _ = parts
    with pytest.raises(ValueError, match="timesteps is empty"):
        EpsilonScaledEpsNet(net, sched, Linear(0.01, 1.0), timesteps=[])


def test_a_beta_table_passed_as_alphas_cumprod_is_refused(parts):
    """β lies in (0, 1) too, so only its direction tells it from ᾱ: read as ᾱ, λ was keyed on wrong levels."""
    net, sched, ts = parts
    for wrong in (sched.betas, sched.alphas_cumprod[::-1].copy()):
        with pytest.raises(ValueError, match=r"must fall with the timestep.*VPSchedule\(betas\)"):
            EpsilonScaledEpsNet(net, wrong, 1.01, timesteps=ts)
    EpsilonScaledEpsNet(net, sched.alphas_cumprod, 1.01, timesteps=ts)  # the table itself is fine
