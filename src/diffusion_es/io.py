"""File formats the field uses: every file the package reads is opened and checked here, and every file it
writes is written here atomically.

* Samples: ADM-style ``.npz`` with uint8 NHWC images under ``arr_0`` (and optional extra arrays), or a folder
  of PNGs (one file per image, EDM's ``seed%06d.png`` names when ``sample`` writes it); PNG grids for looking at
  them.
* Readers (:func:`read_npz`, :func:`read_json`, :func:`read_safetensors`, :func:`read_png`, :func:`load_images`)
  turn every way a file can be wrong (missing, a folder, truncated, garbage, the wrong kind, the wrong arrays)
  into one :class:`~diffusion_es.errors.UsageError` that names the file and says what to do. Loading never executes
  code (``allow_pickle=False``, safetensors).
* :func:`check_output`: an output path is checked before any work starts (a file where a folder is expected and
  vice versa, the wrong extension, a file in the way of its folder, no permission).
* Every writer goes to a temporary file in the destination folder and renames it into place, so an interrupt
  never leaves a half-written file where a finished one is expected. The temporary names start with a dot and
  contain ``.tmp``; :func:`diffusion_es.store.output_lock` removes those a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import UsageError

__all__ = [
    "atomic_path",
    "write_json",
    "json_ready",
    "json_text",
    "to_uint8",
    "from_uint8",
    "to_rgb",
    "plain_file_mode",
    "save_npz",
    "save_png",
    "png_name",
    "load_images",
    "read_npz",
    "read_json",
    "read_safetensors",
    "read_png",
    "check_input",
    "check_output",
    "save_grid",
    "save_figure",
]

SAMPLES_HINT = "give an ADM-style .npz (uint8 NHWC under arr_0) or a folder of 8-bit PNGs"


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


def json_ready(obj):
    """``obj`` with every value strict JSON can hold: NaN (an undefined number, e.g. the spread of one value)
    becomes null, ±∞ the strings ``"Infinity"`` / ``"-Infinity"`` (protobuf's JSON mapping; Python's ``float()``
    reads them back), numpy scalars plain numbers. Python's own ``json`` writes bare ``NaN`` / ``Infinity``, which
    JavaScript's ``JSON.parse``, jq and most other parsers refuse."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if f != f:
            return None
        return f if abs(f) != float("inf") else ("Infinity" if f > 0 else "-Infinity")
    return obj


def json_text(obj, indent: Optional[int] = 2) -> str:
    """Strict JSON of ``obj`` (:func:`json_ready`; anything else float() takes, such as a 0-d tensor, as a number)."""
    return json.dumps(json_ready(obj), indent=indent, default=lambda o: json_ready(float(o)), allow_nan=False)


