"""The dark-matter headline: the ``\\dm...`` macros the abstract and the method and results sections
quote, from the main run's metrics.

:func:`macro_numbers` gives every macro that is a number; :func:`macro_context` gives what
``paper/sections/macros_headline.tex.j2`` words the rest with: verdict keys and the numbers they embed.
"""

from __future__ import annotations

from collections import Counter

from darkmatter.paper.format import (ALPHA, ci_side, fmt_about, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, fmt_sci, fmt_sig,
                                     p_side)
from darkmatter.stats import CI_LEVEL

#: Display names of the models this project defines (data, not wording).
MODEL_NAMES = {"gemma-3-270m": "Gemma 3 270M", "smollm2-135m": "SmolLM2 135M"}
REQUIRED = ("activations", "sae", "sae_eval", "residual", "ica", "compare")


def across_fits(keys: list[str]) -> dict:
    """One verdict key per ICA fit -> whether every fit agrees, and the tally.

    ICA's optimum moves with the last bit of its inputs, so a verdict about the ICA solution is
    printed only when every fit (restarts and resamples) gives it.
    """
    return {"n": len(keys), "agree": len(set(keys)) == 1, "verdict": keys[0], "tally": Counter(keys).most_common()}


def stable_key(ica: dict) -> str:
    stable = ica["stable_fraction"]
    if stable is None:
        return "unmeasured"
    return "most" if stable > 0.5 else "minority" if stable >= 0.25 else "small_minority" if stable > 0 else "none"


def on_this_builds_sae(identity: dict, run: dict) -> bool:
    """Whether a committed bench result ran on this build's SAE (its held-out FVU and L0)."""
    ev = run["sae_eval"]
    return (identity["sae_fvu"], identity["sae_l0"]) == (ev["fvu"], ev["l0"])


def detection(d: dict | None, run: dict) -> dict | None:
    """The detection limits measured by ``bench/bench_detection.py`` (None where it has not run): each
    firing rate's boundary share of var(r), and whether it was measured on this build's SAE and k."""
    if d is None:
        return None
    ident = d["identity"]
    shares = sorted({c["share"] for c in d["cells"]})
    rates = sorted({c["rate"] for c in d["cells"]})
    current = on_this_builds_sae(ident, run) and ident["ica_k"] == run["ica"]["n_components"]
    return {"current": current, "measured_fvu": fmt_fixed(ident["sae_fvu"]), "commit": d["commit"],
            "k": fmt_count(d["k"]), "threshold": fmt_fixed(d["threshold"], 1), "sources": fmt_count(d["n_sources"]),
            "tokens": fmt_count(d["n_tokens"]), "largest": fmt_pct(shares[-1], 1), "smallest": fmt_pct(shares[0], 1),
            "rates": [{"rate": fmt_pct(rate, 1), "boundary": None if d["boundary"][str(rate)] is None
                       else fmt_pct(d["boundary"][str(rate)], 1)} for rate in rates]}


def k_sweep(d: dict | None, run: dict) -> dict | None:
    """ICA refitted at other k (``bench/bench_k_sweep.py``; None where it has not run): per k the variance
    kept, the components stable across two restarts, novelty against rotations and the fits' time, and
    whether it was measured on this build's SAE."""
    if d is None:
        return None
    ident = d["identity"]
    points = [{"k": fmt_count(p["k"]), "kept": fmt_pct(p["variance_kept"], 0), "stable": fmt_count(p["n_stable"]),
               "novel": fmt_pct(p["novel_fraction"], 0), "null": fmt_pct(p["novel_null_mean"], 0),
               "p": fmt_p(p["novel_p_two_sided"]), "seconds": fmt_count(round(p["seconds"])), "converged": p["converged"]}
              for p in d["points"]]
    most = max(d["points"], key=lambda p: (p["stable_fraction"], -p["k"]))
    return {"current": on_this_builds_sae(ident, run), "measured_fvu": fmt_fixed(ident["sae_fvu"]),
            "commit": d["commit"], "tokens": fmt_count(d["n_tokens"]), "points": points, "run_k": fmt_count(d["k_run"]),
            "auto": fmt_count(d["k_auto_uncapped"]), "share": fmt_pct(d["auto_variance"], 0), "cap": fmt_count(d["max_components"]),
            "capped": d["k_auto_uncapped"] > d["max_components"], "most_stable_k": fmt_count(most["k"]),
            "most_stable_fraction": fmt_pct(most["stable_fraction"], 0)}


