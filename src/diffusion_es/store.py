"""Resumable work: finished parts kept on disk, keyed by everything that determines them.

* :class:`PartStore`: one JSON file per finished part of a long job (``repro``, ``compare``), keyed by a hash of
  the job's fingerprint and the part's parameters; a rerun with the same settings serves it from disk. Each part
  carries a hash of its own content: a damaged part file (truncated, not JSON, not an object, edited, or written
  by a version without the hash) is recomputed, with a note naming the file.
* :class:`ShardedRun`: ``sample``'s seeds cut into fixed chunks of whole batches (independent of the number of
  processes), each written atomically to ``OUT.parts/`` under a name keyed by the run's identity. Rank 0 merges them
  into the one file a single-process run writes. A killed run restarted with the same arguments (and any number of
  processes) samples only the missing chunks. With ``layout="png"`` the output is a folder of PNGs (EDM's
  ``seed%06d.png``), each written atomically as its chunk finishes; ``OUT.parts/`` then holds one small marker per
  finished chunk.
* :func:`output_lock`: one writer per output: a second run on the same output is refused with one line, and the
  debris of a killed writer (its hidden temporary files, beside the output, inside an output folder and in
  ``OUT.parts/``) is removed by the next one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import UsageError
from .hashing import json_hash

__all__ = ["PartStore", "ShardedRun", "shard_seeds_per_chunk", "DEFAULT_SHARD_SIZE", "output_lock"]

DEFAULT_SHARD_SIZE = 256          # seeds per shard, at least (rounded up to whole batches)


@contextlib.contextmanager
def output_lock(path, enabled: bool = True):
    """Hold ``.NAME.lock`` beside ``path`` while writing it; refuse (UsageError) if another process holds it.

    The lock is an advisory ``flock`` on an open file, released by the kernel when its holder dies, so a killed
    run never leaves a stale lock. While holding it, leftovers of an earlier killed writer are removed: hidden
    temporary files (``.NAME.*.tmp*``) beside ``path``, and ``.*.tmp*`` inside ``path`` (an output folder) and
    inside its ``path.parts/`` folder of shards."""
    if not enabled:
        yield
        return
    import fcntl

    path = Path(path)
    made = [q for q in [path.parent, *path.parent.parents] if not q.exists()]  # folders to remove if left empty
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    busy = UsageError(f"{path}: another diffusion-es process is writing this output now; wait for it to finish or "
                      "choose another output")
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # (a refused process never removes the holder's lock file)
            raise busy from None
        try:
            live = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            live = False
        if live:
            break
        os.close(fd)  # a finishing holder removed that file after we opened it: take a fresh one
    else:  # pragma: no cover - only under a storm of writers
        raise busy
    try:
        debris = list(path.parent.glob(f".{path.name}.*.tmp*"))
        for folder in (path, path.with_name(path.name + ".parts")):
            if folder.is_dir():
                debris += folder.glob(".*.tmp*")
        for old in debris:
            with contextlib.suppress(OSError):
                old.unlink()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a process that opened it meanwhile sees it is stale
        os.close(fd)
        for q in made:  # deepest first: a run that failed before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                q.rmdir()


_SHA = "_content_sha256"  # each part's hash of its own content (damage and edits are recomputed, not trusted)


class PartStore:
    """One JSON file per finished part, keyed by a hash of everything that determines it."""

    def __init__(self, out: Path, fingerprint: dict, log: Callable = None, subdir: str = "parts",
                 writer: bool = True, snapshot: bool = False):
        """``writer``: this process writes the parts it computes (in a torchrun job: rank 0 only). ``snapshot``:
        serve only the parts that existed when the store was opened, so the processes of a job agree on what is
        cached while the writer adds parts (a part one process takes from disk and another computes would leave
        the second alone in a collective). That holds because computing any part takes a collective of every
        process, so no part is written before every process has opened its store; with that invariant the check
        on disk alone would agree too, and the snapshot keeps agreement if a part ever skips its collective."""
        self.dir = Path(out) / subdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fp, self.writer = fingerprint, writer
        self.known = {p.name for p in self.dir.glob("*.json")} if snapshot else None
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.served = self.from_cache = 0
        self.compute_s = 0.0  # compute time of every part served, cached or not: the real cost of the results

    def accounting(self) -> dict:
        return {"compute_time_s": self.compute_s, "parts_from_cache": self.from_cache, "parts": self.served}

    def path(self, name: str, params: dict) -> Path:
        return self.dir / f"{name}-{json_hash({**self.fp, **params}, 12)}.json"

    def _read(self, p: Path) -> Optional[dict]:
        from .io import read_json

        if not p.exists():
            return None
        try:
            res = read_json(p, "a part of this job")
        except UsageError:
            res = None
        if not isinstance(res, dict):
            self.log(f"note: {p} is damaged (not a JSON object); computing that part again")
            return None
        sha = res.pop(_SHA, None)
        if sha != json_hash(res):
            self.log(f"note: {p} does not match its content hash (edited, damaged or from an older version); "
                     "computing that part again")
            return None
        return res

    def get_or_run(self, name: str, params: dict, fn):
        """(result, served_from_disk) of the part ``name`` with ``params``; ``fn()`` computes it when missing."""
        from .io import write_json

        p = self.path(name, params)
        res = self._read(p) if self.known is None or p.name in self.known else None
        cached = res is not None
        if res is None:
            t0 = time.time()
            res = fn()
            res["compute_s"] = time.time() - t0  # kept with the part, so a resumed run still reports the real cost
            res = json.loads(json.dumps(res, default=float))  # exactly what a rerun reads back
            if self.writer:
                write_json(p, {**res, _SHA: json_hash(res)}, strict=False)  # a cache: it reads back exactly
        self.served += 1
        self.from_cache += cached
        self.compute_s += float(res.get("compute_s", 0.0) or 0.0)
        return res, cached


def shard_seeds_per_chunk(batch_size: int, shard_size: int = DEFAULT_SHARD_SIZE) -> int:
    """Seeds per shard: ``shard_size`` rounded up to whole batches, so a shard's batches are exactly the
    batches a one-process run forms (the samples are then equal by construction, not by luck)."""
    return batch_size * max(1, math.ceil(shard_size / batch_size))


class ShardedRun:
    """Sample ``seeds`` chunk by chunk into ``OUT.parts/``; rank 0 merges the chunks in seed order.

    ``ctx`` is a :class:`diffusion_es.distributed.Context` (one process: rank 0 of 1). ``identity`` is a
    JSON-able dict of everything that determines the samples (model fingerprint, sampler options, batch size,
    ...); with each chunk's seeds it keys the shard file, so a changed option never reuses a stale shard, and a
    different number of processes still does."""

    def __init__(self, ctx, out, identity: dict, seeds: Sequence[int], batch_size: int,
                 shard_size: int = DEFAULT_SHARD_SIZE, layout: str = "npz"):
        if layout not in ("npz", "png"):
            raise ValueError(f"layout must be npz or png, got {layout!r}")
        self.ctx, self.out, self.layout = ctx, Path(out), layout
        self._suffix = "npz" if layout == "npz" else "done"  # a shard, or a PNG folder's marker (io.PNG_CHUNK_MARKERS)
        self.dir = self.out.with_name(self.out.name + ".parts")
        self.seeds = [int(s) for s in seeds]
        per = shard_seeds_per_chunk(batch_size, shard_size)
        self.chunks = [self.seeds[i:i + per] for i in range(0, len(self.seeds), per)]
        self.base = {"format": 1, **identity, "batch_size": int(batch_size)}
        if layout == "png":
            self.base["layout"] = "png"
        self.reused = 0

    def shard_path(self, chunk: Sequence[int]) -> Path:
        """The chunk's shard (``.npz``), or for a PNG folder its marker (``.done``, written after its PNGs)."""
        key = json_hash({**self.base, "seeds": [int(chunk[0]), int(chunk[-1]), len(chunk)],
                         "seeds_hash": json_hash([int(s) for s in chunk])}, 16)
        return self.dir / f"seeds{chunk[0]}-{chunk[-1]}-{key}.{self._suffix}"

    def png_path(self, seed: int) -> Path:
        from .io import png_name

        return self.out / png_name(seed)

    def _complete(self, i: int) -> bool:
        p = self.shard_path(self.chunks[i])
        if not p.is_file():
            return False
        if self.layout == "png":
            return all(self.png_path(s).is_file() for s in self.chunks[i])
        try:
            with np.load(p, allow_pickle=False) as f:
                return np.array_equal(f["seeds"], np.asarray(self.chunks[i], dtype=np.int64))
        except Exception:  # unreadable: sample it again
            return False

    def execute(self, run_chunk: Callable, progress: Optional[Callable[[int], None]] = None) -> Optional[np.ndarray]:
        """Sample every missing chunk (``run_chunk(seeds, per_batch_progress) -> array``, one row per seed) and
        return the merged array on rank 0 (``None`` on other ranks, and for a PNG folder, which is complete once
        this returns). ``progress(n)`` is called on rank 0."""
        ctx = self.ctx
        pending = ([i for i in range(len(self.chunks)) if not self._complete(i)] if ctx.is_main else None)
        if ctx.is_main and self.layout == "png":  # before any rank rewrites a PNG
            self._disown({s for i in pending for s in self.chunks[i]})
        pending = ctx.broadcast(pending)
        done_before = sum(len(self.chunks[i]) for i in set(range(len(self.chunks))) - set(pending))
        self.reused = done_before
        if ctx.is_main and progress and done_before:
            progress(done_before)
        if ctx.is_main and done_before:
            print(f"resuming: {done_before} of {len(self.seeds)} seeds already sampled in {self.dir}",
                  file=sys.stderr)
        created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        W = ctx.world_size
        try:
            for r in range(math.ceil(len(pending) / W)):  # round r: chunk pending[r*W + rank] on each rank
                mine = r * W + ctx.rank
                n = 0
                if mine < len(pending):
                    chunk = self.chunks[pending[mine]]
                    arr = run_chunk(chunk, progress if W == 1 else None)
                    if len(arr) != len(chunk):
                        raise RuntimeError(f"sampling returned {len(arr)} rows for {len(chunk)} seeds")
                    self._write(chunk, arr)
                    n = len(chunk)
                counts = ctx.exchange(n)  # the per-round sync: progress, and a failure anywhere stops everyone
                if ctx.is_main and progress and W > 1:
                    progress(sum(counts))
        except BaseException:
            # a run refused or stopped before any chunk finished leaves no empty OUT.parts/ behind (rmdir removes
            # only an empty folder: a finished chunk stays for the resume)
            if created and ctx.is_main:
                with contextlib.suppress(OSError):
                    self.dir.rmdir()
            raise
        return self._merge() if ctx.is_main else None

    def _write(self, chunk, arr) -> None:
        from .io import atomic_path, save_png, write_json

        if self.layout == "png":
            for seed, img in zip(chunk, arr):
                save_png(self.png_path(seed), img)
            write_json(self.shard_path(chunk), {"seeds": [int(chunk[0]), int(chunk[-1])], "n": len(chunk),
                                                "all": [int(s) for s in chunk]})
            return
        with atomic_path(self.shard_path(chunk), suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, arr_0=arr, seeds=np.asarray(chunk, dtype=np.int64))

    def _disown(self, seeds: set) -> None:
        """Before this run rewrites the PNGs of ``seeds``: remove the markers of other runs (other settings) that
        vouch for any of them. Without this, a run killed after overwriting seeds with other settings left the first
        run's marker standing, and the first run, resumed, took the other settings' PNGs as its own."""
        ours = {self.shard_path(c).name for c in self.chunks}
        for p in self.dir.glob(f"seeds*-*-*.{self._suffix}") if self.dir.is_dir() else ():
            if p.name in ours:
                continue
            try:
                overlap = bool(seeds & {int(s) for s in json.loads(p.read_text())["all"]})
            except (OSError, ValueError, KeyError, TypeError):  # unreadable, or a marker from before "all": drop it
                overlap = True  # (at worst a chunk is sampled again)
            if overlap:
                p.unlink(missing_ok=True)

    def _merge(self) -> Optional[np.ndarray]:
        from .io import read_npz

        parts = []
        for chunk in self.chunks:
            p = self.shard_path(chunk)
            if not p.is_file():
                raise UsageError(f"{p}: shard missing after all processes finished; in a multi-machine run put "
                                 "--out on a filesystem that every machine shares")
            if self.layout == "png":
                continue
            f = read_npz(p, required=("arr_0", "seeds"), what="a shard of this run", hint="delete it and rerun")
            arr, s = f["arr_0"], f["seeds"]
            if not np.array_equal(s, np.asarray(chunk, dtype=np.int64)) or len(arr) != len(chunk):
                raise UsageError(f"{p}: shard does not hold seeds {chunk[0]}..{chunk[-1]}; delete it and rerun")
            parts.append(arr)
        return np.concatenate(parts) if self.layout == "npz" else None

    def cleanup(self) -> None:
        """Remove the shards or markers (rank 0, after the output is complete) and the folder if empty: this run's,
        and those of earlier runs with other settings for the same output, which this complete output replaced
        (they could only ever have been resumed into it). Other files in the folder are left alone."""
        if not self.ctx.is_main:
            return
        for chunk in self.chunks:
            self.shard_path(chunk).unlink(missing_ok=True)
        if self.dir.is_dir():
            for p in self.dir.glob(f"seeds*-*-*.{self._suffix}"):
                p.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:  # other runs' shards, or already gone
            pass
