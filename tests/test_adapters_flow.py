"""Epsilon Scaling in diffusers beyond ε/v VP models: flow matching (FlowMatchEuler / FlowMatchHeun, DPM-Solver and
UniPC with flow sigmas, tiny SD3 and Flux pipelines with CFG), zero terminal SNR (v-prediction, λ = 1 at σ = ∞),
EDM schedulers and KDPM2 — each against a hand-written loop, and the refusals.

How ES is compared with the hand-written rewrite: at every network evaluation, on the same float32 prediction and
state (a spy beneath the patched ``step`` sees the library's rewrite, :func:`spied_es`), to the rounding of the two
formulas (:func:`rewrite_tol`); the whole run must then equal the plain ES run bit for bit. Whole runs of the two
formulas are not compared: their float32 rounding differences pass through the float32 network at every later
step (kernels and summation orders vary with the CPU and the thread count: no useful bound, see tests/_tol.py)."""

import inspect
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMPipeline, DDIMScheduler, DDPMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler,
    LMSDiscreteScheduler, UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from diffusion_es.adapters.diffusers import apply_epsilon_scaling, scale_model_output  # noqa: E402
from diffusion_es.core.scaling import Linear, Uniform  # noqa: E402

from _tiny_diffusers import tiny_flux, tiny_sd3, tiny_unet  # noqa: E402
from _tol import F32, F64, mag, tol  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
N = 4
LIN = Linear(0.02, 1.0)  # 1.06, 1.04, 1.02, 1.00 over 4 steps (the σ = ∞ step, where present, gets 1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rewrite_tol(lib, hand, out, x, cond):
    """|library rewrite − hand rewrite| of one prediction ``out`` at the same state ``x``: both work in float64 from
    the same float32 values, with keys (σ, t, ᾱ) read from the same float32 scheduler tables, and round to the
    output dtype once (n = 2 at the result's size); their float64 operations (≤ 16 per side, the keys' roots and
    quotients included) act on terms up to cond·max(|out|, |x|) (n = 32). (A hand rewrite in float32, ε/λ, rounds
    once: inside the n = 2.)"""
    return tol(lib.dtype, mag(lib, hand), 2) + tol(F64, cond * mag(out, x), 32)


def check_rewrite(lib, hand, out, x, cond):
    """The library's rewrite ``lib`` of ``out`` against the hand-written one; untouched where the hand leaves it."""
    if hand is out:
        assert torch.equal(lib, out)
        return
    atol = rewrite_tol(lib, hand, out, x, cond)
    torch.testing.assert_close(lib, hand, rtol=0, atol=atol)
    assert (hand - out).abs().max() > 1e3 * atol or torch.equal(hand, out)  # the check is not vacuous


@contextmanager
def spied_es(sched, es):
    """Apply ES to ``sched`` over a spy: ``seen`` collects every model_output the patched step passes on (the
    library's rewrite, or the prediction itself where λ = 1). Yields (handle, seen)."""
    seen, plain = [], sched.step

    def spy(*args, **kwargs):
        seen.append(args[0] if args else kwargs["model_output"])
        return plain(*args, **kwargs)

    spy.__signature__ = inspect.signature(plain)
    sched.step = spy
    try:
        with apply_epsilon_scaling(sched, es, record=True) as h:
            yield h, seen
    finally:
        del sched.step


@pytest.fixture(scope="module")
def unet_lat():
    return tiny_unet(in_ch=3, size=8, seed=5)


# ---- the hand-written ES rewrites (independent of the library: the formulas of PAPER.md) --------------------
def flow_v(v, x_t, t, lam):
    """v' = (ε̂/λ − x_t)/(1 − t), ε̂ = x_t + (1 − t)·v; untouched at t = 1 (σ = ∞) or λ = 1."""
    if lam == 1.0 or t >= 1 - 1e-5:
        return v
    x, vv = x_t.double(), v.double()
    return (((x + (1 - t) * vv) / lam - x) / (1 - t)).to(v.dtype)


def flow_cond(t, lam):
    """Terms of flow_v: x + (1 − t)v, its quotient by λ and the difference with x, over 1 − t."""
    return 2 * (1 + 1 / lam) / max(1 - t, 1e-12)


def vp_rewrite(out, x_t, ab, lam, kind):
    """ε → ε/λ for an ε / v output at x_t = sqrt(ᾱ)x_0 + sqrt(1−ᾱ)ε; untouched at ᾱ = 0 or λ = 1."""
    if lam == 1.0 or ab == 0:
        return out
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    o, x = out.double(), x_t.double()
    if kind == "eps":
        return (o / lam).to(out.dtype)
    eps = a * o + b * x  # v = a·ε − b·x_0, so ε = a·v + b·x_t
    eps2 = eps / lam
    x02 = (x - b * eps2) / a
    return (a * eps2 - b * x02).to(out.dtype)


