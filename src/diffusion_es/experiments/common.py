"""What the experiments share: sampler titles and λ search ranges, the model + data loader, seed sets, the paired
evaluator and the shape of a method's result, and per-part progress lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UsageError
from ..hashing import model_fingerprint
from ..samplers.registry import SAMPLERS

__all__ = ["SAMPLER_NAMES", "check_unique", "schedule_text", "linear_first", "exposure_cell", "exposure_es_text",
           "RANGES", "MODEL_SAMPLERS", "load_model_and_data", "fingerprint", "seed_sets", "Paired",
           "method_result", "search_lambda", "Ticker"]

SAMPLER_NAMES = {name: spec.title for name, spec in SAMPLERS.items()}
# λ search ranges: stochastic ancestral sampling wants a larger λ than the ODE solvers (paper, PAPER.md)
RANGES = {"ddpm": (0.98, 1.08), "ddim": (0.99, 1.03), "euler": (0.99, 1.03), "heun": (0.98, 1.02),
          "flow_euler": (0.99, 1.03), "flow_heun": (0.98, 1.02)}
# the samplers of each kind of model (LoadedModel.process): what repro runs when --samplers is not given
MODEL_SAMPLERS = {"vp": ("ddpm", "ddim", "euler", "heun"), "edm": ("euler", "heun"),
                  "flow": ("flow_euler", "flow_heun")}

# the comparison of fixes: its methods and search grids
VP_METHODS = ("baseline", "ES", "TS", "TS+ES", "IP", "IP+ES")
EDM_METHODS = ("baseline", "ES", "churn", "churn+S_noise", "churn+S_noise+ES")
TS_WINDOW_FRACTIONS = (0.1, 0.25, 0.5)   # window as a fraction of the nominal step spacing
TS_CUTOFFS = (300, 100, 600)             # the first is used while the window is searched
CHURN_GAMMAS = (0.05, 0.15, 0.4)         # EDM's per-step γ = S_churn / steps (capped at √2 − 1 by the sampler)
S_NOISE_RANGE = (1.0, 1.06)
IP_GAMMA = 0.1


def model_data(model, data: Optional[str]) -> str:
    """The data spec to evaluate ``model`` on (see :meth:`~diffusion_es.models.LoadedModel.data_spec`)."""
    return model.data_spec(data)


def load_model_and_data(model_path, data: Optional[str], device="cpu"):
    """(model, its denoiser, its dataset), refusing data whose shape is not the model's sample shape. ``data``
    None: the model's own training data (see :func:`model_data`)."""
    from ..data import load_dataset
    from ..models import load_model

    model = load_model(model_path, device=device)
    data = model_data(model, data)
    ds = load_dataset(data)
    if ds.shape != tuple(model.data_shape):
        raise UsageError(f"the model makes samples of shape {tuple(model.data_shape)} but --data {data!r} has "
                         f"shape {ds.shape}; use the data the model was trained on")
    return model, model.denoiser(), ds


def weights_hash(model) -> str:
    """The full hash of a loaded model's weights (:func:`diffusion_es.hashing.model_fingerprint`), computed once per
    loaded model: a large network takes seconds to hash, and a command may need it for several keys."""
    if getattr(model, "_weights_hash", None) is None:
        model._weights_hash = model_fingerprint(model.net)
    return model._weights_hash


def weights_id(model) -> str:
    """The short weights hash of part keys and of a calibration's ``made_for``."""
    return weights_hash(model)[:16]


def fingerprint(model) -> dict:
    """What identifies a loaded model in a part store's key: its weights, and an x̂_0 clipping other than ADM's
    [-1, 1] (a diffusers scheduler's clip_sample / clip_sample_range; absent otherwise, so keys of earlier runs
    stay valid)."""
    fp = {"weights_sha256": weights_id(model)}
    clip = getattr(model, "clip_x0", 1.0)
    if clip != 1.0:
        fp["clip_x0"] = clip
    return fp


BUILT_IN = ("digits", "mnist", "heldout", "train", "all", "default")  # names that read no file of the user's
FILE_KINDS = ("npz", "images", "png", "mnist")  # data specs KIND:PATH (load_dataset); toy:NAME is generated


def file_contents(*specs) -> dict:
    """{spec: hash of its contents} for each spec that names a file or folder of the user's (a reference ``.npz``,
    ``npz:`` / ``images:`` / ``mnist:PATH`` data or a bare data path, an Inception file): a part computed against one
    file is not served for another written at the same path later. Built-in names (``digits``, ``heldout``, ...) and
    ``toy:NAME`` read no such file and add nothing, so the keys of runs on them do not change."""
    from ..hashing import path_hash

    out = {}
    for spec in specs:
        s = str(spec or "").strip()
        if not s or s in BUILT_IN:
            continue
        kind, sep, rest = s.partition(":")
        path = Path(rest if sep and kind in FILE_KINDS else s).expanduser()
        if (not sep or kind in FILE_KINDS or Path(s).exists()) and path.exists():
            out[s] = path_hash(path)
    return out


def inputs_key(model, data: str, ref, *files) -> dict:
    """The part of a stored result's key that says what it was measured on: the model (:func:`fingerprint`), the
    data spec and the reference, and the contents of whichever of them (and of ``files``, e.g. an Inception file)
    is a file of the user's (:func:`file_contents`; absent when none is, so such keys are as before)."""
    contents = file_contents(data, ref, *files)
    return {"model": fingerprint(model), "data": data, "ref": ref, **({"files": contents} if contents else {})}


