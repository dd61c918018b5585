"""Results -> report blocks: ``("h1"|"h2"|"h3", text)``, ``("p", text)``, ``("table", rows)``, ``("img", file, alt)``.

One list of blocks feeds both renderers (:mod:`.report`), so report.md and report.html never disagree. The
repro report (:func:`repro_blocks`) and the comparison of fixes (:func:`compare_blocks`) are built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (CHURN_GAMMAS, EDM_METHODS, S_NOISE_RANGE, SAMPLER_NAMES, VP_METHODS,
                     exposure_es_text, linear_first, schedule_text)

__all__ = ["repro_blocks", "compare_blocks", "cost_line", "ip_text", "ip_gamma_text"]

def _pct(v) -> str:
    return f"{100 * v:+.1f} %"


def _cell_text(c) -> str:
    base, es = np.mean(c["baseline_val"]), np.mean(c["best_val"])
    lo, hi = c["gain_ci"]
    mark = "" if c["significant"] else " (worse)" if lo > 0 else " (n.s.)"
    return (f"{base:.3f} → {es:.3f} (λ {c['candidate']['b']:.4f}, {_pct(c['gain'])} "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}]{mark})")


def _paired(base, best) -> tuple:
    """Mean of best − base over seed sets and the half-width of its 95 % t-interval."""
    from ..diagnostics.calibrate import mean_t_interval

    return mean_t_interval(np.asarray(best, float) - np.asarray(base, float))


def _pr_text(c) -> str:
    """Precision and recall, baseline → ES, with a mark where the change is beyond the noise."""
    ev = c.get("extra_val", {})
    parts = []
    for key, short in (("precision", "P"), ("recall", "R")):
        if key in ev:
            b, e = ev[key]["baseline"], ev[key]["best"]
            d, h = _paired(b, e)
            mark = "↑" if d - h > 0 else ("↓" if d + h < 0 else "")
            parts.append(f"{short} {np.mean(b):.3f}→{np.mean(e):.3f}{mark}")
    return ", ".join(parts)


def repro_command(r: dict) -> str:
    """The command that made a repro report: as it was typed (the CLI records it), else rebuilt from its config."""
    cfg = r["config"]
    if cfg.get("command"):
        return cfg["command"]
    return (f"diffusion-es repro{' --quick' if cfg['quick'] else ''}"
            f"{'' if r['model'] == 'default' else ' --model ' + r['model']}"
            f"{'' if cfg.get('min_lambda') is None else ' --min-lambda %g' % cfg['min_lambda']}")


def cost_line(r: dict) -> str:
    """What the results cost: the compute time of all their parts (cached ones included) and this invocation's."""
    on = f" on {r['hardware']}" if r.get("hardware") else ""
    return (f"Compute time of all parts {r.get('compute_time_s', 0) / 60:.1f} min (this invocation "
            f"{r['wall_time_s'] / 60:.1f} min{on}, {r.get('parts_from_cache', 0)} of {r.get('parts', 0)} parts "
            "from an earlier run)")


def power_text(p: dict) -> str:
    """The power statement of a repro run."""
    from .power import MAX_PLANNED_SETS, detectable_effect, sd_upper_bound

    need = p["sets_needed"] if p["sets_needed"] is not None else f"more than {MAX_PLANNED_SETS:,}"
    planned = sd_upper_bound(p["sd_paired"], len(p["baseline"]), 0.8)
    detectable = detectable_effect(planned, p["n_val_sets"]) if planned > 0 else 0.0
    pairing = ("; pairing cancels most of the seed-set noise" if p["sd_paired"] < p["sd_metric_rel"] / 2 else
               "; pairing does not help here: the λ change moves the samples more than the seeds do"
               if p["sd_paired"] >= p["sd_metric_rel"] else "")
    txt = (f"Power: at {p['steps']} steps ({SAMPLER_NAMES[p['sampler']]}), {p['n_samples']} samples per set, the "
           f"metric varied by {100 * p['sd_metric_rel']:.1f} % (sd over {len(p['baseline'])} seed sets) and its "
           f"*paired* change (λ = {p['lam_probe']} vs 1 on the same seeds) by {100 * p['sd_paired']:.2f} % "
           f"(sd{pairing}). "
           f"A paired t-test then needs {need} seed sets to detect a {100 * p['effect']:.0f} % change "
           f"with 80 % power at α = 0.05 (planned with an 80 % upper bound on that sd); this run uses "
           f"**{p['n_val_sets']} validation sets**, so its 95 % intervals are about ±{100 * p['resolvable']:.1f} % "
           "wide")
    if p.get("capped"):
        txt += (f" (capped by the profile: with {p['n_val_sets']} sets it detects a change of about "
                f"{100 * detectable:.1f} % with 80 % power, on the same planning bound)")
    return txt + (". The reference's own noise is the same in every set: it does not widen these paired intervals, "
                  "but it limits what they say beyond this reference (docs/metrics.md).")