def vp_cond(ab, lam):
    """Terms of vp_rewrite (v): a·o + b·x ≤ 2M, over λ, x − b·ε/λ over a, and a·ε/λ − b·x̂_0."""
    return 2 * (1 + 2 / lam) / math.sqrt(ab) if 0 < ab and lam != 1.0 else 1.0


def lam_at(grid, sigma, lams, inf_from=math.inf):
    """λ of a call at σ: the step whose interval [σ_i, σ_{i-1}) of the grid (descending, may start at ∞) holds it;
    1 at σ = ∞ or at the scheduler's stand-in for it (σ ≥ ``inf_from``)."""
    if math.isinf(sigma) or sigma >= inf_from * (1 - 1e-6):
        return 1.0
    g = np.unique(np.asarray(grid, dtype=np.float64))[::-1]
    g = g[g > 0]
    return float(lams[min(int(np.count_nonzero(g > sigma * (1 + 1e-6))), len(g) - 1)])


# ---- flow schedulers on a bare loop -------------------------------------------------------------------------
class TinyFlowNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) + 0.3 * x * (t.reshape(-1, 1, 1, 1) / 1000.0)


FNET = TinyFlowNet().eval()


def flow_loop(sched, net=FNET, lams=None, seen=None):
    """A bare flow loop. With ``lams`` and ``seen`` (``sched`` under :func:`spied_es`): every call's velocity
    rewritten by hand (λ of the step whose t the call is at) against the library's rewrite of it. The loop starts
    from pure noise, so the grid's first time is t = 1 (σ = ∞, λ = 1) whatever the scheduler writes there: 1, UniPC's
    1 − 1e-6, or DPM-Solver / DEIS's shifted 1 − 1/T."""
    x = randn_tensor((2, 3, 8, 8), generator=gen())
    sched.set_timesteps(N)
    ts = [t for t in np.unique(sched.sigmas.double().numpy())[::-1] if t > 0]  # the distinct step times
    with torch.no_grad():
        for t in sched.timesteps:
            v = net(x, t.expand(2))
            if lams is not None:
                idx = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
                tt = float(sched.sigmas[idx])
                lam = 1.0 if tt == ts[0] else float(lams[ts.index(tt)])
                hand = flow_v(v, x, tt, lam)
            x_next = sched.step(v, t, x).prev_sample
            if lams is not None:
                check_rewrite(seen[-1], hand, v, x, flow_cond(tt, lam))
            x = x_next
    return x


FLOW_SCHEDS = {
    "fm_euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "fm_heun": lambda: FlowMatchHeunDiscreteScheduler(shift=3.0),
    "fm_euler_stochastic": lambda: FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True),
    "dpm_flow": lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                    flow_shift=3.0),
    "unipc_flow": lambda: UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                  flow_shift=3.0),
    "dpm_single_flow": lambda: DPMSolverSinglestepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                            flow_shift=1.0),
    "deis_flow": lambda: DEISMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                flow_shift=6.0),
}


@pytest.mark.parametrize("name", list(FLOW_SCHEDS))
def test_flow_schedulers_against_hand_loop(name):
    make = FLOW_SCHEDS[name]
    s = make()
    torch.manual_seed(0)  # stochastic sampling draws from the global generator
    base = flow_loop(s)
    with apply_epsilon_scaling(s, 1.0):
        torch.manual_seed(0)
        assert torch.equal(flow_loop(s), base)
    for es in (Uniform(1.04), LIN):
        with apply_epsilon_scaling(s, es, record=True) as h:
            torch.manual_seed(0)
            got = flow_loop(s)
        s2 = make()
        with spied_es(s2, es) as (_, seen):  # the same ES run, checked at every call against the hand rewrite
            torch.manual_seed(0)
            want = flow_loop(s2, lams=es.values(N), seen=seen)
        assert torch.equal(got, want)
        assert (got - base).abs().max() > 1e-4
        if name != "fm_euler_stochastic":  # grids from t = 1 or a stand-in for it: λ = 1 there
            assert h.records[0].sigma == math.inf and h.records[0].lam == 1.0, name
    torch.manual_seed(0)
    assert torch.equal(flow_loop(s), base)  # removed: the baseline again


def _mu(s, mu=0.0):
    """set_timesteps with dynamic shifting: it sets config.flow_shift = exp(mu) (the attribute, not the dict entry),
    which moves the grid's top; the stand-in must follow it."""
    s.set_timesteps(N, mu=mu)
    s._mu_set = True
    return s


@pytest.mark.parametrize("make", [lambda: FlowMatchEulerDiscreteScheduler(shift=3.0), *(
    lambda cls=cls, shift=shift: cls(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
    for cls in (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, DEISMultistepScheduler)
    for shift in (1.0, 3.0)),
    lambda: _mu(DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0,
                                            use_dynamic_shifting=True, time_shift_type="exponential"))])