def write_json(path, obj, strict: bool = True) -> None:
    """``obj`` as JSON at ``path``, atomically: strict JSON (:func:`json_text`) for what people and other tools read;
    ``strict=False`` keeps Python's NaN / Infinity, for our own caches that must read back exactly as written."""
    with atomic_path(path) as tmp:
        tmp.write_text((json_text(obj) if strict else json.dumps(obj, indent=2, default=float)) + "\n")


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1], NCHW (torch or numpy) -> uint8 NHWC: (x+1)*127.5 rounded to the nearest level, clipped.

    That is EDM's quantisation (``(x*127.5 + 128).clip(0, 255).to(uint8)``, up to exact ties). ADM's
    ``image_sample.py`` truncates instead (``((x+1)*127.5).clamp(0, 255).to(uint8)``), so its pixels sit half a
    level lower on average, which an FD can see: quantise both sides of a comparison the same way."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("images hold NaN or inf values; they cannot be stored as 8-bit pixels")
    u = np.clip(np.round((x.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(u.transpose(0, 2, 3, 1))


def from_uint8(u: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    u = np.asarray(u)
    if u.ndim != 4 or u.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {u.dtype} {u.shape}")
    return (u.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0


def to_rgb(u: np.ndarray) -> np.ndarray:
    """uint8 NHWC with 1 channel -> 3 channels (grey repeated), as ADM's evaluator and most FID tools want."""
    if u.shape[-1] == 3:
        return u
    if u.shape[-1] != 1:
        raise ValueError(f"cannot make RGB images from {u.shape[-1]} channels")
    return np.ascontiguousarray(np.repeat(u, 3, axis=-1))


def png_name(seed: int) -> str:
    """The file name of one sample in a PNG folder: EDM's ``seed%06d.png``."""
    return f"seed{int(seed):06d}.png"


def save_png(path, image_uint8: np.ndarray) -> None:
    """One uint8 HWC image (1 or 3 channels) as an 8-bit PNG, written atomically."""
    from PIL import Image

    a = np.asarray(image_uint8)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"save_png expects uint8 HWC with 1 or 3 channels, got {a.dtype} {a.shape}")
    img = Image.fromarray(a[:, :, 0] if a.shape[-1] == 1 else a)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def save_npz(path, images_uint8: np.ndarray, **extra) -> None:
    """ADM-style sample file: ``arr_0`` = uint8 NHWC; extra arrays (labels, seeds) beside it."""
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
        raise ValueError("save_npz expects uint8 NHWC images")
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=images_uint8, **extra)


# ---- reading: one place where every file format is opened and checked ------------------------------------
def check_input(path, what: str, hint: str = "", folder: Optional[bool] = False) -> Path:
    """``path`` as a Path that exists and is a file (``folder=False``), a folder (``True``) or either (``None``);
    otherwise a UsageError naming it."""
    tail = f"; {hint}" if hint else ""
    if not str(path).strip():  # Path("") is the current folder, which exists
        raise UsageError(f"an empty path was given for {what}{tail}")
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such {'folder' if folder else 'file'}{' or folder' if folder is None else ''} "
                         f"({what}){tail}")
    if folder is False and p.is_dir():
        raise UsageError(f"{p}: is a folder, expected {what}{tail}")
    if folder is True and not p.is_dir():
        raise UsageError(f"{p}: is a file, expected a folder ({what}){tail}")
    return p


def _damaged(p: Path, kind: str, e: BaseException, hint: str) -> UsageError:
    detail = str(e).strip().splitlines()[0][:80] if str(e).strip() else ""
    why = f"{type(e).__name__}{': ' + detail if detail else ''}"
    return UsageError(f"{p}: truncated, damaged or not {kind} ({why}){'; ' + hint if hint else ''}")


def read_npz(path, required: Sequence[str] = (), what: str = "an .npz file", hint: str = "") -> dict:
    """Every array of an ``.npz`` file (read without pickle), checked to hold the ``required`` names."""
    p = check_input(path, what, hint)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (with entries, or empty); anything else
        # would make numpy guess, and talk of pickles
        kind = "a single .npy array" if magic[:4] == b"\x93NUM" else "not a zip archive"
        raise UsageError(f"{p}: not an .npz file ({kind}), expected {what}{'; ' + hint if hint else ''}")
    try:
        f = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - whatever a foreign file makes numpy raise
        raise _damaged(p, "an .npz file", e, hint) from None
    if not isinstance(f, np.lib.npyio.NpzFile):  # pragma: no cover - the magic check above already refused it
        raise UsageError(f"{p}: not an .npz file, expected {what}{'; ' + hint if hint else ''}")
    with f:
        missing = [k for k in required if k not in f.files]
        if missing:
            raise UsageError(f"{p}: no {missing[0]!r} array (found {sorted(f.files)[:6]}); expected {what}"
                             f"{'; ' + hint if hint else ''}")
        try:
            return {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - a damaged member (CRC, truncated data, pickled objects)
            raise _damaged(p, "an .npz file", e, hint) from None


def read_json(path, what: str = "a JSON file", hint: str = ""):
    """The parsed content of a JSON file (any JSON value; callers check its shape)."""
    p = check_input(path, what, hint)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{p}: not a text file, expected {what}{'; ' + hint if hint else ''}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}), expected {what}"
                         f"{'; ' + hint if hint else ''}") from None
    except RecursionError:
        raise UsageError(f"{p}: JSON nested too deeply, expected {what}") from None


