"""The bottom layer: noise schedules, parameterisations (every conversion, once) and Epsilon Scaling itself.

Nothing here imports from another layer of the package except :mod:`diffusion_es.errors`."""
