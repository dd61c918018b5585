"""The one fingerprint of weights and settings.

* :func:`weights_hash`: sha256 over a state dict, each tensor (sorted by name) as its name, dtype, shape and raw
  bytes; independent of the file format (the same weights in safetensors or TorchScript hash the same). It is the
  hash recorded in feature-network cards and reference-statistics files, the key of resumable shards and of the
  experiments' part store.
* :func:`json_hash`: sha256 of a JSON-able settings dict (sorted keys), for keys of stored results.
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["weights_hash", "model_fingerprint", "json_hash", "path_hash"]


def weights_hash(state_dict) -> str:
    """sha256 (hex) over the weights: for each tensor, sorted by name, its name, dtype, shape and raw bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(module) -> str:
    """:func:`weights_hash` of a module's parameters and buffers."""
    return weights_hash(module.state_dict())


def json_hash(obj, length: int = 64) -> str:
    """sha256 (hex, the first ``length`` characters) of ``obj`` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def path_hash(path, length: int = 16) -> str:
    """sha256 (hex) of a file's bytes, or of a folder's files (sorted relative names and bytes, hidden ones left
    out)."""
    from pathlib import Path

    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()
                                          and not any(part.startswith(".") for part in q.relative_to(p).parts))
    for f in files:  # each file framed by its name and size, so no two folders hash alike by shifting bytes
        name = str(f.relative_to(p)) if f is not p else ""
        h.update(f"{name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]