def test_first_flow_step_is_untouched(make):
    """σ = ∞ rule: the state after the first step from pure noise is the baseline's, bit for bit, for any λ. DPM-Solver
    and DEIS with flow sigmas call that point t = flow_shift(1 − 1/T) (0.999, 0.99967 at shift 3: σ ≈ 1000 · shift)
    to avoid log(0); λ was applied there and moved a 20-step sample ten times more than on all other steps."""
    outs = {}
    for tag, es in (("base", None), ("es", Uniform(1.5))):
        s = make()
        if not getattr(s, "_mu_set", False):
            s.set_timesteps(N)
        x = randn_tensor((2, 3, 8, 8), generator=gen())
        t = s.timesteps[0]
        with torch.no_grad():
            if es is None:
                outs[tag] = s.step(FNET(x, t.expand(2)), t, x).prev_sample
            else:
                with apply_epsilon_scaling(s, es):
                    outs[tag] = s.step(FNET(x, t.expand(2)), t, x).prev_sample
    assert torch.equal(outs["base"], outs["es"])


# ---- tiny SD3 and Flux pipelines (classifier-free guidance) ---------------------------------------------------
@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3(tmp_path_factory.mktemp("sd3"))


SD3_KW = dict(prompt="a photo of a cat", guidance_scale=5.0, height=16, width=16, max_sequence_length=8,
              num_inference_steps=N)


def run_latents(pipe, **kw):
    return pipe(generator=gen(), output_type="latent", **kw).images


def _index(sched, t):
    if sched.step_index is not None:
        return sched.step_index
    return sched.begin_index if sched.begin_index is not None else sched.index_for_timestep(t)


@contextmanager
def checked_step_es(sched, es, lams):
    """Scheduler-side ES inside a pipeline, checked at every step: a spy over the patch rewrites the guided
    velocity by hand (flow_v at the step's t with λ = lams[i]) and compares the library's rewrite of it."""
    with spied_es(sched, es) as (h, seen):
        es_step = sched.step

        def outer(v, t, x, *args, **kwargs):
            i = _index(sched, t)
            tt, lam = float(sched.sigmas[i]), float(lams[i])
            hand = flow_v(v, x, tt, lam)
            res = es_step(v, t, x, *args, **kwargs)
            check_rewrite(seen[-1], hand, v, x, flow_cond(tt, lam))
            return res

        sched.step = outer
        try:
            yield h
        finally:
            sched.step = es_step


def guided_tol(v, hand, A, B, g, x, t, lam, w):
    """|model-side ES, then guidance| − |guidance, then flow_v by hand| for one step, from the same raw branch
    outputs A, B (guided g = A + w(B − A)) at the same state: exactly equal (flow_v is affine with weights
    summing to 1, and so is guidance), apart from rounding. Model side: each branch rewritten and rounded
    (|1 − w|·|A'| + w·|B'|), then B' − A', w·(B' − A') and the sum (|B' − A'| = |B − A|/λ, (1 + w) of it, and |v|).
    Hand: the pipeline's float32 guidance of the raw branches ((1 + w)|B − A| + |g|, through flow_v's 1/λ) and
    one final rounding (|hand|). Each counted once at eps = 2u (n = 1); float64 work as in rewrite_tol."""
    Ap, Bp = flow_v(A, x, t, lam), flow_v(B, x, t, lam)
    d = mag(B - A)
    scale = (abs(1 - w) * mag(Ap) + w * mag(Bp) + 2 * (1 + w) * d / lam + mag(v) + mag(g) / lam + mag(hand))
    return tol(F32, scale, 1) + tol(F64, (1 + 2 * w) * flow_cond(t, lam) * mag(A, B, x), 32)


@contextmanager
def checked_model_es(pipe, es, lams, w, branches):
    """Model-side ES (scale_model_output) inside a pipeline, checked at every step at the network's input: a spy
    beneath the patched forward keeps the raw outputs, one on the scheduler's step compares the prediction it
    gets (guidance of the rewritten branches) with flow_v of the guidance of the raw ones (guidance is linear).
    ``branches(raw)``: (A, B) of this step's guidance A + w(B − A) from the raw outputs since the last step."""
    model, sched = pipe.transformer, pipe.scheduler
    raw, plain_fwd, plain_step = [], model.forward, sched.step

    def fwd(*args, **kwargs):
        out = plain_fwd(*args, **kwargs)
        raw.append(out[0] if isinstance(out, tuple) else out.sample)
        return out

    def step(v, t, x, *args, **kwargs):
        i = _index(sched, t)
        tt, lam = float(sched.sigmas[i]), float(lams[i])
        A, B = branches(raw)
        g = A + w * (B - A)  # the pipeline's guidance, on the raw outputs
        hand = flow_v(g, x, tt, lam)
        if hand is g:
            assert torch.equal(v, g)
        else:
            atol = guided_tol(v, hand, A, B, g, x, tt, lam, w)
            torch.testing.assert_close(v, hand, rtol=0, atol=atol)
            assert (hand - g).abs().max() > 1e3 * atol
        raw.clear()
        return plain_step(v, t, x, *args, **kwargs)

    fwd.__signature__, step.__signature__ = inspect.signature(plain_fwd), inspect.signature(plain_step)
    model.forward, sched.step = fwd, step
    try:
        with scale_model_output(model, pipe, es) as h:
            yield h
    finally:
        del model.forward, sched.step


