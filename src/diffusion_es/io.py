"""File formats the field uses, written atomically.

* Samples: ADM-style ``.npz`` with uint8 NHWC images under ``arr_0`` (and optional extra arrays), or a folder
  of PNGs; PNG grids for looking at them.
* Every writer goes to a temporary file in the destination folder and renames it into place, so an interrupt
  never leaves a half-written file where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UsageError

__all__ = [
    "atomic_path",
    "write_json",
    "to_uint8",
    "from_uint8",
    "plain_file_mode",
    "save_npz",
    "load_images",
    "save_grid",
    "save_figure",
]


def plain_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (atomic on POSIX).

    ``suffix`` keeps writers that insist on an extension (``np.savez`` adds ``.npz``) happy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, plain_file_mode())  # mkstemp makes the file 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1], NCHW (torch or numpy) -> uint8 NHWC, rounded as ADM does ((x+1)*127.5, clip)."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {x.shape}")
    u = np.clip(np.round((x.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(u.transpose(0, 2, 3, 1))


def from_uint8(u: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    u = np.asarray(u)
    if u.ndim != 4 or u.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {u.dtype} {u.shape}")
    return (u.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0


def save_npz(path, images_uint8: np.ndarray, **extra) -> None:
    """ADM-style sample file: ``arr_0`` = uint8 NHWC; extra arrays (labels, seeds) beside it."""
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
        raise ValueError("save_npz expects uint8 NHWC images")
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=images_uint8, **extra)


def load_images(path) -> np.ndarray:
    """Read samples as uint8 NHWC from an ADM-style ``.npz`` (``arr_0``) or a folder of PNG files."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder; give an ADM-style .npz (uint8 NHWC under arr_0) or a folder of PNGs")
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise UsageError(f"{path}: folder holds no .png files")
        imgs = []
        for p in files:
            with Image.open(p) as im:
                a = np.asarray(im)
            a = a[:, :, None] if a.ndim == 2 else a
            if a.shape[2] == 4:
                a = a[:, :, :3]
            imgs.append(a)
        shapes = {a.shape for a in imgs}
        if len(shapes) != 1:
            raise UsageError(f"{path}: PNGs have different shapes {sorted(shapes)[:3]}; resize them to one size first")
        out = np.stack(imgs)
        if out.dtype != np.uint8:
            raise UsageError(f"{path}: PNGs must be 8-bit, found {out.dtype}")
        return out
    try:
        with np.load(path, allow_pickle=False) as f:
            if "arr_0" not in f.files:
                raise UsageError(f"{path}: no 'arr_0' array (found {f.files}); expected an ADM-style sample file")
            arr = f["arr_0"]
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{path}: not a readable .npz file ({e.__class__.__name__})") from None
    if arr.ndim == 3:  # grey images stored as NHW
        arr = arr[..., None]
    if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
        raise UsageError(f"{path}: arr_0 must be uint8 NHWC with 1 or 3 channels, got {arr.dtype} {arr.shape}")
    return arr


def save_grid(path, images_uint8: np.ndarray, ncols: int = 0, scale: int = 0) -> None:
    """Tile uint8 NHWC images into one PNG (a 1-pixel gap), upscaled by ``scale`` (auto: images >= 64 px)."""
    from PIL import Image

    n, h, w, c = images_uint8.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    scale = scale or max(1, 64 // max(h, w))
    canvas = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = images_uint8[k]
    img = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def save_figure(fig, path, **savefig_kwargs) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    plt.close(fig)
