"""Agreement with an independent implementation: diffusers' DDPMScheduler and DDIMScheduler.

Conventions matched (read from diffusers 0.42's scheduler source):

* ᾱ: diffusers builds its tables in float32; for a 1e-6 comparison both sides must use the same ᾱ, so the
  scheduler's ``betas`` / ``alphas`` / ``alphas_cumprod`` are replaced with our float64 tables (the float32
  tables themselves agree with ours to float32 precision, checked below).
* DDPM: diffusers walks custom timesteps (``set_timesteps(timesteps=...)``) with ``prev_t`` = the next entry
  and ᾱ_prev = 1 after the last one, exactly ADM's respaced chain. It draws its noise inside ``step`` with
  ``randn_tensor``; we hand it our SeedNoise draw for that step. One genuine difference: diffusers adds noise
  at every step whose timestep is > 0, ADM (and we) never at the last step. On grids that end at t = 0 (ADM,
  leading) the two agree; on "trailing" grids (last t = 49) diffusers adds σ·z with σ² = β'_0 (fixed_large) or
  an interpolation towards log(1e-20) (learned_range) at the last step, so there the diffusers side gets z = 0
  for the last step: the comparison covers every step where both conventions add the same thing. ADM's
  first-entry variance rule (β̃_1 in place of β̃_0 = 0) only affects that last step, which adds no noise.
* DDIM: diffusers derives the previous timestep as ``t - T // N`` (it accepts no custom timesteps), so only
  uniformly spaced grids are comparable: "leading" (any offset) and "trailing" with N dividing T; ADM's
  rounded-linspace grid is not. ADM re-derives ε from the clipped x̂_0: ``use_clipped_model_output=True``.
  ``set_alpha_to_one=True`` gives ᾱ_prev = 1 at the last step, as in ADM.
* ES: the diffusers loop divides the network's ε (only the ε channels for learned variance) by λ of the step.
* Precision: the network runs in float64 too, so both sides compute the same float64 numbers up to a few
  roundings per step (``loop_tol``); a float32 network would mix in its own rounding of two differently rounded
  inputs, which no tolerance derived from the sampler covers.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402

from diffusion_es.core.param import VPDenoiser  # noqa: E402
from diffusion_es.samplers import SeedNoise, sample  # noqa: E402
from diffusion_es.core.scaling import Linear, PerStep, Uniform  # noqa: E402
from diffusion_es.core.schedules import VPSchedule, respace  # noqa: E402

from _tol import F32, cumprod_rtol, loop_tol, mag, tol  # noqa: E402

F64 = torch.float64
SCH = VPSchedule.linear()
DIM, SEEDS = 6, list(range(12))


class TinyMLP(nn.Module):
    """A fixed small ε-network (float64, seeded weights) on (x_t, t); optionally 2C outputs (learned variance)."""

    def __init__(self, learned_variance=False, hidden=48):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        out = 2 * DIM if learned_variance else DIM
        self.l1 = nn.Linear(DIM + 4, hidden)
        self.l2 = nn.Linear(hidden, out)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        self.to(F64)
        self.learned_variance = learned_variance

    def forward(self, x_t, t):
        t = torch.as_tensor(t, dtype=x_t.dtype).reshape(-1).expand(x_t.shape[0])[:, None] / 1000.0
        emb = torch.cat([torch.sin(2 * t), torch.cos(2 * t), torch.sin(7 * t), torch.cos(7 * t)], dim=1)
        out = self.l2(torch.tanh(self.l1(torch.cat([x_t, emb], dim=1))))
        eps = 0.9 * x_t * t.sqrt() + 0.3 * out[:, :DIM]
        return torch.cat([eps, torch.tanh(out[:, DIM:])], dim=1) if self.learned_variance else eps


NET, NET_LV = TinyMLP(), TinyMLP(learned_variance=True)


def _use_our_tables(sched):
    sched.betas = torch.from_numpy(SCH.betas.copy())
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.from_numpy(SCH.alphas_cumprod.copy())
    sched.one = torch.tensor(1.0, dtype=F64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    return sched


def _eps(net, x, t, lam):
    """The network's output on diffusers' side (float64 network and loop), ε channels divided by λ."""
    out = net(x, torch.full((x.shape[0],), float(t), dtype=F64))
    if lam == 1.0:
        return out
    if out.shape[1] == 2 * DIM:
        return torch.cat([out[:, :DIM] / lam, out[:, DIM:]], dim=1)
    return out / lam


def _lams(es, n):
    return np.ones(n) if es is None else es.values(n)


def test_diffusers_float32_tables_are_ours():
    d = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    # a float32 linspace: the step, its multiple, the sum, each rounded on values <= β_max
    np.testing.assert_allclose(d.betas.double().numpy(), SCH.betas, atol=tol(F32, SCH.betas.max(), 3), rtol=0)
    np.testing.assert_allclose(d.alphas_cumprod.double().numpy(), SCH.alphas_cumprod, rtol=cumprod_rtol(SCH.betas))
    c = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    cos = VPSchedule.cosine()
    np.testing.assert_allclose(c.alphas_cumprod.double().numpy(), cos.alphas_cumprod, rtol=cumprod_rtol(cos.betas))


def _diffusers_ddpm(net, timesteps, variance_type, clip, es, monkeypatch):
    sched = _use_our_tables(diffusers.DDPMScheduler(num_train_timesteps=SCH.T, beta_schedule="linear",
                                                    variance_type=variance_type, clip_sample=clip,
                                                    prediction_type="epsilon"))
    sched.set_timesteps(timesteps=[int(t) for t in timesteps[::-1]])
    noise = SeedNoise(SEEDS, (DIM,))
    current = {}
    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda shape, **kw: current["z"].to(kw.get("dtype", F64)))
    x = noise.initial()
    lams = _lams(es, len(timesteps))
    for k, t in enumerate(sched.timesteps):
        current["z"] = noise(k) if k < len(timesteps) - 1 else torch.zeros_like(x)  # see the module docstring
        x = sched.step(_eps(net, x, t, lams[k]), t, x).prev_sample
    return x


@pytest.mark.parametrize("es", [None, Uniform(1.02), Linear(0.003, 1.0)], ids=["base", "uniform", "linear"])
@pytest.mark.parametrize("variance", ["small", "large", "learned"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps,spacing", [(10, "adm"), (25, "adm"), (20, "leading"), (20, "trailing")])
def test_ddpm_matches_diffusers(steps, spacing, clip, variance, es, monkeypatch):
    net = NET_LV if variance == "learned" else NET
    vtype = {"small": "fixed_small", "large": "fixed_large", "learned": "learned_range"}[variance]
    ts = respace(SCH.T, steps, spacing)
    theirs = _diffusers_ddpm(net, ts, vtype, clip, es, monkeypatch)
    ours = sample(VPDenoiser(net, SCH, learned_variance=variance == "learned"), "ddpm", steps, (DIM,), SEEDS,
                  schedule=SCH, es=es, spacing=spacing, variance=variance, clip=clip)
    # ε -> x0 divides by √ᾱ (clipped or not, x0 feeds the posterior mean)
    atol = loop_tol(F64, mag(theirs), steps, cond=1 / math.sqrt(SCH.alphas_cumprod[ts].min()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)
    assert float(ours.abs().max()) > 0.1


@pytest.mark.parametrize("es", [None, Uniform(1.02), PerStep(list(np.linspace(1.05, 1.0, 20)))],
                         ids=["base", "uniform", "per_step"])
@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("clip", [False, True, 0.5])  # 0.5: clip_sample_range=0.5
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0)])
def test_ddim_matches_diffusers(spacing, offset, clip, eta, es):
    steps = 20
    sched = _use_our_tables(diffusers.DDIMScheduler(num_train_timesteps=SCH.T, beta_schedule="linear",
                                                    clip_sample=bool(clip), clip_sample_range=float(clip or 1),
                                                    set_alpha_to_one=True, steps_offset=offset,
                                                    timestep_spacing=spacing, prediction_type="epsilon"))
    sched.set_timesteps(steps)
    ts = respace(SCH.T, steps, spacing, steps_offset=offset)
    np.testing.assert_array_equal(sched.timesteps.numpy(), ts[::-1])
    noise = SeedNoise(SEEDS, (DIM,))
    x = noise.initial()
    lams = _lams(es, steps)
    for k, t in enumerate(sched.timesteps):
        z = noise(k)
        x = sched.step(_eps(NET, x, t, lams[k]), t, x, eta=eta, use_clipped_model_output=True,
                       variance_noise=z if eta > 0 else None).prev_sample
    # our sampler on the same grid: SamplingPlan only knows offset 0, so run the chain directly for offset 1
    den = VPDenoiser(NET, SCH)
    if offset == 0:
        ours = sample(den, "ddim", steps, (DIM,), SEEDS, schedule=SCH, es=es, spacing=spacing, eta=eta, clip=clip)
    else:
        from diffusion_es.samplers import sample_ddim
        from diffusion_es.core.scaling import epsilon_scaled

        ch = SCH.respaced(ts)
        n2 = SeedNoise(SEEDS, (DIM,))
        with torch.no_grad():
            ours = sample_ddim(epsilon_scaled(den, es, ch.sigmas[::-1]), n2.initial(), ch, eta=eta, noise=n2,
                               clip=clip)
    atol = loop_tol(F64, mag(x), steps, cond=1 / math.sqrt(SCH.alphas_cumprod[ts].min()))
    torch.testing.assert_close(ours, x, rtol=0, atol=atol)


def test_ddpm_defaults_to_the_models_own_variance():
    """No ``variance`` given: learned for a learned-variance network (as ADM and diffusers' learned_range), else small."""
    kw = dict(schedule=SCH, spacing="adm")
    lv = VPDenoiser(NET_LV, SCH, learned_variance=True)
    default = sample(lv, "ddpm", 10, (DIM,), SEEDS, **kw)
    torch.testing.assert_close(default, sample(lv, "ddpm", 10, (DIM,), SEEDS, variance="learned", **kw), rtol=0, atol=0)
    assert (default - sample(lv, "ddpm", 10, (DIM,), SEEDS, variance="small", **kw)).abs().max() > 1e-3
    plain = VPDenoiser(NET, SCH)
    torch.testing.assert_close(sample(plain, "ddpm", 10, (DIM,), SEEDS, **kw),
                               sample(plain, "ddpm", 10, (DIM,), SEEDS, variance="small", **kw), rtol=0, atol=0)
    with pytest.raises(ValueError, match="learned-variance"):
        sample(plain, "ddpm", 10, (DIM,), SEEDS, variance="learned", **kw)
