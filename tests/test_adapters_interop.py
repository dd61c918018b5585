"""A diffusers UNet2DModel saved on disk, used as our denoiser with our samplers.

The comparison with diffusers' own DDIMPipeline runs in float64 on both sides (float64 UNet, float64 ᾱ for the
scheduler's step arithmetic), fed the float32 noise diffusers draws for a float32 UNet: our per-seed noise must
be exactly that, and the two DDIM formulations then agree to float64 rounding on any CPU.
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notices inside diffusers

import diffusers.pipelines.ddim.pipeline_ddim as pipeline_ddim  # noqa: E402
from diffusers import DDIMPipeline, DDIMScheduler  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from diffusion_es.adapters.diffusers import apply_epsilon_scaling
from diffusion_es.models.diffusers_unet import load_diffusers_unet  # noqa: E402
from diffusion_es.core.param import VPDenoiser  # noqa: E402
from diffusion_es.samplers import sample  # noqa: E402
from diffusion_es.core.scaling import Uniform  # noqa: E402

from _tiny_diffusers import tiny_unet  # noqa: E402
from _tol import F32, F64, loop_tol  # noqa: E402

N = 5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddim_pipe")
    pipe = DDIMPipeline(tiny_unet(seed=11), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(d)
    pipe.unet.to(F64)
    s = pipe.scheduler  # diffusers computes a step's coefficients from its float32 table in float32
    s.alphas_cumprod, s.final_alpha_cumprod = s.alphas_cumprod.double(), s.final_alpha_cumprod.double()
    return d, pipe


def to_images(x):
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def pipe_images(pipe, seeds, monkeypatch):
    # the float32 draws diffusers makes for a float32 UNet, cast (exactly) to the float64 UNet's dtype
    monkeypatch.setattr(pipeline_ddim, "randn_tensor",
                        lambda shape, **kw: randn_tensor(shape, **{**kw, "dtype": F32}).to(kw["dtype"]))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(batch_size=len(seeds), generator=gens, num_inference_steps=N, eta=0.0,
                use_clipped_model_output=True, output_type="np").images


@pytest.mark.parametrize("where", ["pipeline", "unet"])
def test_our_ddim_matches_ddim_pipeline(saved, where, monkeypatch):
    d, pipe = saved
    path = d if where == "pipeline" else d / "unet"  # the UNet folder finds ../scheduler by itself
    den = load_diffusers_unet(path, dtype=F64)
    assert isinstance(den, VPDenoiser) and den.prediction == "eps" and not den.learned_variance
    np.testing.assert_allclose(den.schedule.alphas_cumprod, pipe.scheduler.alphas_cumprod.double().numpy(),
                               rtol=1e-12, atol=0)
    seeds = [0, 1]
    ours = sample(den, "ddim", N, (3, 8, 8), seeds, spacing="leading", clip=True)
    # images in [0, 1]; the two DDIM formulations (σ-space, VP) differ by a few roundings per step, grown by up to
    # 1/√ᾱ where x0 is predicted, carried through the later UNet calls
    atol = loop_tol(F64, 1.0, N, cond=1 / float(pipe.scheduler.alphas_cumprod.min()) ** 0.5)
    np.testing.assert_allclose(to_images(ours), pipe_images(pipe, seeds, monkeypatch), atol=atol, rtol=0)
    # and with Epsilon Scaling on both sides
    ours_es = sample(den, "ddim", N, (3, 8, 8), seeds, spacing="leading", clip=True, es=Uniform(1.02))
    with apply_epsilon_scaling(pipe, 1.02):
        theirs_es = pipe_images(pipe, seeds, monkeypatch)
    np.testing.assert_allclose(to_images(ours_es), theirs_es, atol=atol, rtol=0)
    assert np.abs(to_images(ours_es) - to_images(ours)).max() > 1e-4


def test_prediction_type_and_learned_variance_from_config(tmp_path):
    unet = tiny_unet(out_ch=6, seed=12)
    unet.save_pretrained(tmp_path / "u")
    (tmp_path / "u" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2",
         "num_train_timesteps": 100}))
    den = load_diffusers_unet(tmp_path / "u")
    assert den.prediction == "v" and den.learned_variance and den.schedule.T == 100
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    D, extras = den.forward_full(x, 1.0)
    assert D.shape == x.shape and extras["var_values"].shape == x.shape


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_diffusers_unet(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        load_diffusers_unet(tmp_path)