@torch.no_grad()
def ref_sd3(pipe, lams, w=5.0):
    """StableDiffusion3Pipeline written out by hand: CFG on the velocity, then v' = (ε̂/λ − x)/(1 − t)."""
    s, tr = pipe.scheduler, pipe.transformer
    pe, npe, pp, npp = pipe.encode_prompt(SD3_KW["prompt"], SD3_KW["prompt"], SD3_KW["prompt"], device="cpu",
                                          do_classifier_free_guidance=True, max_sequence_length=8)
    emb, pooled = torch.cat([npe, pe]), torch.cat([npp, pp])
    x = randn_tensor((1, 4, 8, 8), generator=gen())
    s.set_timesteps(N)
    for i, t in enumerate(s.timesteps):
        out = tr(hidden_states=torch.cat([x, x]), timestep=t.expand(2), encoder_hidden_states=emb,
                 pooled_projections=pooled, return_dict=False)[0]
        u, c = out.chunk(2)
        v = flow_v(u + w * (c - u), x, float(s.sigmas[i]), float(lams[i]))
        x = s.step(v, t, x).prev_sample
    return x


def test_sd3_pipeline(sd3):
    base = run_latents(sd3, **SD3_KW)
    torch.testing.assert_close(base, ref_sd3(sd3, np.ones(N)), rtol=0, atol=0)  # the hand loop is the pipeline
    with apply_epsilon_scaling(sd3, 1.0):
        assert torch.equal(run_latents(sd3, **SD3_KW), base)
    with apply_epsilon_scaling(sd3, LIN):
        post = run_latents(sd3, **SD3_KW)
    with checked_step_es(sd3.scheduler, LIN, LIN.values(N)):  # the hand formula at every step, same run
        assert torch.equal(run_latents(sd3, **SD3_KW), post)
    assert (post - base).abs().max() > 1e-4
    # model side (both CFG branches, before guidance) equals the formula on the guided velocity (guidance is
    # linear), at every step; the checked run is the plain model-side run
    with scale_model_output(sd3.transformer, sd3, LIN):
        pre = run_latents(sd3, **SD3_KW)
    with checked_model_es(sd3, LIN, LIN.values(N), SD3_KW["guidance_scale"], lambda raw: raw[-1].chunk(2)):
        assert torch.equal(run_latents(sd3, **SD3_KW), pre)
    assert (pre - base).abs().max() > 1e-4
    assert torch.equal(run_latents(sd3, **SD3_KW), base)
    # and the whole pipeline, decoder included, runs and stays finite with ES
    with apply_epsilon_scaling(sd3, Uniform(1.05)):
        img = sd3(generator=gen(), output_type="np", **SD3_KW).images
    assert np.isfinite(img).all()
    # other flow schedulers in the same pipeline
    for sched in (FlowMatchHeunDiscreteScheduler(shift=3.0),
                  DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)):
        sd3.scheduler = sched
        b = run_latents(sd3, **SD3_KW)
        with apply_epsilon_scaling(sd3, Uniform(1.0)):
            assert torch.equal(run_latents(sd3, **SD3_KW), b)
        with apply_epsilon_scaling(sd3, Uniform(1.05)):
            e = run_latents(sd3, **SD3_KW)
        assert torch.isfinite(e).all() and (e - b).abs().max() > 1e-4
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