def _lambda_verdict(lin: dict, exp: dict) -> str:
    """Plain words on what a calibrated linear schedule is: the paper's ES (λ ≥ 1 everywhere) or a sharpening
    trade (λ < 1 at the last steps), with the diagnostics that say so."""
    cand, steps = lin["candidate"], lin["steps"]
    first, last = linear_first(cand, steps), cand["b"]
    ev = lin.get("extra_val", {})
    pieces = []
    for key in ("precision", "recall", "nn_dist_train", "fd_train"):
        if key in ev:
            d, h = _paired(ev[key]["baseline"], ev[key]["best"])
            pieces.append(f"{key} {np.mean(ev[key]['baseline']):.3g} → {np.mean(ev[key]['best']):.3g} "
                          f"({d:+.3g} ± {h:.2g})")
    txt = f"{SAMPLER_NAMES[lin['sampler']]}: λ runs from {first:.3f} (first step) to {last:.3f} (last step)"
    if exp:
        b, e = exp["baseline"], exp["es"]
        txt += (f"; mean used-ε/training ε-norm ratio {b['mean_ratio_raw']:.4f} without ES, {e['mean_ratio_used']:.4f} "
                "with it")
    txt += ("; " + "; ".join(pieces)) if pieces else ""
    rec = ev.get("recall")
    recall_drop = rec is not None and sum(_paired(rec["baseline"], rec["best"])) < 0
    below = [cand["k"] * t + cand["b"] for t in range(steps) if cand["k"] * t + cand["b"] < 0.99]
    if below:
        verdict = (f"**not Epsilon Scaling in the paper's sense**: λ < 0.99 at the last {len(below)} of {steps} steps "
                   "(down to {:.3f}), where it *enlarges* the predicted noise and sharpens samples".format(min(below)))
        verdict += (", and recall of the held-out data falls: fidelity bought with diversity" if recall_drop else
                    "; recall does not fall beyond the noise")
    else:
        verdict = f"Epsilon Scaling in the paper's sense (λ ≥ 0.99 at every step, {min(first, last):.3f} at the least)"
        if recall_drop:
            verdict += ", but recall of the held-out data falls"
    return f"{txt}. Verdict: {verdict}."


