"""Epsilon Scaling inside diffusers pipelines (tiny random models built offline from configs).

The models run in float64 (``DT``): the tests compare a patched pipeline with the same loop written out by hand,
and in float64 the rounding either side adds (~1e-13 after the networks, see ``close``) is many orders below the
smallest effect of Epsilon Scaling they check (1e-4), on any CPU and thread count. That float32 models (the usual
case) stay float32 through every route is checked on its own (``test_float32_models_stay_float32``).
"""

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notices inside diffusers
pytest.importorskip("transformers")

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
    LDMPipeline, LMSDiscreteScheduler, StableDiffusionPipeline, UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from diffusion_es.adapters.diffusers import (  # noqa: E402
    apply_epsilon_scaling, require_diffusers, scale_model_output,
)
from diffusion_es.core.scaling import Linear, PerStep, Uniform  # noqa: E402

from _tiny_diffusers import tiny_clip, tiny_dit, tiny_unet, tiny_vae, tiny_vq  # noqa: E402
from _tol import F32, F64, loop_tol, tol  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
N = 4  # sampling steps everywhere
LIN = Linear(0.01, 1.0)  # λ = 1.03, 1.02, 1.01, 1.00 over 4 steps: exercises the λ = 1 short cut too
DT = F64


def close(a, b, scale=1.0, cond=1.0, f32=0):
    """``a`` and ``b`` (a patched pipeline and its loop written out) equal up to the float64 rounding of an N-step
    loop on values of size ``scale`` (grown by the condition ``cond``; the decoders count as one more step), plus
    ``f32`` float32 roundings where the computation rounds to float32 on the way, and one where a pipeline hands
    back float32 (diffusers' image processor casts its images to float32)."""
    if np.float32 in (np.asarray(a).dtype, np.asarray(b).dtype):
        f32 += 1
    atol = loop_tol(F64, scale, N + 1, cond=cond) + tol(F32, scale, f32)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def lam_of_step(schedule, n=N):
    return schedule.values(n)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _ldm_noise_in_model_dtype(monkeypatch):
    """LDMPipeline draws its noise in float32 whatever its models' dtype (every other pipeline here draws it in
    the model's dtype); make it draw in ``DT`` so its latents are float64 from the start."""
    monkeypatch.setattr(sys.modules[LDMPipeline.__module__], "randn_tensor",
                        lambda *a, **kw: randn_tensor(*a, **{**kw, "dtype": DT}))


@pytest.fixture(scope="module")
def unet():
    return tiny_unet().to(DT)


@pytest.fixture(scope="module")
def unet_lat():
    return tiny_unet(in_ch=3, size=8, seed=5).to(DT)


def _quiet(p):
    p.set_progress_bar_config(disable=True)
    return p


def ddpm_pipe(unet):
    return _quiet(DDPMPipeline(unet, DDPMScheduler()))


def ddim_pipe(unet):
    return _quiet(DDIMPipeline(unet, DDIMScheduler()))


def ldm_pipe(unet_lat, scheduler=None):
    return _quiet(LDMPipeline(tiny_vq().to(DT), unet_lat, scheduler or DDIMScheduler()))


# ---- reference loops: the pipelines written out by hand, dividing the (guided) ε by λ -------------------------
@torch.no_grad()
def ref_ddpm(pipe, lams, B=2):
    g, s, u = gen(), pipe.scheduler, pipe.unet
    x = randn_tensor((B, 3, 8, 8), generator=g, dtype=u.dtype)
    s.set_timesteps(N)
    for i, t in enumerate(s.timesteps):
        eps = u(x, t).sample
        x = s.step(eps / float(lams[i]), t, x, generator=g).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def ref_ddim(pipe, lams, B=2):
    g, s, u = gen(), pipe.scheduler, pipe.unet
    x = randn_tensor((B, 3, 8, 8), generator=g, dtype=u.dtype)
    s.set_timesteps(N)
    for i, t in enumerate(s.timesteps):
        eps = u(x, t).sample
        x = s.step(eps / float(lams[i]), t, x, eta=0.0, generator=g).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def ref_ldm(pipe, lams, B=2, calls=None):
    """LDMPipeline by hand; ``calls`` gives λ per network evaluation (Heun: 2N-1), else ``lams`` per step."""
    g, s, u = gen(), pipe.scheduler, pipe.unet
    x = randn_tensor((B, 3, 8, 8), generator=g, dtype=u.dtype) * s.init_noise_sigma
    s.set_timesteps(N)
    kw = {"eta": 0.0} if "eta" in inspect.signature(s.step).parameters else {}
    for i, t in enumerate(s.timesteps):
        eps = u(s.scale_model_input(x, t), t).sample
        lam = calls[i] if calls is not None else lams[i]
        x = s.step(eps / float(lam), t, x, **kw).prev_sample
    img = pipe.vqvae.decode(x / pipe.vqvae.config.scaling_factor).sample
    return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def run(pipe, **kw):
    kw.setdefault("num_inference_steps", N)
    return pipe(generator=gen(), output_type="np", **kw).images