def flux_kw():
    g = gen(3)
    return dict(prompt_embeds=torch.randn(1, 6, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                negative_prompt_embeds=torch.randn(1, 6, 32, generator=g),
                negative_pooled_prompt_embeds=torch.randn(1, 16, generator=g), true_cfg_scale=4.0, guidance_scale=3.5,
                height=16, width=16, num_inference_steps=N)


def test_flux_pipeline(flux):
    """Flux: dynamic shift, guidance embedding and true CFG; ES by hand = the PAPER formula patched into step."""
    kw = flux_kw()
    base = run_latents(flux, **kw)
    with apply_epsilon_scaling(flux, 1.0):
        assert torch.equal(run_latents(flux, **kw), base)
    with apply_epsilon_scaling(flux, LIN, record=True) as h:
        post = run_latents(flux, **kw)
    assert [r.lam for r in h.records] == [1.0, *LIN.values(N)[1:]] and h.records[0].sigma == math.inf
    with checked_step_es(flux.scheduler, LIN, LIN.values(N)):  # the hand formula on the guided velocity
        assert torch.equal(run_latents(flux, **kw), post)
    assert (post - base).abs().max() > 1e-4
    with scale_model_output(flux.transformer, flux, LIN):  # Flux calls the transformer with t/1000
        pre = run_latents(flux, **kw)
    # true CFG: neg + s·(pos − neg), the positive branch evaluated first
    with checked_model_es(flux, LIN, LIN.values(N), kw["true_cfg_scale"], lambda raw: (raw[-1], raw[-2])):
        assert torch.equal(run_latents(flux, **kw), pre)
    assert (pre - base).abs().max() > 1e-4
    assert torch.equal(run_latents(flux, **kw), base)


# ---- zero terminal SNR, v-prediction --------------------------------------------------------------------------
ZSNR = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")


@torch.no_grad()
def vp_latents(unet, sched, lams=None, inf_from=math.inf, first_only=False, seen=None):
    """A latents loop (no decoder). With ``lams`` and ``seen`` (``sched`` under :func:`spied_es`): every call's
    prediction rewritten by hand (λ keyed on the call's σ, 1 at σ = ∞) against the library's rewrite of it."""
    sched.set_timesteps(N)  # first: Euler's init_noise_sigma depends on the grid
    x = randn_tensor((2, 3, 8, 8), generator=gen()) * sched.init_noise_sigma
    vp_table = isinstance(sched, (DDIMScheduler, DDPMScheduler))
    if vp_table:
        abs_ = sched.alphas_cumprod.double()[sched.timesteps.long()].numpy()
        grid = np.sqrt((1 - abs_) / np.where(abs_ > 0, abs_, 1)) + np.where(abs_ > 0, 0, np.inf)
    else:
        grid = sched.sigmas.double().numpy()[: len(sched.timesteps)]
    for t in sched.timesteps:
        out = unet(sched.scale_model_input(x, t), t).sample
        if lams is not None:
            if vp_table:
                ab = float(sched.alphas_cumprod[int(t)].double())
                sig, x_t = (math.inf if ab == 0 else math.sqrt((1 - ab) / ab)), x
            else:
                idx = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
                sig = float(sched.sigmas[idx].double())
                x_t = x.double() / math.sqrt(1 + sig**2) if isinstance(sched, EulerDiscreteScheduler) else x
                ab = 0.0 if sig >= inf_from * (1 - 1e-6) else 1 / (1 + sig**2)
            lam = lam_at(grid, sig, lams, inf_from)
            hand = vp_rewrite(out, x_t, ab, lam, "v")
        x_next = sched.step(out, t, x).prev_sample
        if lams is not None:
            check_rewrite(seen[-1], hand, out, x_t, vp_cond(ab, lam))
        x = x_next
        if first_only:
            return x
    return x


ZS_SCHEDS = {
    "ddim": lambda: DDIMScheduler(clip_sample=False, **ZSNR),
    "ddpm": lambda: DDPMScheduler(clip_sample=False, **ZSNR),
    "euler": lambda: EulerDiscreteScheduler(**ZSNR),
    "dpmsolver": lambda: DPMSolverMultistepScheduler(**ZSNR),
}


@pytest.mark.parametrize("name", list(ZS_SCHEDS))
def test_zero_snr_v_prediction(name, unet_lat):
    make = ZS_SCHEDS[name]
    s = make()
    inf_from = float(np.sqrt((1 - s.alphas_cumprod[-1].double()) / s.alphas_cumprod[-1].double())) \
        if s.alphas_cumprod[-1] > 0 else math.inf
    torch.manual_seed(0)
    base = vp_latents(unet_lat, s)
    with apply_epsilon_scaling(s, 1.0):
        torch.manual_seed(0)
        assert torch.equal(vp_latents(unet_lat, s), base)
    for es in (Uniform(1.05), LIN):
        with apply_epsilon_scaling(s, es, record=True) as h:
            torch.manual_seed(0)
            got = vp_latents(unet_lat, s)
            torch.manual_seed(0)
            first = vp_latents(unet_lat, s, first_only=True)
        assert torch.isfinite(got).all()
        assert h.records[0].sigma == math.inf and h.records[0].lam == 1.0  # the σ = ∞ step (ᾱ = 0 or 2^-24)
        torch.manual_seed(0)
        assert torch.equal(first, vp_latents(unet_lat, make(), first_only=True))  # first step: the baseline's
        s2 = make()
        with spied_es(s2, es) as (_, seen):  # the same ES run, checked at every call against the hand rewrite
            torch.manual_seed(0)
            want = vp_latents(unet_lat, s2, lams=es.values(N), inf_from=inf_from, seen=seen)
        assert torch.equal(got, want)
        assert (got - base).abs().max() > 1e-5


def test_zero_snr_ddim_pipeline(unet_lat):
    u = tiny_unet(seed=9)
    pipe = DDIMPipeline(u, DDIMScheduler(**ZSNR))
    pipe.set_progress_bar_config(disable=True)
    base = pipe(batch_size=2, generator=gen(), num_inference_steps=N, output_type="np").images
    with apply_epsilon_scaling(pipe, 1.0):
        assert np.array_equal(pipe(batch_size=2, generator=gen(), num_inference_steps=N, output_type="np").images, base)
    with apply_epsilon_scaling(pipe, 1.05):
        es = pipe(batch_size=2, generator=gen(), num_inference_steps=N, output_type="np").images
    assert np.isfinite(es).all() and not np.array_equal(es, base)


# ---- EDM and KDPM2 --------------------------------------------------------------------------------------------
def edm_rewrite(F, x, sigma, lam, sd=0.5, kind="epsilon"):
    """EDM preconditioning by hand: D = c_skip·x + c_out·F, ε = (x − D)/σ → ε/λ, back to F."""
    if lam == 1.0:
        return F
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = (1 if kind == "epsilon" else -1) * sigma * sd / math.sqrt(sigma**2 + sd**2)
    x64, f64 = x.double(), F.double()
    D = c_skip * x64 + c_out * f64
    D2 = x64 - (x64 - D) / lam
    return ((D2 - c_skip * x64) / c_out).to(F.dtype)


def edm_cond(sigma, lam, sd=0.5):
    """Terms of edm_rewrite: D = c_skip·x + c_out·F, x − D and D' over λ, D' − c_skip·x, over c_out."""
    c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2)
    return 2 * (1 + c_skip + c_out) * (1 + 1 / lam) / c_out


