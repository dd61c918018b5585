"""Training of the small digit / MNIST classifiers whose features give FD-digits / FD-mnist
(:mod:`diffusion_es.metrics.classifier` holds the network and its loading). Deterministic: fixed seed, explicit
generators, deterministic algorithms; run with one thread to reproduce the shipped weights bit for bit
(``diffusion-es train-features``)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..metrics.classifier import DigitCNN

__all__ = ["train_feature_net", "load_training_data", "accuracy"]


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
        from ..data.mnist import load_mnist, load_mnist_labels
        from ..io import from_uint8

        if not mnist_file:
            raise UsageError("data mnist needs mnist_file (--mnist-file) PATH (mnist.pkl.gz; scripts/get_mnist.sh fetches it)")
        tr, te, _ = load_mnist(str(mnist_file))
        if te is None:
            raise UsageError(f"{mnist_file}: has no test split; the classifier's held-out accuracy needs it")
        xt, xh = torch.from_numpy(from_uint8(tr)), torch.from_numpy(from_uint8(te))
        yt, yh = (torch.from_numpy(y) for y in load_mnist_labels(str(mnist_file)))
        desc = {"train": f"MNIST train ({len(xt)})", "heldout": f"MNIST test ({len(xh)})"}
    else:
        raise UsageError(f"unknown data {data!r} for a feature network: use digits or mnist")
    return _quantize(xt), yt, _quantize(xh), yh, desc


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


def train_feature_net(data: str = "digits", epochs: int = 0, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
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