# ---- the unconditional pipelines ------------------------------------------------------------------------------
PIPES = {
    "ddpm": (lambda u, ul: ddpm_pipe(u), ref_ddpm, {"batch_size": 2}),
    "ddim": (lambda u, ul: ddim_pipe(u), ref_ddim, {"batch_size": 2}),
    "ldm": (lambda u, ul: ldm_pipe(ul), ref_ldm, {"batch_size": 2}),
}


@pytest.mark.parametrize("name", list(PIPES))
def test_unconditional_pipelines(name, unet, unet_lat):
    make, ref, kw = PIPES[name]
    pipe = make(unet, unet_lat)
    sched = pipe.scheduler
    base = run(pipe, **kw)
    # λ = 1: bit-identical to the unpatched pipeline
    with apply_epsilon_scaling(pipe, Uniform(1.0)):
        assert np.array_equal(run(pipe, **kw), base)
    # λ != 1 (uniform and linear): the hand-written loop that divides ε by λ
    for schedule in (Uniform(1.02), LIN):
        h = apply_epsilon_scaling(pipe, schedule)
        es = run(pipe, **kw)
        h.remove()
        expected = ref(pipe, lam_of_step(schedule))
        close(es, expected)  # images in [0, 1]
        assert np.abs(es - base).max() > 1e-4  # ES did change the images
    # removed: the scheduler's step is the original again and the images are the baseline
    assert "step" not in sched.__dict__ and sched.step == type(sched).step.__get__(sched)
    assert np.array_equal(run(pipe, **kw), base)


def test_step_signature_stays_visible(unet_lat):
    sched = DDIMScheduler()
    orig = sched.step
    params = set(inspect.signature(orig).parameters)
    with apply_epsilon_scaling(sched, 1.01) as h:
        assert set(inspect.signature(sched.step).parameters) == params
        assert {"eta", "generator", "use_clipped_model_output"} <= params
        assert sched.step is not orig and h.active
    assert sched.step == orig and not h.active
    h.remove()  # a second remove is a no-op



def test_replacing_the_pipelines_scheduler_detaches_the_patch(unet):
    """``pipe.scheduler = ...`` after ES runs the new scheduler without ES: the handle says so instead of
    claiming to be active, the model route refuses to run with the old scheduler's λ, and remove() still restores
    the old scheduler."""
    pipe = ddim_pipe(unet)
    old = pipe.scheduler
    h = apply_epsilon_scaling(pipe, 1.02)
    assert h.active and h.detached is None and "(active)" in repr(h)
    pipe.scheduler = DDIMScheduler.from_config(old.config)
    assert not h.active and "scheduler was replaced" in h.detached and "detached" in repr(h)
    assert "step" in old.__dict__  # still patched until removed
    h.remove()
    assert "step" not in old.__dict__ and not h.active and "(removed)" in repr(h)
    # applied to a scheduler directly there is no pipeline to watch
    with apply_epsilon_scaling(old, 1.02) as h2:
        assert h2.active and h2.detached is None

    pipe = ddim_pipe(unet)
    hm = scale_model_output(pipe.unet, pipe, 1.02)
    assert hm.active
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert not hm.active
    with pytest.raises(RuntimeError, match="scheduler was replaced.*scale_model_output again"):
        run(pipe, batch_size=2)
    hm.remove()
    assert "forward" not in pipe.unet.__dict__