def read_safetensors(path, what: str = "a .safetensors file", hint: str = ""):
    """``(tensors, metadata)`` of a safetensors file (no code is executed by loading it)."""
    from safetensors import safe_open

    p = check_input(path, what, hint)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise _damaged(p, "a .safetensors file", e, hint) from None
    return tensors, meta


def read_png(path) -> np.ndarray:
    """One 8-bit PNG as uint8 HWC with 1 (grey) or 3 (RGB) channels; alpha is dropped, palettes are expanded.
    The file's chunk checksums are verified: a truncated or damaged file is refused even where its pixels would
    still decode."""
    from PIL import Image

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                if im.format != "PNG":
                    raise UsageError(f"{p}: a {im.format} image, not a PNG; {SAMPLES_HINT}")
                im.verify()  # every chunk's CRC, up to IEND
            with Image.open(p) as im:
                im.load()
                mode = im.mode
                if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise UsageError(f"{p}: a {mode} (more than 8-bit) PNG; save the images as 8-bit grey or RGB")
                if mode in ("1", "L", "LA"):
                    a = np.asarray(im.convert("L"))
                else:
                    a = np.asarray(im.convert("RGB"))
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL's errors for truncated or foreign files vary by format
        raise _damaged(p, "a PNG image", e, SAMPLES_HINT) from None
    return a[:, :, None] if a.ndim == 2 else a


# the markers a sample run into a PNG folder OUT/ leaves in OUT.parts/, one per finished chunk, until the whole
# folder is written (store.ShardedRun names them seeds{first}-{last}-{key}.done)
PNG_CHUNK_MARKERS = "seeds*-*-*.done"


def _png_files(folder: Path) -> list:
    """The PNGs of a sample folder, sorted; hidden files (temporary files of a writer) are not samples."""
    return sorted(q for q in folder.iterdir() if q.suffix.lower() == ".png" and not q.name.startswith(".")
                  and q.is_file())