def ellipticity(e: dict | None) -> dict | None:
    """The ellipticity test (``metrics/runs/<run>/ellipticity.json``; None where it has not run): its
    verdict (``elliptical``, ``directional``, ``mixed``) and the numbers its sentence embeds."""
    if e is None:
        return None

    def reading(r: dict) -> dict:
        return {"observed": fmt_fixed(r["observed"], 2), "null": fmt_fixed(r["null_mean"], 2),
                "difference": fmt_fixed(r["difference"], 2), "ci": fmt_ci(r["ci"], 2), "p": fmt_p(r["p_two_sided"]),
                "side": ci_side(r)}

    kept = e["norms_kept"]
    return {"verdict": e["verdict"], "k": fmt_count(e["k"]), "predicted": fmt_fixed(e["predicted"], 2),
            "random_mean": fmt_fixed(e["random_mean"], 2), "sphere": fmt_fixed(e["sphere_kurtosis"], 3),
            "kept": reading(kept), "radial": reading(e["radial_removed"]), "surrogates": fmt_count(kept["n_surrogates"]),
            "tokens": fmt_count(kept["n_tokens"]), "documents": fmt_count(kept["n_clusters"])}


def macro_context(run: dict, limits: dict | None = None, ks: dict | None = None) -> dict:
    """Verdict keys (and the numbers their wording embeds) of the main run; ``limits`` and ``ks``: the
    committed bench results of the detection limits (``bench/detection.json``) and of the k sweep
    (``bench/k_sweep.json``), if any."""
    res, ica, cmp_ = run["residual"], run["ica"], run["compare"]
    gap, fits = cmp_["kurtosis_gap"], cmp_["ica_fits"]
    measured = ica["stability"]["measured"]
    ratio = gap["seed_definition"]["ratio_of_medians"]
    return {
        "fits": {
            "novel": across_fits([p_side(f["novel_fraction"], "p_more", "p_fewer") for f in fits]),
            "closer": across_fits([p_side(f["median_max_cos"], "p_closer", "p_farther") for f in fits]),
            "tails": across_fits([ci_side(f["ica_vs_random_whitened"]) for f in fits]),
        },
        "residual_shape": ci_side(res["shape"]),
        "stable": stable_key(ica),
        "stability_measured": measured,
        "n_stable": fmt_count(ica["n_stable"]) if ica["n_stable"] is not None else None,
        "n_stable_seeds": fmt_count(ica["stability"]["n_stable_seeds"]) if ica["stability"]["n_stable_seeds"] is not None else None,
        "n_stable_resamples": (fmt_count(ica["stability"]["n_stable_resamples"])
                               if ica["stability"]["n_stable_resamples"] is not None else None),
        "stable_fraction": fmt_pct(ica["stable_fraction"], 0) if measured else None,
        "n_components": fmt_count(ica["n_components"]),
        "gap": ci_side(gap["like_for_like"]),
        "seed_gap": ci_side(gap["seed_definition"]),
        "seed_gap_ratio": fmt_sig(ratio, 3) if ratio is not None else None,
        "converged": ica["all_converged"],
        "linear": "more" if res["linear_predictability"]["r2_heldout"] > 0.5 else "less",
        "outliers_excluded": res["tokens"]["outliers_excluded"],
        "ica_target": ica["target"],
        "detection": detection(limits, run),
        "ellipticity": ellipticity(run.get("ellipticity")),
        "k_sweep": k_sweep(ks, run),
    }


