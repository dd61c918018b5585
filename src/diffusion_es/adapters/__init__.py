"""Epsilon Scaling for the models people already run (imported lazily; diffusers is optional).

* :mod:`.diffusers`: :func:`apply_epsilon_scaling` (scheduler side, after guidance), :func:`scale_model_output`
  (model side); :func:`load_diffusers_unet` (a saved UNet2DModel as our denoiser) lives in
  :mod:`diffusion_es.models.diffusers_unet` and is re-exported here. Needs
  ``pip install diffusion-es[diffusers]``.
* :mod:`.kdiffusion`: :class:`EpsilonScaledDenoiser` for EDM / k-diffusion denoisers ``model(x, sigma)``.
* :mod:`.adm`: :class:`EpsilonScaledEpsNet` for ADM / guided-diffusion ε networks ``model(x_t, t)``.
"""

from importlib import import_module

__all__ = [
    "apply_epsilon_scaling",
    "scale_model_output",
    "load_diffusers_unet",
    "EpsilonScalingHandle",
    "EpsilonScaledDenoiser",
    "EpsilonScaledEpsNet",
]

_WHERE = {
    "apply_epsilon_scaling": ".diffusers",
    "scale_model_output": ".diffusers",
    "load_diffusers_unet": "..models.diffusers_unet",
    "EpsilonScalingHandle": ".diffusers",
    "EpsilonScaledDenoiser": ".kdiffusion",
    "EpsilonScaledEpsNet": ".adm",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