def load_images(path) -> np.ndarray:
    """Read samples as uint8 NHWC (1 or 3 channels) from an ADM-style ``.npz`` (``arr_0``) or a folder of PNGs."""
    p = check_input(path, "samples", SAMPLES_HINT, folder=None)
    if p.is_dir():
        files = _png_files(p)
        if not files:
            raise UsageError(f"{p}: folder holds no .png files; {SAMPLES_HINT}")
        parts = p.with_name(p.name + ".parts")
        if parts.is_dir() and any(parts.glob(PNG_CHUNK_MARKERS)):
            raise UsageError(f"{p}: an unfinished sample folder ({parts.name}/ beside it records a `diffusion-es "
                             f"sample` run into it that has not finished; the folder may hold part of it, or mix "
                             f"runs): rerun that sample command to finish it, or remove {parts.name}/ to use the "
                             f"{len(files)} images as they are")
        imgs, first = [], None
        for q in files:
            a = read_png(q)
            if first is None:
                first = (q, a.shape)
            elif a.shape != first[1]:
                raise UsageError(f"{q}: shape {a.shape} differs from {first[0].name}'s {first[1]} (H, W, C); every "
                                 "image of a sample folder must have one size and channel count")
            imgs.append(a)
        return np.stack(imgs)
    arr = read_npz(p, required=("arr_0",), what="an ADM-style sample file", hint=SAMPLES_HINT)["arr_0"]
    if arr.ndim == 3:  # grey images stored as NHW
        arr = arr[..., None]
    if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
        raise UsageError(f"{p}: arr_0 must be uint8 NHWC images with 1 or 3 channels, got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or 0 in arr.shape[1:3]:
        raise UsageError(f"{p}: arr_0 holds no images (shape {arr.shape})")
    return arr


# ---- outputs: checked before any work starts --------------------------------------------------------------
# what each family of commands leaves in its output folder (the first match names the family): a folder holding
# one family's files is not another family's output. repro, compare and measure may share a folder (repro --compare
# writes both reports into one; measure's files have names of their own).
_FOLDER_FAMILIES = (
    ("export", "a diffusers pipeline or UNet (`diffusion-es export`, save_pretrained)",
     ("model_index.json", "diffusion_pytorch_model.*")),
    ("train", "a model checkpoint (`diffusion-es train`)",
     ("model.safetensors", "train_state.safetensors", "log.jsonl", "config.json")),
    ("sample", "samples (`diffusion-es sample`)", ("seed[0-9][0-9][0-9][0-9][0-9][0-9]*.png",)),
    ("report", "a report (`diffusion-es repro`, `compare` or `measure`)",
     ("report.md", "results.json", "compare.md", "results_compare.json", "exposure_*_summary.json", "parts")),
)
_COMMAND_FAMILY = {"export": "export", "train": "train", "sample": "sample", "repro": "report",
                   "compare": "report", "measure": "report"}


def _foreign_output(p: Path, command: str, kind: str) -> Optional[str]:
    """Why ``p`` (existing) is another command's output and not ``command``'s, or None."""
    if kind == "dir" and p.is_dir():
        own = _COMMAND_FAMILY.get(command)
        for family, what, patterns in _FOLDER_FAMILIES:
            if family == own:
                continue
            for pat in patterns:
                hit = next(iter(sorted(p.glob(pat))), None)
                if hit is not None:
                    return f"it holds {what} ({hit.name})"
        return None
    if kind == "file" and p.is_file() and p.suffix.lower() == ".npz" and command in ("sample", "fid-ref"):
        import zipfile

        try:
            with zipfile.ZipFile(p) as z:
                names = {n[:-4] if n.endswith(".npy") else n for n in z.namelist()}
        except (OSError, zipfile.BadZipFile):
            return None  # not an .npz at all: nothing of ours to protect
        if command == "sample" and "provenance" in names:
            return "it is a reference statistics file (`diffusion-es fid-ref`)"
        if command == "fid-ref" and "provenance" not in names and "arr_0" in names:
            return "it holds samples (`diffusion-es sample`), not reference statistics"
    return None


def check_output(path, kind: str = "file", suffixes: Iterable[str] = (), flag: str = "--out",
                 command: Optional[str] = None) -> Path:
    """Refuse an output path that cannot be written as asked, before any work starts: ``kind`` ``"file"`` (with
    one of ``suffixes``) where a folder exists, ``"dir"`` where a file exists, a file in the way of a parent
    folder, or a parent folder that cannot be written (tried with an empty file, removed at once). With ``command``,
    also an existing file or folder that another command wrote (a training checkpoint given to ``repro --out``, a
    reference given to ``sample --out``): it would be overwritten or mixed into. Nothing else is created."""
    p = Path(path)
    suffixes = tuple(suffixes)
    if not str(path).strip():
        raise UsageError(f"{flag} is empty: give a {'file name' if kind == 'file' else 'folder'}")
    if kind == "file":
        if suffixes and not p.name.lower().endswith(suffixes):
            raise UsageError(f"{flag} {str(path)!r} must end in {' or '.join(suffixes)}")
        if p.is_dir():
            raise UsageError(f"{flag} {p}: is a folder; give a file name{' ending in ' + suffixes[0] if suffixes else ''}")
    elif kind == "dir":
        if p.exists() and not p.is_dir():
            raise UsageError(f"{flag} {p}: is a file; give a folder (a new one, or one this command wrote)")
    else:
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {p}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {p}: no permission to write in {parent}")
            try:  # permissions do not tell everything (root, /proc, a read-only mount): try it with an empty file
                fd, probe = tempfile.mkstemp(prefix=".diffusion-es-probe-", dir=parent)
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise UsageError(f"{flag} {p}: cannot write in {parent} ({e.strerror or e}); give another "
                                 f"path") from None
            break
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{flag} {p}: no permission to write it")
    why = _foreign_output(p, command, kind) if command and p.exists() else None
    if why:
        raise UsageError(f"{flag} {p}: {why}; give a {'folder' if kind == 'dir' else 'file name'} of its own (a new "
                         f"one, or one `diffusion-es {command}` wrote)")
    return p


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
