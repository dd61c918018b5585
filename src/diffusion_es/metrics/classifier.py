"""A small CNN digit classifier whose penultimate-layer features give "FD-digits" / "FD-mnist".

Inception-v3 features mean little for 8x8 or 28x28 grey digits, so (as is common practice for small images)
we measure the Fréchet distance in the feature space of a classifier trained on the same data. The classifier is
trained deterministically by :func:`diffusion_es.training.feature_net.train_feature_net` (fixed seed, explicit
generators, one thread, deterministic algorithms), and shipped as safetensors with a JSON card in
``diffusion_es/assets/features/``.

Architecture (``in_size`` = 8 for digits, 28 for MNIST; images are 1 x in_size x in_size in [-1, 1])::

    conv3x3(1->32) ReLU  [maxpool2 if in_size > 8]
    conv3x3(32->64) ReLU  maxpool2
    conv3x3(64->64) ReLU  [maxpool2 if in_size > 8]
    flatten -> linear(-> 128)           <- the 128-d features used for FD and precision/recall
    ReLU -> linear(128 -> 10)           <- class logits

The features are the penultimate layer *before* its ReLU: after the ReLU about a quarter of the units are zero
on every digit, which makes the feature covariance singular and the matrix square root of FD inaccurate.

Reproduce the shipped weights (one CPU thread; each prints its held-out accuracy and writes the card)::

    diffusion-es train-features --data digits --out src/diffusion_es/assets/features/digits_cnn.safetensors
    diffusion-es train-features --data mnist --mnist-file .cache/mnist/mnist.pkl.gz \
        --out src/diffusion_es/assets/features/mnist_cnn.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DigitCNN", "load_classifier", "save_classifier", "FEATURE_DIM"]

FEATURE_DIM = 128
ARCH = "digitcnn-v1"


class DigitCNN(nn.Module):
    def __init__(self, in_size: int = 8, num_classes: int = 10, feat_dim: int = FEATURE_DIM):
        super().__init__()
        self.in_size = int(in_size)
        big = self.in_size > 8
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if big else nn.Identity(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if big else nn.Identity(),
        )
        with torch.no_grad():
            flat = self.body(torch.zeros(1, 1, self.in_size, self.in_size)).numel()
        self.fc = nn.Linear(flat, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def config(self) -> dict:
        return {"arch": ARCH, "in_size": self.in_size, "num_classes": self.head.out_features,
                "feat_dim": self.fc.out_features}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer pre-activations (N, 128) of images (N, 1, in_size, in_size) in [-1, 1]."""
        return self.fc(self.body(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


# ---------------------------------------------------------------------------------------------------------------
# data

# ---------------------------------------------------------------------------------------------------------------
# weights

def save_classifier(model: DigitCNN, path, card: dict) -> dict:
    """Write ``path`` (safetensors, config in its metadata) and ``path`` with ``.json`` (the card), atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_path, write_json
    from ..hashing import weights_hash

    path = Path(path)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    card = dict(card, weights_sha256=weights_hash(sd), file=path.name)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"config": json.dumps(model.config())})
    write_json(path.with_suffix(".json"), card)
    return card


def load_classifier(path) -> DigitCNN:
    """Load weights written by :func:`save_classifier` (safetensors only: no code is executed); anything else
    is refused with a one-line UsageError naming the file."""
    from ..errors import UsageError
    from ..io import read_safetensors

    path = Path(path)
    hint = "give a classifier file written by `diffusion-es train-features`"
    tensors, meta = read_safetensors(path, "feature classifier weights (.safetensors)", hint)
    try:
        cfg = json.loads(meta["config"])
        if cfg.get("arch") != ARCH:
            raise UsageError(f"{path}: architecture {cfg.get('arch')!r} is not {ARCH!r}; {hint}")
        sizes = int(cfg["in_size"]), int(cfg["num_classes"]), int(cfg["feat_dim"])
        if not (8 <= sizes[0] <= 512 and 1 <= sizes[1] <= 100_000 and 1 <= sizes[2] <= 65_536):
            raise ValueError
        model = DigitCNN(*sizes)
    except UsageError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
        raise UsageError(f"{path}: no valid diffusion-es classifier config in the safetensors metadata; {hint}") from None
    want = model.state_dict()
    if set(tensors) != set(want) or any(tuple(tensors[k].shape) != tuple(v.shape) for k, v in want.items()):
        raise UsageError(f"{path}: weights do not match the classifier its config describes; {hint}")
    if not all(torch.isfinite(t.float()).all() for t in tensors.values()):
        raise UsageError(f"{path}: weights hold NaN or inf; {hint}")
    model.load_state_dict({k: t.float() for k, t in tensors.items()})
    return model.eval()