def macro_numbers(run: dict, main, corpus: dict) -> dict[str, str]:
    """``main`` is the main :class:`~darkmatter.config.Run`, ``run`` its metrics."""
    act, train, ev, res, ica, cmp_ = (run[k] for k in REQUIRED)
    lp = res["linear_predictability"]
    gap = cmp_["kurtosis_gap"]
    rot = cmp_["rotation_null"]
    iters = [r["n_iter"] for r in ica["runs"]]
    classes = res["tokens"]["classes"]
    return {
        "Model": MODEL_NAMES.get(main.model.name, main.model.name),
        "Layer": str(main.layer),
        "NLayers": str(main.model.n_layers),
        "DModel": fmt_count(main.model.d_model),
        "Hook": res["hook_name"].replace("_", "\\_"),
        "NTokens": fmt_count(act["n_tokens"]),
        "Context": fmt_count(main.context_length),
        "CorpusTokens": fmt_count(act["corpus_tokens"]["total"]),
        "CorpusDocs": fmt_count(corpus["totals"]["documents"]),
        "SpecialFrac": fmt_pct(act["special_fraction"], 2),
        "NormPosZero": fmt_count(round(act["norm_mean_position0"])),
        "NormNonspecial": fmt_count(round(act["norm_mean_nonspecial"])),
        "OutlierFactor": fmt_sig(classes["norm_factor"], 2),
        "OutlierCount": fmt_count(classes["counts"]["outlier"]),
        "SaeWidth": fmt_count(main.sae.width),
        "SaeTrainTokens": fmt_count(train["tokens"]),
        "SaeLambda": fmt_sci(main.sae.l0_coefficient),
        "HeldoutTokens": fmt_count(ev["n_tokens"]),
        "HeldoutAnalysed": fmt_count(res["tokens"]["n_heldout_analysed"]),
        "SaeLzero": fmt_sig(ev["l0"], 3),
        "SaeFvu": fmt_fixed(ev["fvu"]),
        "SaeLzeroSpecial": fmt_sig(ev["l0_with_special"], 3),
        "SaeDead": fmt_pct(ev["dead_fraction"]),
        "SaeDeltaLoss": fmt_fixed(ev["lm"]["delta_loss"], 2),
        "SaeKL": fmt_fixed(ev["lm"]["kl"], 2),
        "SaeCleanLoss": fmt_fixed(ev["lm"]["loss_clean"], 2),
        "SaeLossRecovered": fmt_fixed(ev["lm"]["loss_recovered"], 3),
        "SaeZeroAblation": fmt_fixed(ev["lm"]["delta_loss_zero_ablation"], 1),
        "Fvu": fmt_fixed(res["dark_matter_fraction"]),
        "FvuSpecial": fmt_fixed(res["dark_matter_fraction_with_special"]),
        "FvuWithOutliers": fmt_fixed(res["dark_matter_fraction_with_outliers"]),
        "FvuWithoutOutliers": fmt_fixed(res["dark_matter_fraction_without_outliers"]),
        "FvuAllRows": fmt_fixed(res["dark_matter_fraction_all_rows"]),
        "ErrNormFrac": fmt_fixed(res["error_norm_fraction"]["per_token"]["quantiles"]["0.5"]),
        "Rsq": fmt_fixed(lp["r2_heldout"]),
        "RsqTrain": fmt_fixed(lp["r2_train"]),
        "LinFrac": fmt_fixed(lp["linear_fraction"]),
        "NonlinFrac": fmt_fixed(lp["nonlinear_fraction"]),
        "MeanFrac": fmt_fixed(lp["mean_fraction"]),
        "RidgeAlpha": fmt_sci(lp["ridge_alpha"]) if lp["ridge_alpha"] > 0 else "0",
        "KurtX": fmt_fixed(res["kurtosis"]["x"]["quantiles"]["0.5"], 2),
        "KurtR": fmt_fixed(res["kurtosis"]["r"]["quantiles"]["0.5"], 2),
        "KurtRSpecial": fmt_fixed(res["kurtosis"]["r_with_special"]["quantiles"]["0.5"], 1),
        "KurtRand": fmt_fixed(res["kurtosis"]["r_random_directions"]["quantiles"]["0.5"], 2),
        "KurtShapeCI": fmt_ci(res["shape"]["ci"]),
        "KurtRMax": fmt_sig(res["kurtosis"]["r"]["max"], 3),
        "PcaHalf": fmt_count(res["pca"]["residual"]["n_components_50"]),
        "PcaNinety": fmt_count(res["pca"]["residual"]["n_components_90"]),
        "PcaNinetyNonlin": fmt_count(res["pca"]["nonlinear"]["n_components_90"]),
        "IcaK": fmt_count(ica["n_components"]),
        "IcaTokens": fmt_count(ica["n_tokens"]),
        "IcaResampleTokens": fmt_count(min(ica["resample_tokens"])) if ica["resample_tokens"] else "0",
        "IcaSeeds": fmt_count(ica["seeds"]),
        "IcaResamples": fmt_count(ica["resamples"]),
        "IcaVarFrac": fmt_pct(ica["pca_variance_fraction"]),
        "IcaItersMin": fmt_about(min(iters)),
        "IcaItersMax": fmt_about(max(iters)),
        "StableThreshold": fmt_fixed(ica["stability"]["threshold"], 1),
        "IcaKurtMedian": fmt_fixed(ica["source_kurtosis"]["quantiles"]["0.5"], 2),
        "IcaKurtMax": fmt_sig(ica["source_kurtosis"]["max"], 3),
        "IcaKurtOtherWayMax": fmt_sig(ica["outliers"]["source_kurtosis_other_way"]["max"], 3),
        "RandWhitenedKurtMedian": fmt_fixed(ica["random_whitened_kurtosis"]["quantiles"]["0.5"], 2),
        "NovelThreshold": fmt_fixed(cmp_["thresholds"]["novel_below"], 1),
        "MatchThreshold": fmt_fixed(cmp_["thresholds"]["match_above"], 1),
        "NovelIca": fmt_count(cmp_["ica"]["novel"]),
        "NovelIcaFrac": fmt_pct(cmp_["ica"]["novel_fraction"], 0),
        "NovelRandomFrac": fmt_pct(cmp_["random"]["novel_fraction"], 0),
        "NovelNullFrac": fmt_pct(rot["novel_fraction"]["null_mean"], 0),
        "NovelNullInterval": "[" + ", ".join(fmt_pct(v, 0) for v in rot["novel_fraction"]["null_interval"]) + "]",
        "NovelP": fmt_p(rot["novel_fraction"]["p_two_sided"]),
        "MatchedIca": fmt_count(cmp_["ica"]["matched"]),
        "NRandom": fmt_count(cmp_["random"]["n"]),
        "NRotations": fmt_count(rot["n_rotations"]),
        "MedianCosIca": fmt_fixed(cmp_["ica"]["median_max_cos"], 2),
        "MedianCosRandom": fmt_fixed(cmp_["random"]["median_max_cos"], 2),
        "MedianCosNull": fmt_fixed(rot["median_max_cos"]["null_mean"], 2),
        "MedianCosNullInterval": fmt_ci(rot["median_max_cos"]["null_interval"]),
        "MedianCosP": fmt_p(rot["median_max_cos"]["p_two_sided"]),
        "NActiveFeatures": fmt_count(gap["n_active_features"]),
        "ActiveFreq": fmt_pct(gap["active_frequency"], 1),
        "SaeLatentKurtMedian": fmt_sig(gap["seed_definition"]["median_a"], 3),
        "SaePreactKurtMedian": fmt_fixed(gap["like_for_like"]["median_a"], 2),
        "SeedGapDiff": fmt_sig(gap["seed_definition"]["difference"], 3),
        "SeedGapCI": fmt_ci(gap["seed_definition"]["ci"], 1),
        "GapDiff": fmt_fixed(gap["like_for_like"]["difference"], 2),
        "GapCI": fmt_ci(gap["like_for_like"]["ci"]),
        "GapP": fmt_p(gap["like_for_like"]["p_permutation"]),
        "IcaVsRandomDiff": fmt_fixed(gap["ica_vs_random_whitened"]["difference"], 2),
        "IcaVsRandomCI": fmt_ci(gap["ica_vs_random_whitened"]["ci"]),
        "PreactVsRandomDiff": fmt_fixed(gap["sae_preact_vs_random_x"]["difference"], 2),
        "PreactVsRandomCI": fmt_ci(gap["sae_preact_vs_random_x"]["ci"]),
        "FigDir": f"runs/{main.name}",
        "CILevel": fmt_pct(CI_LEVEL, 0),
        "Alpha": fmt_fixed(ALPHA, 2),
    }


def ladder_numbers(ladder: list[tuple[str, dict | None, dict | None | str]]) -> dict[str, str]:
    runnable = [r for _, _, r in ladder if r != "planned"]
    return {"LadderDone": fmt_count(sum(r is not None for r in runnable)), "LadderRunnable": fmt_count(len(runnable))}