@torch.no_grad()
def sigma_loop(unet, sched, lams=None, rewrite="eps", seen=None):
    """A sigma-space loop. With ``lams`` and ``seen`` (``sched`` under :func:`spied_es`): every call's prediction
    rewritten by hand (EDM preconditioning or ε/λ, λ keyed on the call's σ) against the library's rewrite."""
    sched.set_timesteps(N)  # first: Euler's init_noise_sigma depends on the grid
    x = randn_tensor((2, 3, 8, 8), generator=gen()) * sched.init_noise_sigma
    grid = sched.sigmas.double().numpy()[: len(sched.timesteps)]
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = unet(inp, t).sample
        if lams is not None:
            i = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
            if isinstance(sched, KDPM2DiscreteScheduler) and not sched.state_in_first_order:
                sig = float(sched.sigmas_interpol[i].double())
            elif isinstance(sched, KDPM2AncestralDiscreteScheduler) and not sched.state_in_first_order:
                sig = float(sched.sigmas_interpol[i - 1].double())
            else:
                sig = float(sched.sigmas[i].double())
            lam = lam_at(grid, sig, lams)
            if rewrite == "edm":
                sd = sched.config.sigma_data
                hand, cond = edm_rewrite(out, x, sig, lam, sd), edm_cond(sig, lam, sd)
            else:
                hand, cond = (out if lam == 1.0 else out / lam), 1 / lam
        x_next = sched.step(out, t, x).prev_sample
        if lams is not None:
            check_rewrite(seen[-1], hand, out, x, cond)
        x = x_next
    return x


SIGMA_SCHEDS = {
    "edm_euler": (lambda: EDMEulerScheduler(), "edm"),
    "edm_dpmsolver": (lambda: EDMDPMSolverMultistepScheduler(), "edm"),
    "kdpm2": (lambda: KDPM2DiscreteScheduler(), "eps"),
    "kdpm2_ancestral": (lambda: KDPM2AncestralDiscreteScheduler(), "eps"),
}


