"""diffusion-es: find and fix exposure bias in diffusion models.

Public API (see the README for a tour):

* schedules: :class:`VPSchedule`, :func:`respace`, :func:`karras_sigmas`
* parameterisations: :mod:`diffusion_es.param` (eps / x0 / v, VP <-> sigma space, network -> denoiser)
* Epsilon Scaling: :class:`Uniform`, :class:`Linear`, :class:`PerStep`, :class:`SigmaKeyed`, :func:`epsilon_scaled`
* samplers: :func:`sample_ddpm`, :func:`sample_ddim`, :func:`sample_euler`, :func:`sample_heun`
"""

__version__ = "0.1.0"