def repro_blocks(r: dict) -> list:
    cfg = r["config"]
    blocks = [("h1", "Epsilon Scaling reproduction report")]
    extra_names = ", ".join(r.get("reference", {}).get("extra", []))
    blocks.append(("p", f"Model: `{r['model']}`; data: `{r.get('data', cfg['data'])}`; primary metric: "
                        f"**{r['metric']}** (lower is better): the reference is data the model never saw unless the "
                        f"name says otherwise; beside it on the same samples: {extra_names or 'nothing'}. "
                        f"{cfg['n_samples']} samples per seed set; λ chosen on {cfg['n_sets']} search seed set(s), gains "
                        f"measured on {cfg['n_val_sets']} fresh validation seed sets with identical noise for baseline "
                        f"and ES (paired). {cost_line(r)}. Generated by `{repro_command(r)}`; do not edit by hand "
                        f"(rerun the command: it resumes from the finished parts)."))
    if cfg.get("min_lambda") is not None:
        blocks.append(("p", f"Every λ search was kept to λ_t ≥ {cfg['min_lambda']:g} at every step (`--min-lambda`)"
                            + (": only Epsilon Scaling in the paper's sense, which shrinks the predicted noise."
                               if cfg["min_lambda"] >= 1 else ".")))
    if r.get("power"):
        blocks.append(("p", power_text(r["power"])))
    blocks.append(("h2", "The paper's claims, checked on our numbers"))
    rows = [["claim", "reproduced", "evidence"]]
    for c in r["claims"]:
        rows.append([c["claim"], {True: "yes", False: "**no**", None: "inconclusive"}[c["reproduced"]], c["evidence"]])
    blocks.append(("table", rows))

    blocks.append(("h2", "Main table: baseline → ES at the calibrated λ"))
    blocks.append(("p", f"Each cell: {r['metric']} on the validation seed sets without ES → with ES (uniform λ, chosen "
                        "on the search sets with the same metric), the λ, and the relative change with its 95 % "
                        "t-interval over validation seed sets (n.s.: not significant, the calibration would keep "
                        "λ = 1; worse: the whole interval above 0); then precision (P) and recall (R) against the held-out data on the same samples "
                        "(↑/↓: a paired change beyond the noise). A fidelity-for-diversity trade shows as P↑ with R↓. "
                        "Heun with N steps costs 2N − 1 evaluations."))
    nfes = cfg["nfe"]
    rows = [["sampler"] + [f"{n} NFE" for n in nfes]]
    for s in cfg["samplers"]:
        row = [SAMPLER_NAMES[s]]
        for n in nfes:
            c = next((c for c in r["table"] if c["sampler"] == s and c["nfe_cell"] == n), None)
            if c is None:
                row.append("–")
                continue
            txt = _cell_text(c)
            if c["nfe_per_sample"] != n:
                txt += f" · {c['nfe_per_sample']} NFE"
            pr = _pr_text(c)
            row.append(txt + (f" · {pr}" if pr else ""))
        rows.append(row)
    blocks.append(("table", rows))
    extra = [k for k in ("kid_x1000", "fd_train", "nn_dist_train")
             if any(k in c.get("extra_val", {}) for c in r["table"])]
    if extra:
        blocks.append(("p", "Secondary measures on the same validation samples (baseline → ES; not used for choosing "
                            "λ): `kid_x1000`, the unbiased KID (× 1000) against the same held-out data, a check on "
                            "FD's small-sample bias; `fd_train`, the same FD against the training split (it rewards "
                            "copying training "
                            "images); `nn_dist_train`, the mean pixel distance of a sample to its nearest training image "
                            "(a drop means samples move toward copies)."))
        rows = [["sampler", "NFE"] + extra]
        for c in r["table"]:
            rows.append([SAMPLER_NAMES[c["sampler"]], str(c["nfe_per_sample"])] + [
                f"{np.mean(c['extra_val'][k]['baseline']):.4g} → {np.mean(c['extra_val'][k]['best']):.4g}"
                if k in c.get("extra_val", {}) else "–" for k in extra])
        blocks.append(("table", rows))
    rows = [["sampler", "NFE", "λ=1 metric", "baseline metric (set 1)", "identical"]]
    for c in r["table"]:
        rows.append([SAMPLER_NAMES[c["sampler"]], str(c["nfe_per_sample"]), f"{c['lambda1_metric']:.6f}",
                     f"{c['baseline_val'][0]:.6f}", "yes" if c["lambda1_equals_baseline"] else "**no**"])
    blocks.append(("h3", "Invariant: λ = 1 through the ES wrapper equals the baseline"))
    blocks.append(("table", rows))

    if r["linear"]:
        blocks.append(("h2", "Uniform vs linear λ at 20 steps"))
        blocks.append(("p", "Both schedules are chosen on the same primary metric on the search sets and measured on "
                            "the same validation sets."))
        rows = [["sampler", "baseline", "uniform (b)", "linear schedule chosen", "linear gain vs baseline",
                 "P, R (baseline → linear)"]]
        for lin in r["linear"]:
            cell = next((c for c in r["table"] if c["sampler"] == lin["sampler"] and c["steps"] == lin["steps"]),
                        None)
            cand = lin["candidate"]
            lab = schedule_text(cand, lin["steps"]) + ("" if cand["kind"] == "linear" else " kept")
            lo, hi = lin["gain_ci"]
            rows.append([SAMPLER_NAMES[lin["sampler"]], f"{np.mean(lin['baseline_val']):.3f}",
                         f"{np.mean(cell['best_val']):.3f} (b={cell['candidate']['b']:.4f})" if cell else "–",
                         f"{np.mean(lin['best_val']):.3f} ({lab})",
                         f"{_pct(lin['gain'])} [{100 * lo:+.1f}, {100 * hi:+.1f}]", _pr_text(lin) or "–"])
        blocks.append(("table", rows))
        edge = [lin for lin in r["linear"] if lin.get("at_range_edge")]
        if edge:
            blocks.append(("p", "At the edge of the search: " + "; ".join(
                f"{SAMPLER_NAMES[lin['sampler']]}: {lin['message'].split('note: ', 1)[-1]}" for lin in edge) + "."))
        blocks.append(("h3", "What the linear schedule does"))
        for lin in r["linear"]:
            if lin["candidate"]["kind"] != "linear":
                continue
            exp = r.get("exposure_linear", {}).get(lin["sampler"])
            blocks.append(("p", _lambda_verdict(lin, exp)))
            fig = r["figures"].get(f"exposure_linear_{lin['sampler']}")
            if fig:
                blocks.append(("img", fig, f"used ε with the linear schedule, {lin['sampler']}"))

    blocks.append(("h2", "Exposure bias along sampling"))
    blocks.append(("p", "Left: mean ‖ε‖ per step on training inputs (real data, forward-noised) and along sampling "
                        "(dashed: raw network output; solid: the ε the sampler used, ε_θ/λ). Middle: δ_t, the variance "
                        "error of the paper. Right: per-pixel Var(x_t)."))
    for s, e in r["exposure"].items():
        blocks.append(("img", r["figures"][f"exposure_{s}"], f"exposure bias, {s}"))
        b, es = e["baseline"], e["es"]
        blocks.append(("p", f"{s}: mean sampling/training ε-norm ratio {b['mean_ratio_raw']:.4f} (baseline), "
                            f"{es['mean_ratio_used']:.4f} (ES, used ε, {exposure_es_text(r['table'], s, es)}); "
                            f"{b['steps']} steps; Σδ_t {b['sum_delta']:.4g} → "
                            f"{es['sum_delta']:.4g}."))
    blocks.append(("h2", "λ curves"))
    blocks.append(("img", r["figures"]["lambda_curves"], "metric vs λ"))
    blocks.append(("img", r["figures"]["lambda_vs_steps"], "optimal λ vs steps"))
    if "compare" in r:
        blocks.extend(compare_blocks(r["compare"]))
    return blocks