@pytest.mark.parametrize("name", list(SIGMA_SCHEDS))
def test_edm_and_kdpm2_against_hand_loop(name, unet_lat):
    make, rewrite = SIGMA_SCHEDS[name]
    s = make()
    torch.manual_seed(0)  # KDPM2 ancestral draws its noise from the global generator in this loop
    base = sigma_loop(unet_lat, s)
    with apply_epsilon_scaling(s, 1.0):
        torch.manual_seed(0)
        assert torch.equal(sigma_loop(unet_lat, s), base)
    for es in (Uniform(1.03), LIN):
        with apply_epsilon_scaling(s, es, record=True) as h:
            torch.manual_seed(0)
            got = sigma_loop(unet_lat, s)
        s2 = make()
        with spied_es(s2, es) as (_, seen):  # the same ES run, checked at every call against the hand rewrite
            torch.manual_seed(0)
            want = sigma_loop(unet_lat, s2, lams=es.values(N), rewrite=rewrite, seen=seen)
        assert torch.equal(got, want)
        assert (got - base).abs().max() > 1e-4 * float(base.abs().max())
    if name.startswith("kdpm2"):  # 2N − 1 evaluations; the midpoint of step i gets λ_{i+1}
        assert len(h.records) == 2 * N - 1
        assert [r.lam for r in h.records] == [LIN.values(N)[(c + 1) // 2] for c in range(2 * N - 1)]


def x0_rewrite(out, x_t, ab, lam):
    """ε → ε/λ for an x̂_0 output at x_t = sqrt(ᾱ)x_0 + sqrt(1−ᾱ)ε (the hand formula: ε = (x_t − a·x̂_0)/b)."""
    if lam == 1.0:
        return out
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    o, x = out.double(), x_t.double()
    return ((x - b * ((x - a * o) / b) / lam) / a).to(out.dtype)


def call_sigma(sched, t):
    """The σ a σ-space scheduler evaluates the network at for this call (KDPM2's second call: its midpoint)."""
    i = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
    if isinstance(sched, KDPM2DiscreteScheduler) and not sched.state_in_first_order:
        return float(sched.sigmas_interpol[i].double())
    if isinstance(sched, KDPM2AncestralDiscreteScheduler) and not sched.state_in_first_order:
        return float(sched.sigmas_interpol[i - 1].double())
    return float(sched.sigmas[i].double())


# the schedulers that give the network a scaled input (x/sqrt(1+σ²), or EDM's c_in·x), with every prediction type
# each takes: the model route must undo that scaling before it reads the ε of a v / x0 / preconditioned output
INPUT_SCALING = {
    "euler-eps": (EulerDiscreteScheduler, "epsilon"), "euler-v": (EulerDiscreteScheduler, "v_prediction"),
    "euler-x0": (EulerDiscreteScheduler, "sample"), "euler_a-v": (EulerAncestralDiscreteScheduler, "v_prediction"),
    "heun-v": (HeunDiscreteScheduler, "v_prediction"), "heun-x0": (HeunDiscreteScheduler, "sample"),
    "lms-v": (LMSDiscreteScheduler, "v_prediction"), "lms-x0": (LMSDiscreteScheduler, "sample"),
    "kdpm2-v": (KDPM2DiscreteScheduler, "v_prediction"),
    "kdpm2_a-v": (KDPM2AncestralDiscreteScheduler, "v_prediction"),
    "edm_euler-eps": (EDMEulerScheduler, "epsilon"), "edm_euler-v": (EDMEulerScheduler, "v_prediction"),
    "edm_dpmsolver-v": (EDMDPMSolverMultistepScheduler, "v_prediction"),
}


@pytest.mark.parametrize("name", list(INPUT_SCALING))
def test_model_route_on_input_scaling_schedulers(name):
    """scale_model_output wraps the network, which sees the scheduler's *scaled* input; at every call its rewrite
    must equal the hand rewrite at the scheduler's own state (the step route's formula): ε/λ at
    x_t = x/sqrt(1+σ²) for the σ-space family, EDM's preconditioning at the unscaled x for the EDM family."""
    cls, kind = INPUT_SCALING[name]
    sched, model = cls(prediction_type=kind), tiny_unet(in_ch=3, size=8, seed=5)
    edm = cls in (EDMEulerScheduler, EDMDPMSolverMultistepScheduler)
    raw, plain = [], model.forward

    def spy(*args, **kwargs):  # beneath the patch: the network's own output
        out = plain(*args, **kwargs)
        raw.append(out.sample)
        return out

    spy.__signature__ = inspect.signature(plain)
    model.forward = spy
    es, lams = LIN, LIN.values(N)
    sched.set_timesteps(N)
    grid = sched.sigmas.double().numpy()[: len(sched.timesteps)]
    torch.manual_seed(0)  # the ancestral schedulers draw from the global generator in this loop
    x = randn_tensor((2, 3, 8, 8), generator=gen()) * sched.init_noise_sigma
    changed = 0
    with torch.no_grad(), scale_model_output(model, sched, es, record=True) as h:
        for t in sched.timesteps:
            lib = model(sched.scale_model_input(x, t), t).sample
            out, sig = raw.pop(), call_sigma(sched, t)
            lam = lam_at(grid, sig, lams)
            if edm:
                sd = sched.config.sigma_data
                hand, cond, x_ref = edm_rewrite(out, x, sig, lam, sd, kind), edm_cond(sig, lam, sd), x
            else:
                ab, x_ref = 1 / (1 + sig**2), x.double() / math.sqrt(1 + sig**2)
                hand = {"epsilon": lambda: out if lam == 1.0 else out / lam,
                        "v_prediction": lambda: vp_rewrite(out, x_ref, ab, lam, "v"),
                        "sample": lambda: x0_rewrite(out, x_ref, ab, lam)}[kind]()
                cond = vp_cond(ab, lam) if kind != "epsilon" else 1 / lam
            if hand is out:
                assert torch.equal(lib, out)
            else:
                # rewrite_tol, plus, where the rewrite reads x (not ε/λ), the network's input: the scheduler's float32
                # x/sqrt(1+σ²) (or c_in·x), up to 4 float32 roundings (σ², +1, the root or c_in, the product) from the
                # hand's float64 state, carried through the rewrite's condition
                reads_x = edm or kind != "epsilon"
                atol = rewrite_tol(lib, hand, out, x_ref, cond) + reads_x * tol(F32, cond * mag(x_ref), 4)
                torch.testing.assert_close(lib, hand, rtol=0, atol=atol)
                assert (hand - out).abs().max() > 1e3 * atol  # the check is not vacuous
                changed += 1
            x = sched.step(lib, t, x).prev_sample
    assert changed >= N - 1 and len(h.records) >= N  # λ = 1 at the last step only
    assert model.forward is spy  # removed: the network (here: the spy) is called as before


def test_edm_churn_is_refused(unet_lat):
    s = EDMEulerScheduler()
    s.set_timesteps(N)
    x = torch.randn(1, 3, 8, 8) * s.init_noise_sigma
    with apply_epsilon_scaling(s, 1.02):
        with pytest.raises(ValueError, match="s_churn > 0 is not supported"):
            s.step(torch.zeros_like(x), s.timesteps[0], x, s_churn=1.0)


# ---- refusals: one clear line ----------------------------------------------------------------------------------
def test_refusals_name_the_fix():
    flow_cfg = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    with pytest.raises(ValueError, match="built from a flow-matching scheduler's config.*FlowMatchEulerDiscreteScheduler"):
        apply_epsilon_scaling(DDIMScheduler.from_config(flow_cfg), 1.01)
    with pytest.raises(ValueError, match="does not support FlowMatchLCMScheduler.*FlowMatchEulerDiscreteScheduler"):
        apply_epsilon_scaling(diffusers.FlowMatchLCMScheduler(), 1.01)
    with pytest.raises(ValueError, match="does not support TCDScheduler.*DDIMScheduler"):
        apply_epsilon_scaling(diffusers.TCDScheduler(), 1.01)
    with pytest.raises(ValueError, match="v-prediction is defined for VP processes"):
        apply_epsilon_scaling(DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="v_prediction"), 1.01)
    with pytest.raises(ValueError, match="use_flow_sigmas=True"):
        apply_epsilon_scaling(DPMSolverMultistepScheduler(prediction_type="flow_prediction"), 1.01)
    with pytest.raises(ValueError, match="finite and > 0"):
        apply_epsilon_scaling(FlowMatchEulerDiscreteScheduler(), 0.0)
    with pytest.raises(ValueError, match="invert_sigmas=True"):
        apply_epsilon_scaling(FlowMatchEulerDiscreteScheduler(invert_sigmas=True), 1.01)
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(N)
    x = torch.zeros(1, 4)
    with apply_epsilon_scaling(s, 1.02):
        with pytest.raises(ValueError, match="per_token_timesteps"):
            s.step(x, s.timesteps[0], x, per_token_timesteps=torch.ones(1, 4))


def test_unet_loader_refuses_a_flow_scheduler_config(tmp_path):
    from diffusion_es.models.diffusers_unet import load_diffusers_unet

    tiny_unet(seed=3).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="is a flow-matching one.*FlowDenoiser"):
        load_diffusers_unet(tmp_path / "unet", scheduler=dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config))
    zs = load_diffusers_unet(tmp_path / "unet", scheduler=DDIMScheduler(**ZSNR))  # zero SNR: ᾱ_T = 0 reproduced
    assert zs.schedule.zero_snr and zs.prediction == "v"


