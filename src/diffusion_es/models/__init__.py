"""Small denoising networks (residual MLP, UNet) and their checkpoints.

``net(x_t, t) -> prediction``: x_t float32 (B, C, H, W) or (B, D), t float32 (B,) continuous in [0, T-1];
the output has x_t's shape, or 2C channels (ε then ADM's variance value) with learned variance.
"""

from .checkpoint import LoadedModel, build_model, diffusion_config, load_model, read_config, save_checkpoint
from .config import ModelConfig
from .mlp import ResMLP, timestep_embedding
from .unet import UNet

__all__ = ["ModelConfig", "ResMLP", "UNet", "timestep_embedding", "build_model", "diffusion_config",
           "save_checkpoint", "read_config", "load_model", "LoadedModel"]