# ---- λ per network evaluation: Heun (two calls per interval) and multistep DPM-Solver++ ----------------------
@pytest.mark.parametrize("make", [
    lambda: HeunDiscreteScheduler(),
    lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
    lambda: EulerDiscreteScheduler(),
    lambda: UniPCMultistepScheduler(),
], ids=["heun", "dpmsolver++", "euler", "unipc"])
def test_lambda_of_each_sigma(make, unet_lat):
    pipe = ldm_pipe(unet_lat, make())
    sched = pipe.scheduler
    lams = lam_of_step(LIN)
    with apply_epsilon_scaling(pipe, LIN, record=True) as h:
        es = run(pipe, batch_size=2)
    sched.set_timesteps(N)
    sig = sched.sigmas.double().numpy()
    heun = isinstance(sched, HeunDiscreteScheduler)
    n_calls = 2 * N - 1 if heun else N
    assert len(h.records) == n_calls
    # the step of each call: Heun evaluates at σ0, σ1, σ1, σ2, σ2, ... (the correction at σ_{i+1} gets λ_{i+1})
    step_of_call = [(c + 1) // 2 for c in range(n_calls)] if heun else list(range(N))
    assert [r.sigma for r in h.records] == list(sig[:n_calls])  # the scheduler's own table entries
    assert [r.lam for r in h.records] == [lams[i] for i in step_of_call]
    expected = ref_ldm(pipe, lams, calls=[lams[i] for i in step_of_call])
    close(es, expected)


def test_rebinds_after_set_timesteps(unet_lat):
    pipe = ldm_pipe(unet_lat, DDIMScheduler())
    with apply_epsilon_scaling(pipe, LIN, record=True) as h:
        run(pipe, batch_size=1, num_inference_steps=3)
        first = [r.lam for r in h.records]
        h.records.clear()
        run(pipe, batch_size=1, num_inference_steps=5)
        assert first == list(LIN.values(3)) and [r.lam for r in h.records] == list(LIN.values(5))


# ---- v- and x0-prediction: the same sampler on an equivalent network --------------------------------------
def as_prediction(unet, scheduler, kind):
    """A copy of an ε-UNet that predicts x0 or v instead, exactly equivalently (ᾱ of the noise level the
    scheduler evaluates at: ``alphas_cumprod[t]`` for DDIM, ``1/(1+σ²)`` of its σ table otherwise)."""
    import copy

    other = copy.deepcopy(unet)
    inner = other.forward

    def alpha_bar(t):
        s = scheduler
        if isinstance(s, (DDIMScheduler, DDPMScheduler)):
            return s.alphas_cumprod[int(t)].double()
        idx = s.step_index if s.step_index is not None else s.index_for_timestep(t)
        return 1.0 / (1.0 + s.sigmas[idx].double() ** 2)

    def forward(x_t, t, *args, **kw):
        out = inner(x_t, t, *args, **kw)
        eps, ab = out.sample.double(), alpha_bar(t)
        x0 = (x_t.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
        pred = x0 if kind == "sample" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
        out.sample = pred.to(out.sample.dtype)
        return out

    other.forward = forward
    return other


@torch.no_grad()
def latents_loop(unet, sched, B=2):
    """The LDM loop without the (quantizing) VQ decoder, so float32 round-off cannot flip a code."""
    x = randn_tensor((B, 3, 8, 8), generator=gen(), dtype=unet.dtype) * sched.init_noise_sigma
    sched.set_timesteps(N)
    for t in sched.timesteps:
        x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x.numpy()


def float64_tables(sched):
    """diffusers keeps ᾱ and σ in float32 and computes a step's coefficients from them in float32. Those roundings
    cancel when a pipeline is compared with its own loop, but not between an ε and a v/x0 scheduler, which
    convert with different coefficients; with float64 tables the whole step runs in float64."""
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    if hasattr(sched, "sigmas"):  # init_noise_sigma reads them before set_timesteps
        sched.sigmas = sched.sigmas.double()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    orig = sched.set_timesteps

    def set_timesteps(*args, **kwargs):
        orig(*args, **kwargs)
        if hasattr(sched, "sigmas"):
            sched.sigmas = sched.sigmas.double()

    sched.set_timesteps = set_timesteps
    return sched


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
@pytest.mark.parametrize("cls", [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler,
                                 HeunDiscreteScheduler], ids=["ddim", "euler", "dpmsolver", "heun"])
def test_v_and_x0_match_eps(kind, cls, unet_lat):
    extra = {"clip_sample": False} if cls is DDIMScheduler else {}
    s_eps, s_other = float64_tables(cls(**extra)), float64_tables(cls(prediction_type=kind, **extra))
    other = as_prediction(unet_lat, s_other, kind)
    base = latents_loop(unet_lat, s_eps)
    for schedule in (Uniform(1.0), Uniform(1.03), LIN):
        with apply_epsilon_scaling(s_eps, schedule):
            a = latents_loop(unet_lat, s_eps)
        with apply_epsilon_scaling(s_other, schedule):
            b = latents_loop(other, s_other)
        # x0 = (x - √(1-ᾱ)ε)/√ᾱ and back: roundings grow by up to 1/√ᾱ at the noisiest level. Euler casts its
        # state to float32 at every step, which the ε and the v/x0 conversion see differently: one rounding per
        # step and side, carried through the later steps (growth allowance 4)
        close(a, b, scale=np.abs(a).max(), cond=1 / float(s_eps.alphas_cumprod.min()) ** 0.5,
              f32=2 * N * 4 if cls is EulerDiscreteScheduler else 0)
    assert np.abs(a - base).max() > 1e-3 * np.abs(base).max()  # ES did change the result


def test_float32_models_stay_float32():
    """The comparisons here run float64 models; a float32 model (the usual case) keeps float32 through the step
    route (ε, v and x0; DDPM- and σ-space schedulers) and the model route (learned variance)."""
    u = tiny_unet(in_ch=3, size=8, seed=5)
    for cls in (DDIMScheduler, EulerDiscreteScheduler):
        for kind in ("epsilon", "v_prediction", "sample"):
            s = cls(prediction_type=kind)
            with apply_epsilon_scaling(s, LIN):
                x = latents_loop(u, s, B=1)
            assert x.dtype == np.float32 and np.isfinite(x).all(), (cls.__name__, kind)
    lv = tiny_unet(out_ch=6, seed=7)
    pipe = _quiet(DDPMPipeline(lv, DDPMScheduler(variance_type="learned_range")))
    with scale_model_output(lv, pipe, LIN):
        assert run(pipe, batch_size=1).dtype == np.float32


# ---- learned variance: only the first C channels are scaled ----------------------------------------------
def test_learned_variance_ddpm_and_model_route():
    u = tiny_unet(out_ch=6, seed=7).to(DT)
    pipe = _quiet(DDPMPipeline(u, DDPMScheduler(variance_type="learned_range")))
    base = run(pipe, batch_size=2)
    with apply_epsilon_scaling(pipe, 1.02):
        es = run(pipe, batch_size=2)

    @torch.no_grad()
    def ref():
        g, s = gen(), pipe.scheduler
        x = randn_tensor((2, 3, 8, 8), generator=g, dtype=u.dtype)
        s.set_timesteps(N)
        for t in s.timesteps:
            out = u(x, t).sample
            out = torch.cat([out[:, :3] / 1.02, out[:, 3:]], 1)
            x = s.step(out, t, x, generator=g).prev_sample
        return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    close(es, ref())
    with scale_model_output(u, pipe, 1.02) as h:
        close(run(pipe, batch_size=2), es)
    assert "forward" not in u.__dict__ and not h.active
    assert np.array_equal(run(pipe, batch_size=2), base)


# ---- classifier-free guidance: DiT and a Stable-Diffusion-style pipeline --------------------------------------
@pytest.fixture(scope="module")
def dit_pipe():
    return _quiet(DiTPipeline(tiny_dit().to(DT), tiny_vae().to(DT), DDIMScheduler()))


@torch.no_grad()
def ref_dit(pipe, lams, labels, w):
    g, s, tr = gen(), pipe.scheduler, pipe.transformer
    B, C = len(labels), tr.config.in_channels
    lat = randn_tensor((B, C, 8, 8), generator=g, dtype=tr.dtype)
    x = torch.cat([lat, lat])
    cl = torch.cat([torch.tensor(labels), torch.tensor([1000] * B)])
    s.set_timesteps(N)
    for i, t in enumerate(s.timesteps):
        x = torch.cat([x[:B], x[:B]])
        out = tr(x, timestep=t[None].expand(2 * B), class_labels=cl).sample
        cond, uncond = out[:, :C].split(B)
        guided = uncond + w * (cond - uncond)
        x = s.step(torch.cat([guided, guided]) / float(lams[i]), t, x).prev_sample
    img = pipe.vae.decode(x[:B] / pipe.vae.config.scaling_factor).sample
    return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_dit_pipeline(dit_pipe):
    kw = {"class_labels": [1, 2], "guidance_scale": 3.0}
    base = run(dit_pipe, **kw)
    with apply_epsilon_scaling(dit_pipe, 1.0):
        assert np.array_equal(run(dit_pipe, **kw), base)
    with apply_epsilon_scaling(dit_pipe, LIN):
        post = run(dit_pipe, **kw)
    close(post, ref_dit(dit_pipe, lam_of_step(LIN), [1, 2], 3.0))
    assert np.abs(post - base).max() > 1e-4
    # pre-guidance (model side, learned-σ output: only the ε channels) equals post-guidance for plain CFG
    with scale_model_output(dit_pipe.transformer, dit_pipe, LIN):
        pre = run(dit_pipe, **kw)
    close(pre, post)
    assert np.array_equal(run(dit_pipe, **kw), base)


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    tok, enc = tiny_clip(tmp_path_factory.mktemp("clip"))
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)
    return _quiet(StableDiffusionPipeline(vae=tiny_vae().to(DT), text_encoder=enc.to(DT), tokenizer=tok,
                                          unet=tiny_unet(4, size=8, seed=6, cond_dim=16).to(DT), scheduler=sched,
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False))


@torch.no_grad()
def ref_sd(pipe, lams, prompt, w):
    g, s, u = gen(), pipe.scheduler, pipe.unet
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
    emb = torch.cat([uncond, cond])
    x = randn_tensor((1, 4, 8, 8), generator=g, dtype=u.dtype) * s.init_noise_sigma
    s.set_timesteps(N)
    for i, t in enumerate(s.timesteps):
        inp = s.scale_model_input(torch.cat([x, x]), t)
        e_u, e_c = u(inp, t, encoder_hidden_states=emb).sample.chunk(2)
        x = s.step((e_u + w * (e_c - e_u)) / float(lams[i]), t, x, eta=0.0, generator=g).prev_sample
    return x.numpy()


def test_stable_diffusion_style_pipeline(sd_pipe):
    kw = {"prompt": "a photo of a cat", "guidance_scale": 5.0, "height": 16, "width": 16}
    base = run(sd_pipe, **kw)
    with apply_epsilon_scaling(sd_pipe, Uniform(1.0)):
        assert np.array_equal(run(sd_pipe, **kw), base)
    with apply_epsilon_scaling(sd_pipe, LIN):
        post = run(sd_pipe, **kw)
        lat = sd_pipe(generator=gen(), output_type="latent", num_inference_steps=N, **kw).images.numpy()
    close(lat, ref_sd(sd_pipe, lam_of_step(LIN), kw["prompt"], 5.0), scale=np.abs(lat).max())  # latents
    assert np.abs(post - base).max() > 1e-5
    with scale_model_output(sd_pipe.unet, sd_pipe, LIN):
        pre = run(sd_pipe, **kw)
    close(pre, post)
    assert np.array_equal(run(sd_pipe, **kw), base)


def test_guidance_rescale_separates_the_two_routes_only_for_v_prediction(sd_pipe):
    """docs/diffusers.md: scaling before guidance (model route) equals the scheduler route for ε-prediction even
    with guidance_rescale (homogeneous in ε), but not for v-prediction, where the std rescaling meets an affine
    ε → v map."""
    kw = {"prompt": "a photo of a cat", "guidance_scale": 5.0, "guidance_rescale": 0.7, "height": 16, "width": 16}
    old = sd_pipe.scheduler
    try:
        gaps = {}
        for pred in ("epsilon", "v_prediction"):
            sd_pipe.scheduler = DDIMScheduler.from_config(old.config, prediction_type=pred)
            base = run(sd_pipe, **kw)
            with apply_epsilon_scaling(sd_pipe, LIN):
                post = run(sd_pipe, **kw)
            with scale_model_output(sd_pipe.unet, sd_pipe, LIN):
                pre = run(sd_pipe, **kw)
            effect = np.abs(post - base).max()
            assert effect > 1e-3
            if pred == "epsilon":
                close(pre, post)
            gaps[pred] = np.abs(pre - post).max() / effect
        assert gaps["v_prediction"] > 0.05, gaps  # a difference a reader would see, not round-off
    finally:
        sd_pipe.scheduler = old


# ---- errors and the optional dependency --------------------------------------------------------------------
def test_clear_errors(unet_lat):
    with pytest.raises(ValueError, match="does not support LCMScheduler.*supported schedulers.*DDIMScheduler"):
        apply_epsilon_scaling(diffusers.LCMScheduler(), 1.01)
    with pytest.raises(ValueError, match="prediction type 'flow_prediction'.*flow-matching scheduler"):
        apply_epsilon_scaling(DDIMScheduler(prediction_type="flow_prediction"), 1.01)
    with pytest.raises(TypeError, match="pipeline or scheduler"):
        apply_epsilon_scaling(object(), 1.01)
    with pytest.raises(TypeError, match="LambdaSchedule or a number"):
        apply_epsilon_scaling(DDIMScheduler(), "1.01")
    with pytest.raises(ValueError, match="finite and > 0"):
        apply_epsilon_scaling(DDIMScheduler(), -1.0)
    s = DDIMScheduler()
    with apply_epsilon_scaling(s, 1.01):
        with pytest.raises(RuntimeError, match="already applied"):
            apply_epsilon_scaling(s, 1.02)
    pipe = ldm_pipe(unet_lat)
    with apply_epsilon_scaling(pipe, PerStep([1.01, 1.02])):
        with pytest.raises(ValueError, match="2 values but the sampler runs 4 steps"):
            run(pipe, batch_size=1)
    # both routes at once divided ε by λ twice, silently
    with apply_epsilon_scaling(s, 1.01):
        with pytest.raises(RuntimeError, match=r"already scales this scheduler's step.*twice \(λ²\)"):
            scale_model_output(unet_lat, s, 1.01)
    with scale_model_output(unet_lat, s, 1.01):
        with pytest.raises(RuntimeError, match=r"already scales a model's output for this scheduler.*twice"):
            apply_epsilon_scaling(s, 1.01)
    with apply_epsilon_scaling(s, 1.01), scale_model_output(unet_lat, DDIMScheduler(), 1.01):
        pass  # another scheduler's model route is no conflict
    h = apply_epsilon_scaling(s, 1.01)
    s.step = lambda *a, **k: None  # someone patched over it
    with pytest.raises(RuntimeError, match="replaced after Epsilon Scaling"):
        h.remove()
    del s.step


def test_all_sigma_space_and_multistep_schedulers_run(unet_lat):
    for cls in (EulerAncestralDiscreteScheduler, LMSDiscreteScheduler):
        s = cls()

        def go():
            torch.manual_seed(0)  # Euler ancestral draws its step noise from the global generator in this loop
            return latents_loop(unet_lat, s, B=1)

        base = go()
        with apply_epsilon_scaling(s, 1.0):
            assert np.array_equal(go(), base)
        with apply_epsilon_scaling(s, 1.02):
            assert np.abs(go() - base).max() > 1e-3 * np.abs(base).max()
        assert np.array_equal(go(), base)


def test_missing_extra_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install 'diffusion-es\[diffusers\]'"):
        require_diffusers()


def test_core_and_adapters_import_without_diffusers():
    code = ("import sys; import diffusion_es, diffusion_es.adapters, diffusion_es.adapters.diffusers, "
            "diffusion_es.adapters.kdiffusion, diffusion_es.adapters.adm; "
            "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