def test_schedulers_swapped_with_from_config_across_families():
    """from_config keeps the keys of the config it came from. A VP scheduler from a flow config is refused, unless it
    is switched to flow sigmas (DPM-Solver / UniPC / DEIS with use_flow_sigmas=True, prediction_type='flow_prediction':
    the docs' swap idiom, which was refused); a flow scheduler from a VP config is refused (it read an ε-model's
    output as a velocity, with exit 0); a flow scheduler from a flow DPM-Solver config (Sana's) is accepted."""
    sd3_cfg = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False).config
    flow_kw = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    for cls in (DPMSolverMultistepScheduler, UniPCMultistepScheduler, DEISMultistepScheduler):
        swapped, direct = cls.from_config(sd3_cfg, **flow_kw), cls(**flow_kw)
        runs = []
        for s in (swapped, direct):
            with apply_epsilon_scaling(s, LIN, record=True) as h:
                runs.append((flow_loop(s), [(r.sigma, r.lam) for r in h.records]))
        assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1], cls.__name__
    with pytest.raises(ValueError, match="built from a flow-matching scheduler's config"):
        apply_epsilon_scaling(DPMSolverMultistepScheduler.from_config(sd3_cfg), 1.01)
    sd15 = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                         clip_sample=False, set_alpha_to_one=False).config
    for cls in (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler):
        with pytest.raises(ValueError, match="built from a VP scheduler's config .*beta_start.*DDIMScheduler"):
            apply_epsilon_scaling(cls.from_config(sd15), 1.01)
    sana = DPMSolverMultistepScheduler(beta_start=0.0002, **flow_kw).config
    s = FlowMatchEulerDiscreteScheduler.from_config(sana, shift=3.0)
    with apply_epsilon_scaling(s, LIN):
        assert torch.isfinite(flow_loop(s)).all()
