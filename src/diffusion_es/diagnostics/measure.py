"""Exposure-bias diagnostics of the paper, on any denoiser, built on the samplers' per-step callback.

Per sampling step i (noise level σ_i, VP ᾱ_i = 1 / (1 + σ_i²)):

* **ε-norm gap**: mean over samples of ‖ε‖ (Frobenius norm over all C·H·W entries) along a normal sampling run
  from pure noise, against the same on training-style inputs ``x = x_0 + σ_i ε`` built from real data. Both the
  raw network ε (``eps_raw``) and the ε the sampler actually used (``eps_used`` = ε_θ / λ under ES) are kept.
* **δ_t** (variance error): real x_0 is diffused to the first step with q, then sampled normally; per step the
  per-pixel standard deviation over samples of ``x̂_t − sqrt(ᾱ_t) x_0`` (VP space, same x_0) averaged over pixels
  gives σ̂_t, and ``δ_t = (σ̂_t − sqrt(1 − ᾱ_t))²``.
* **Var(x_t)**: the mean per-pixel variance over samples of the VP sample x̂_t along sampling, against that of
  training-style x_t (same σ, real data).

Everything is reported per *step* evaluation (for Heun, the first evaluation of each step). "VP space" above is the
sampler's own process: for the rectified-flow samplers (``flow_euler``, ``flow_heun``) x_t = (1 − t) x_0 + t ε,
so σ̂_t is compared with t and Var(x_t) is taken of the flow state. ε is the same ε in every frame.

A grid that starts at σ = ∞ (flow models, zero-terminal-SNR VP chains): the first step's input is pure noise in
both runs, so its ε-norm ratio is 1 by construction (ε is exact there, and ES leaves that step alone); δ_t's run
then starts at the first finite σ (real x_0 diffused there with q), since nothing of x_0 survives σ = ∞, and its
step-0 entry is the σ = ∞ input itself (pure noise: σ̂ ≈ 1 = b).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..progress import advance as _advance, task as _task
from ..devices import check_device
from ..errors import UsageError
from ..core.param import as_denoiser, implied_eps, noised, process_coefficients, sigma_to_flow_space, sigma_to_vp_space
from ..samplers import SamplingPlan, SeedNoise, default_schedule, resolve_batch_size
from ..core.scaling import LambdaSchedule, SigmaKeyed, as_schedule, check_made_for, epsilon_scaled
from ..core.schedules import VPSchedule

__all__ = ["ExposureCurves", "measure_exposure", "training_eps_norms", "estimate_lambda", "plot_exposure"]


@dataclass
class ExposureCurves:
    """Per-step curves of one (sampler, steps, λ schedule) setting. Lists are in sampling order."""

    sampler: str
    steps: int
    es: Optional[dict]
    n_samples: int
    sigma: list
    t: list
    lam: list
    eps_norm_train: list
    eps_norm_sample_raw: list
    eps_norm_sample_used: list
    var_train: list
    var_sample: list
    sigma_hat: list
    sigma_true: list
    delta: list = field(default_factory=list)

    @property
    def ratio_raw(self) -> np.ndarray:
        return np.asarray(self.eps_norm_sample_raw) / np.asarray(self.eps_norm_train)

    @property
    def ratio_used(self) -> np.ndarray:
        return np.asarray(self.eps_norm_sample_used) / np.asarray(self.eps_norm_train)

    def summary(self) -> dict:
        return {
            "sampler": self.sampler, "steps": self.steps, "es": self.es, "n_samples": self.n_samples,
            "mean_ratio_raw": float(self.ratio_raw.mean()), "mean_ratio_used": float(self.ratio_used.mean()),
            "frac_steps_sampling_above_training": float((self.ratio_raw > 1).mean()),
            "sum_delta": float(np.sum(self.delta)),
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio_raw"] = self.ratio_raw.tolist()
        d["ratio_used"] = self.ratio_used.tolist()
        d["summary"] = self.summary()
        return d

    def write_csv(self, path) -> None:
        from ..io import atomic_path

        cols = ["sigma", "t", "lam", "eps_norm_train", "eps_norm_sample_raw", "eps_norm_sample_used",
                "var_train", "var_sample", "sigma_hat", "sigma_true", "delta"]
        with atomic_path(path, suffix=".csv") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step"] + cols + ["ratio_raw", "ratio_used"])
                for i in range(len(self.sigma)):
                    w.writerow([i] + [getattr(self, c)[i] for c in cols] + [self.ratio_raw[i], self.ratio_used[i]])


def _check_data(data: torch.Tensor, shape, n_min: int = 2) -> torch.Tensor:
    if tuple(data.shape[1:]) != tuple(shape):
        raise UsageError(f"data shape {tuple(data.shape[1:])} does not match the model's sample shape {tuple(shape)}; "
                         f"use data of the kind the model was trained on")
    if data.shape[0] < n_min:
        raise UsageError(f"need at least {n_min} real samples for the statistics, got {data.shape[0]}")
    if not bool(torch.isfinite(data).all()):
        raise UsageError("the data contains NaN or inf values; pass real samples x_0 (finite numbers)")
    return data.to(torch.float64)


def _check_data_range(data: torch.Tensor, denoiser) -> None:
    """Data far outside the range a model clips its x̂_0 to (``clip_x0`` r: data in [-r, r]) are not the data it was
    trained on: images in [0, 255] measured against a model of [-1, 1] images gave ε-norm ratios far below 1, read
    as the opposite of exposure bias. Beyond 2r is refused; models without a clipping range are not checked."""
    r = getattr(denoiser, "clip_x0", None)
    if r is None:
        return
    lo, hi = float(data.min()), float(data.max())
    if max(-lo, hi) > 2 * r:
        raise UsageError(f"the data lie in [{lo:.4g}, {hi:.4g}], but this model's data lie in [-{r:g}, {r:g}] (the "
                         f"range it clips x̂_0 to): scale them as it was trained (uint8 images: x / 127.5 − 1)")


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).norm(dim=1)


def _pick(data: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if n <= data.shape[0]:
        return data[torch.randperm(data.shape[0], generator=g)[:n]]
    return data[torch.randint(data.shape[0], (n,), generator=g)]


def _to_state(x, sigma: float, process: str):
    return sigma_to_flow_space(x, sigma) if process == "flow" else sigma_to_vp_space(x, sigma)


def training_eps_norms(denoiser, x0: torch.Tensor, sigmas: Sequence[float], seed: int = 0,
                       batch_size: int = 512, process: str = "vp", pfgm_D=None):
    """Mean ‖ε_θ(x_0 + σ ε, σ)‖ and mean per-pixel Var(x_t) (of the ``process``'s state, VP or flow) on
    training-style inputs, for each σ (σ = ∞: the input is the noise itself). ``pfgm_D``: a PFGM++ model's D;
    its training-style inputs are the PFGM++ kernel's ``x_0 + σ·√w·ε`` (:mod:`diffusion_es.core.pfgm`)."""
    from ..core.pfgm import generator_scales

    den = as_denoiser(denoiser)
    g = torch.Generator().manual_seed(seed)
    norms, varis = [], []
    with torch.no_grad():
        for s in sigmas:
            tot, xt_all = 0.0, []
            for b in range(0, x0.shape[0], batch_size):
                xb = x0[b:b + batch_size]
                z = torch.randn(xb.shape, generator=g, dtype=torch.float64).to(xb.device)
                scale = generator_scales(g, len(xb), pfgm_D)
                if scale is not None:
                    z = z * scale.to(z.device).reshape(-1, *([1] * (z.ndim - 1)))
                x = noised(xb, z, float(s))
                eps = implied_eps(x, den(x, float(s)), float(s))
                tot += float(_flat_norm(eps).sum())
                xt_all.append(_to_state(x, float(s), process))
            norms.append(tot / x0.shape[0])
            varis.append(float(torch.cat(xt_all).var(dim=0).mean()))
    return norms, varis


def _es_record(es: Optional[LambdaSchedule]) -> Optional[dict]:
    """The λ schedule as the result records it: its JSON form, or for a sigma-keyed (callable) one, which has none,
    its kind and the function's name (its λ per step is the result's ``lam``)."""
    if es is None:
        return None
    if isinstance(es, SigmaKeyed):
        return {"kind": es.kind, "fn": getattr(es.fn, "__qualname__", repr(es.fn))}
    return es.to_dict()


def measure_exposure(denoiser, data: torch.Tensor, sampler: str, steps: int, schedule: Optional[VPSchedule] = None,
                     es: Union[LambdaSchedule, float, None] = None, n_samples: int = 500, seed: int = 0,
                     batch_size="auto", shape: Optional[Sequence[int]] = None, device="cpu",
                     spacing: str = "adm", **sampler_kwargs) -> ExposureCurves:
    """Run the paper's two diagnostics (plus Var(x_t)) for one sampler setting. ``data``: real x_0, (N, *shape),
    a tensor or an array; ``shape``: the model's sample shape, checked against the data when given. ``es``: a λ
    schedule or a number (uniform λ). ``batch_size``: samples per sampling batch, ``"auto"`` (default):
    :func:`~diffusion_es.samplers.auto_batch_size`."""
    if schedule is None:
        schedule = default_schedule(denoiser)
    if n_samples < 2:
        raise UsageError(f"need at least 2 samples for per-pixel statistics, got {n_samples}")
    es = as_schedule(es)
    check_device(device)
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or not data.is_floating_point():
        raise UsageError(f"data must be real samples x_0 as a float tensor or array of shape (N, *sample_shape), got "
                         f"{type(data).__name__}{' ' + str(tuple(data.shape)) if hasattr(data, 'shape') else ''}")
    shape = tuple(data.shape[1:]) if shape is None else tuple(shape)
    data = _check_data(data, shape)
    _check_data_range(data, denoiser)
    batch_size = resolve_batch_size(batch_size, denoiser, shape, device)
    plan = SamplingPlan(sampler, steps, schedule, spacing=spacing)
    sampler_kwargs = plan.spec.resolve(sampler_kwargs)
    check_made_for(es, plan.sampler, plan.steps, plan.spacing)  # a λ file made for another setting
    den = epsilon_scaled(as_denoiser(denoiser), es, plan.sigmas)
    n = plan.steps
    # λ of each sampling step, as the sampler applies it: keyed on the step's σ_i (under EDM churn the network is
    # evaluated at σ̂_i > σ_i but still gets λ_i, see EpsilonScaled's step_sigma)
    lam_steps = [1.0] * n if es is None else [float(v) for v in es.bind(plan.sigmas)(plan.sigmas)]
    seeds = list(range(seed * 1_000_003, seed * 1_000_003 + n_samples))
    used_sum, raw_sum, xs = np.zeros(n), np.zeros(n), [[] for _ in range(n)]
    sig_eval = np.zeros(n)
    dev_steps = [[] for _ in range(n)]

    def record_free(info):  # normal sampling run from pure noise
        if info.stage != "step":
            return
        used = _flat_norm(info.eps)
        used_sum[info.i] += float(used.sum())
        raw_sum[info.i] += float(used.sum()) * lam_steps[info.i]
        sig_eval[info.i] = info.sigma
        xs[info.i].append(info.x_state.cpu())

    with torch.no_grad(), _task(2 * n_samples):  # a free run and a δ_t run per seed
        for b in range(0, n_samples, batch_size):
            batch = seeds[b:b + batch_size]
            noise = SeedNoise(batch, shape, device, pfgm_D=plan.pfgm_D)
            plan.run(den, noise.initial(), noise, callback=record_free, **sampler_kwargs)
            # δ_t protocol: real x_0 diffused to the first (finite) step with the same seeds' noise, then sampled
            x0 = _pick(data, n_samples, seed + 1)[b:b + len(batch)].to(device)
            noise = SeedNoise(batch, shape, device, pfgm_D=plan.pfgm_D)
            z = noise.initial()
            start = 1 if (np.isinf(plan.sigmas[0]) and n > 1) else 0
            if start:  # step 0 at σ = ∞: the input is the noise itself, x_t − 0·x_0 = z
                dev_steps[0].append(z.cpu())

            def record_delta(info, x0=x0, start=start):
                if info.stage == "step":
                    a = process_coefficients(plan.process, info.sigma)[0]
                    dev_steps[info.i + start].append((info.x_state - a * x0).cpu())

            plan.run_from(den, noised(x0, z, float(plan.sigmas[start])), noise, callback=record_delta, start=start,
                          **sampler_kwargs)
            _advance(2 * len(batch))
    train_norms, var_train = training_eps_norms(denoiser, _pick(data, n_samples, seed + 2).to(device), sig_eval,
                                                seed=seed + 3, process=plan.process, pfgm_D=plan.pfgm_D)
    sigma_hat = [float(torch.cat(d).std(dim=0).mean()) for d in dev_steps]
    # PFGM++: the kernel's per-coordinate sd is σ·sqrt(E w) = σ·sqrt(D/(D − 2)) (D > 2)
    kernel_sd = 1.0 if not np.isfinite(plan.pfgm_D) else (
        float(np.sqrt(plan.pfgm_D / (plan.pfgm_D - 2))) if plan.pfgm_D > 2 else float("nan"))
    sigma_true = [kernel_sd * float(process_coefficients(plan.process, float(s))[1]) for s in sig_eval]
    if plan.chain is not None:
        t_list = plan.chain.timesteps[::-1].astype(float).tolist()
    elif plan.process == "flow":
        t_list = plan.grid[:-1].tolist()
    else:
        t_list = schedule.sigma_to_t(sig_eval).tolist()
    return ExposureCurves(
        sampler=sampler, steps=n, es=_es_record(es), n_samples=n_samples,
        sigma=sig_eval.tolist(), t=t_list, lam=lam_steps,
        eps_norm_train=train_norms, eps_norm_sample_raw=(raw_sum / n_samples).tolist(),
        eps_norm_sample_used=(used_sum / n_samples).tolist(), var_train=var_train,
        var_sample=[float(torch.cat(v).var(dim=0).mean()) for v in xs],
        sigma_hat=sigma_hat, sigma_true=sigma_true,
        delta=[(a - b) ** 2 for a, b in zip(sigma_hat, sigma_true)],
    )


def estimate_lambda(curves: ExposureCurves, kind: str = "uniform", skip_first: int = 1):
    """Metric-free λ from the ε-norm curves of a *baseline* run: λ_i = ‖ε_sample‖ / ‖ε_train‖ per step, so that
    the used ε norm along sampling matches the training curve.

    ``uniform`` returns the mean ratio over steps (the first ``skip_first`` steps are left out: at pure noise the
    sampling and training inputs coincide), ``linear`` a least-squares line in the paper's t (t = 0 last step),
    ``per_step`` the ratios themselves. Returns a :class:`LambdaSchedule`.
    """
    from ..core.scaling import Linear, PerStep, Uniform

    if curves.es is not None:
        raise UsageError("estimate λ from a baseline run (no ES)")
    r = curves.ratio_raw
    if kind == "per_step":
        return PerStep(r.tolist())
    rr = r[skip_first:] if len(r) > skip_first + 1 else r
    if kind == "uniform":
        return Uniform(float(rr.mean()))
    if kind == "linear":
        if len(rr) < 2:
            raise UsageError(f"a linear λ estimate needs at least 2 sampling steps, the run has {len(r)}")
        n = len(r)
        t = np.arange(n - 1, -1, -1, dtype=np.float64)[len(r) - len(rr):]
        k, b = np.polyfit(t, rr, 1)
        return Linear(float(k), float(b))
    raise UsageError(f"unknown estimate kind {kind!r}: use uniform, linear or per_step")


def plot_exposure(curves_list: Sequence[ExposureCurves], path, title: str = "") -> None:
    """Three panels: ε-norm (training vs sampling, raw and used), δ_t, Var(x_t); one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    base = curves_list[0]
    steps = np.arange(len(base.sigma))
    ax[0].plot(steps, base.eps_norm_train, "k-", lw=2, label="training inputs x_t from real data")
    for c in curves_list:
        tag = "baseline" if c.es is None else f"ES {_es_label(c.es)}"
        ax[0].plot(steps, c.eps_norm_sample_raw, "--", label=f"sampling, raw ε_θ ({tag})")
        if c.es is not None:
            ax[0].plot(steps, c.eps_norm_sample_used, "-", label=f"sampling, used ε_θ/λ ({tag})")
        ax[1].plot(steps, c.delta, "-o", ms=3, label=tag)
        ax[2].plot(steps, c.var_sample, "-", label=f"sampling ({tag})")
    ax[2].plot(steps, base.var_train, "k-", lw=2, label="training")
    ax[0].set_title("mean ‖ε‖ per step")
    ax[1].set_title("δ_t = (σ̂_t − b_t)²  (flow: b = t)" if base.sampler.startswith("flow_")
                    else "δ_t = (σ̂_t − √(1−ᾱ_t))²")
    ax[1].set_yscale("log")
    ax[2].set_title("Var(x_t) per pixel")
    for a in ax:
        a.set_xlabel("sampling step (0 = noisiest)")
        a.legend(fontsize=7)
    fig.suptitle(title or f"exposure bias: {base.sampler}, {base.steps} steps, {base.n_samples} samples")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _es_label(es: dict) -> str:
    if es["kind"] == "uniform":
        return f"λ={es['b']:.4g}"
    if es["kind"] == "linear":
        return f"k={es['k']:.3g}, b={es['b']:.4g}"
    return "per-step λ"