def _fmt_method(m: dict, is_base: bool, best: bool) -> str:
    mean, sd = float(np.mean(m["val"])), float(np.std(m["val"], ddof=1)) if len(m["val"]) > 1 else 0.0
    v = f"{mean:.2f} ± {sd:.2f}"
    if best:
        v = f"**{v}**"
    if is_base:
        return v
    lo, hi = m["gain_ci"]
    mark = "" if m["significant"] else (", worse" if lo > 0 else ", n.s.")
    return f"{v} ({100 * m['gain']:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}]{mark}) · {m['label']}"


def _table(cells, methods, col_of) -> list:
    cols = sorted({col_of(c) for c in cells})
    rows = [["method"] + [f"{c} {'steps' if cells[0]['kind'] == 'vp' else 'NFE'}" for c in cols]]
    by_col = {col_of(c): c for c in cells}
    best = {}
    for col, c in by_col.items():
        means = {k: float(np.mean(v["val"])) for k, v in c["methods"].items()}
        best[col] = min(means, key=means.get)
    for meth in methods:
        if not any(meth in c["methods"] for c in cells):
            continue
        row = [meth]
        for col in cols:
            c = by_col[col]
            m = c["methods"].get(meth)
            row.append("–" if m is None else _fmt_method(m, meth == "baseline", best[col] == meth))
        rows.append(row)
    return rows


def ip_gamma_text(prov: dict) -> str:
    """The IP rows' label: ``γ 0.1`` from the IP model's own record, ``γ ?`` where it records none."""
    g = prov.get("ip_gamma")
    return "γ ?" if g is None else f"γ {g:g}"