def grid_key(sampler: str, steps: int, schedule, spacing: str = "adm") -> dict:
    """{"adm_rule": 2} where the respaced grid of a VP sampler moved when spacing 'adm' became guided-diffusion's
    own rule (278 of the step counts 1..1000 at T = 1000, e.g. 21), else {}: for the keys of stored results, so
    results of those counts from before are not reused and every other key stays as it was."""
    from ..core.schedules import respace
    from ..samplers import get_sampler

    if spacing != "adm" or get_sampler(sampler).grid != "vp" or not hasattr(schedule, "T"):
        return {}
    try:
        moved = not (respace(schedule.T, steps, "adm") == respace(schedule.T, steps, "linspace")).all()
    except ValueError:  # a step count the sampler refuses anyway
        return {}
    return {"adm_rule": 2} if moved else {}


def check_unique(values, what: str) -> None:
    """Refuse a list of rows or columns that names one twice: each would run, and be counted, twice."""
    seen = set()
    for v in values or []:
        if v in seen:
            raise UsageError(f"{what} lists {v} twice ({','.join(str(x) for x in values)}): give each once")
        seen.add(v)


def schedule_text(cand: dict, steps: int) -> str:
    """A chosen schedule as a reader wants it: ``linear λ 1.550 → 0.777, first to last step (k 0.0407, b 0.7767)``;
    a uniform one as ``uniform λ 1.0100``."""
    if cand.get("kind") == "linear":
        return (f"linear λ {linear_first(cand, steps):.3f} → {cand['b']:.3f}, first to last step "
                f"(k {cand['k']:.3g}, b {cand['b']:.4f})")
    return f"uniform λ {cand['b']:.4f}"


def exposure_cell(table: list, sampler: str) -> dict:
    """The main-table cell whose calibrated uniform λ the exposure step uses for ``sampler``: the one at 20 NFE, else
    the one nearest to it (the larger NFE on a tie)."""
    cells = [c for c in table if c["sampler"] == sampler]
    return min(cells, key=lambda c: (abs(c["nfe_cell"] - 20), -c["nfe_cell"]))


def exposure_es_text(table: list, sampler: str, es: dict) -> str:
    """What the ES side of an exposure measurement used, for a reader: ``uniform λ 1.0800, calibrated in the 20-NFE
    cell`` when it is a main-table cell's λ at that cell's step count, else the bare schedule ("not calibrated")."""
    for c in table:
        if c["sampler"] == sampler and c["steps"] == es["steps"] and c["candidate"] == es["es"]:
            return f"{schedule_text(es['es'], es['steps'])}, calibrated in the {c['nfe_cell']}-NFE cell"
    return f"{schedule_text(es['es'], es['steps'])} (not calibrated)"


def linear_first(cand: dict, steps: int) -> float:
    """λ of a linear schedule ``{"k", "b"}`` at the first of ``steps`` steps (t = steps − 1; b is the last step's)."""
    return cand["k"] * (steps - 1) + cand["b"]


def seed_sets(seed: int, n_samples: int, count: int) -> list:
    """The seed sets of calibration (``seed·10000019 + j·n_samples …``): search sets first, then validation."""
    base = seed * 10_000_019
    return [list(range(base + j * n_samples, base + (j + 1) * n_samples)) for j in range(count)]


class Ticker:
    """``[k/total] what (cached)  elapsed`` lines, one per finished part."""

    def __init__(self, total: int, log: Callable = print):
        self.total, self.done, self.log, self.t0 = total, 0, log, time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def __call__(self, what: str, cached: bool) -> None:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {what}{' (cached)' if cached else ''}  {self.elapsed():6.0f} s")


class Paired:
    """Metric of a sampling setting on the fixed search / validation seed sets, cached by a key."""

    def __init__(self, metric, search_sets, val_sets, log=None):
        self.metric, self.sets = metric, {"search": search_sets, "val": val_sets}
        self.cache, self.log = {}, log

    def __call__(self, key: str, draw: Callable, which: str = "search") -> list:
        k = (which, key)
        if k not in self.cache:  # NaN or inf is refused: it would give a NaN gain read as "not significant"
            from ..diagnostics.calibrate import finite_value

            name = getattr(self.metric, "name", "the metric")
            self.cache[k] = [finite_value(self.metric(draw(seeds)), name) for seeds in self.sets[which]]
        return self.cache[k]

    def mean(self, key, draw, which="search") -> float:
        return float(np.mean(self(key, draw, which)))


def method_result(val, base_val, param: dict, label: str, search=None) -> dict:
    from ..diagnostics.calibrate import paired_gain

    per, g, ci = paired_gain(base_val, val)
    return {"param": param, "label": label, "val": list(map(float, val)), "gain": g, "gain_ci": list(ci),
            "gain_per_set": per, "significant": bool(ci[1] < 0), "search": search or []}


def search_lambda(ev: Paired, draw_lam: Callable, prefix: str, lo: float, hi: float, coarse: int, refine: int):
    """1-D coarse-to-fine λ search (calibrate's) on the search sets; returns (best λ, evaluations)."""
    from ..diagnostics.calibrate import search_1d

    evals = []

    def score(lam):
        m = ev.mean(f"{prefix}|lam={lam!r}", lambda seeds: draw_lam(lam, seeds))
        evals.append({"lam": lam, "mean": m})
        return m

    from ..progress import task

    with task((max(coarse, 2) + 2 * refine) * sum(len(s) for s in ev.sets["search"])):  # for the ETA
        best, _ = search_1d(score, lo, hi, max(coarse, 2), refine, floor=0.0)
    return float(best), evals
