"""Training: losses for every parameterisation and the resumable training loop with EMA."""

from .train import TrainConfig, train

__all__ = ["TrainConfig", "train"]