def ip_text(name: str, prov: dict) -> str:
    """One sentence on the IP model for the report, from :func:`ip_provenance`."""
    g = prov.get("ip_gamma")
    if g is None:
        return (f"the IP model `{name}` records no training options, so its ip_gamma and its recipe are unknown "
                f"(the IP rows are labelled γ ?)")
    txt = f"the IP model `{name}` was trained with ip_gamma {g:g}"
    if g == 0:
        txt += " (no input perturbation: its rows are a retrained baseline, not DDPM-IP)"
    unlike = []
    if prov.get("options_differ") is None:
        unlike.append("the base model records no training options to compare")
    elif prov["options_differ"]:
        unlike.append("training options " + ", ".join(prov["options_differ"]))
    if prov.get("steps") != prov.get("base_steps"):
        unlike.append(f"{prov.get('steps')} training steps against {prov.get('base_steps')}")
    if not prov.get("same_network", True):
        unlike.append("the network")
    if not prov.get("same_diffusion", True):
        unlike.append("the diffusion process")
    if unlike:
        return txt + "; it differs from the base model in: " + "; ".join(unlike)
    return txt + f", with the base model's network, diffusion, recipe and budget ({prov.get('steps')} steps)"


def compare_blocks(results: dict) -> list:
    """Report blocks (``("h2", text)``, ``("p", text)``, ``("table", rows)``) of a compare result, in the format of
    :func:`diffusion_es.experiments.report.build_blocks`, so the section can be added to the repro report."""
    cfg = results["config"]
    ss = results["seed_sets"]
    blocks = [("h2", "Epsilon Scaling and the other fixes for exposure bias, on the same model and noise")]
    ip_txt = ("no IP model was given (pass --ip-model PATH or --train-ip)" if not results.get("ip_model") else
              ip_text(Path(results["ip_model"]).name, results.get("ip_provenance") or {}))
    blocks.append(("p", f"Primary metric: **{results['metric']}** (lower is better). Every method's parameter was "
                        f"chosen on {ss['search']} search seed set(s) and measured on {ss['val']} fresh validation seed "
                        f"sets of {ss['n_samples']} samples each; all methods use the same seed sets, hence identical "
                        f"initial and step noise (paired). Each cell: validation mean ± sd over seed sets, the relative "
                        f"change against the baseline of the same sampler and steps with its 95 % t-interval "
                        f"(n.s.: the interval includes 0; worse: it lies above 0), and the tuned parameter; the best "
                        f"mean per column is bold. "
                        f"ES: uniform λ (searched from the sampler's range and walked past an end of it while that "
                        f"end wins, so λ < 1 can be chosen); TS: Time-Shift sampler (window w, cutoff t_c; rule "
                        f"`{results['ts_rule']}`, data variance {results['ts_data_var']:.4f}); {ip_txt}."))
    vp = [c for c in results["cells"] if c["kind"] == "vp"]
    for s in cfg["samplers"]:
        cs = [c for c in vp if c["sampler"] == s]
        if cs:
            blocks.append(("h3", SAMPLER_NAMES[s]))
            blocks.append(("table", _table(cs, VP_METHODS, lambda c: c["steps"])))
    edm = [c for c in results["cells"] if c["kind"] == "edm"]
    for s in cfg["edm_samplers"]:
        cs = [c for c in edm if c["sampler"] == s]
        if cs:
            blocks.append(("h3", f"{SAMPLER_NAMES[s]} (stochastic churn: S_churn, S_noise)"))
            blocks.append(("table", _table(cs, EDM_METHODS, lambda c: c["nfe"])))
    if edm:
        blocks.append(("p", "EDM rows: baseline and ES are deterministic (S_churn = 0); churn searches EDM's S_churn "
                            "(per-step γ = S_churn / steps in {" + ", ".join(map(str, CHURN_GAMMAS)) + "}) with "
                            f"S_noise = 1; S_noise (searched from [{S_NOISE_RANGE[0]}, {S_NOISE_RANGE[1]}], upward "
                            f"past {S_NOISE_RANGE[1]} while the upper end wins) only acts "
                            "through the churn noise; the last row adds ES on top."))
    ok = [c.get("ts_window1_equals_baseline") for c in vp]
    if ok:
        blocks.append(("p", f"Invariant: the Time-Shift sampler with window 1 reproduced the baseline's metric exactly "
                            f"in {sum(bool(v) for v in ok)} of {len(ok)} cells."))
    return blocks


