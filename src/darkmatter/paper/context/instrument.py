"""The instrument: the main SAE against its bar, the splice diagnosis, its training curve, its axes
(L0, width, seed), the seed spread and the dark matter along the width and seed axes, for
``macros_instrument.tex.j2``, ``tab_sae.tex.j2``, ``tab_chain.tex.j2`` and ``tab_splice.tex.j2``.

Every number comes from ``sae_eval.json`` (the main SAE), ``sae.json`` (its recipe) and
``sae_axes.json`` (:mod:`darkmatter.sae.axes`). :func:`macro_numbers` are the macros that are
numbers alone; :func:`macro_context` is what the words template needs (verdict keys and the
numbers its sentences embed).
"""

from __future__ import annotations

from collections import Counter

from darkmatter.paper.format import ci_side, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, fmt_sci, fmt_sig, significant

#: The quality bar the main SAE is held to (issue: "An SAE that deserves the name").
BAR = {"fvu": 0.08, "dead_fraction": 0.15, "delta_loss": 0.6, "loss_recovered": 0.97, "l0": (15, 40)}
#: The half-width a ΔLM interval should not exceed (the same issue), main SAE and axes alike.
CI_TARGET = 0.1
#: The splice table's rows, in order (their labels are in ``tab_splice.tex.j2``).
SPLICE_ROWS = ("ordinary", "nonspecial", "all", "zero", "noise_isotropic", "noise_error_covariance", "error_0.25", "error_0.5",
               "error_0.75", "error_top_pcs", "error_other_pcs", "error_without_mean")
#: The short axes of ``sae_axes.json`` (the seed axis is its own entry), in the table's order.
AXES = ("l0_coefficient", "width")


def _ci_text(entry: dict, digits: int = 2) -> str:
    return f"{fmt_fixed(entry['mean'], digits)} {fmt_ci(entry['ci'], digits)}"


def _difference(test: dict, digits: int = 2) -> str:
    return _ci_text({"mean": test["difference"], "ci": test["ci"]}, digits)


def bar(value: float, ci: list[float] | None, limit: float, below_is_good: bool = True) -> str:
    """``"meets"``/``"misses"`` a one-sided bar; with an interval, the whole interval must be on the good side."""
    worst = value if ci is None else (ci[1] if below_is_good else ci[0])
    return "meets" if (worst <= limit if below_is_good else worst >= limit) else "misses"


def bars(ev: dict) -> dict[str, str]:
    """The main SAE against each bar, in the order the summary names them (ΔLM, recovered, FVU, dead)."""
    lm = ev["lm"]
    return {"delta_loss": bar(lm["delta_loss"], lm["delta_loss_ci"], BAR["delta_loss"]),
            "recovered": bar(lm["loss_recovered"], lm["loss_recovered_ci"], BAR["loss_recovered"], below_is_good=False),
            "fvu": bar(ev["fvu"], None, BAR["fvu"]),
            "dead": bar(ev["dead_fraction"], None, BAR["dead_fraction"])}


def seed_range(spread: dict | None, key: str, digits: int) -> str | None:
    """``min--max`` of a headline over the SAE seeds, or None where fewer than two seeds have it."""
    if not spread or key not in spread or spread[key]["n"] < 2:
        return None
    return f"{fmt_fixed(spread[key]['min'], digits)}--{fmt_fixed(spread[key]['max'], digits)}"


def seed_spread(spread: dict | None, key: str, digits: int = 3) -> dict | None:
    """A headline's seed count and range, or None where this build has no such spread."""
    span = seed_range(spread, key, digits)
    return None if span is None else {"n": str(spread[key]["n"]), "span": span}


def novelty_key(point: dict) -> str:
    """An SAE's ICA novel fraction against its rotation null: ``"above"``, ``"below"`` (two-sided p, adjusted
    for the paper's family, below ALPHA) or ``"neither"``."""
    above = point["ica_novel_fraction"] > point["ica_novel_null_mean"]
    return ("above" if above else "below") if significant(point, point["ica_novel_p_two_sided"]) else "neither"


def novelty_keys(points: list[dict]) -> list[str] | None:
    """Each SAE's ICA novelty verdict (:func:`novelty_key`), or None where any of them had no ICA."""
    if any("ica_novel_p_two_sided" not in p for p in points):
        return None
    return [novelty_key(p) for p in points]


def seed_novelty(axes: dict) -> dict | None:
    """Each SAE seed's ICA novelty verdict (the main SAE's and the seed axis's, two restarts each) as a
    key, ``"above"`` (exceeds the rotation null), ``"below"`` or ``"neither"``, and their tally (most
    common first); None where the seed axis's chain did not run."""
    seeds = axes["seeds"]["members"]
    keys = novelty_keys(seeds) if len(seeds) > 1 else None
    if keys is None:
        return None
    return {"n": len(keys), "verdicts": keys, "same": len(set(keys)) == 1,
            "tally": [{"key": key, "count": count} for key, count in Counter(keys).most_common()]}


def seed_chain(spread: dict | None) -> str:
    """How far the seed axis's dark-matter chain ran: ``"ica"`` (residual, ICA, comparison),
    ``"residual"`` (the residual stage only) or ``"none"``."""
    if seed_range(spread, "ica_novel_fraction", 2) is not None:
        return "ica"
    return "residual" if seed_range(spread, "dark_matter_fraction", 3) is not None else "none"


def curve_state(ev: dict) -> dict | None:
    """Is the main SAE converged? The last two points of its training curve: ``"improving"`` where
    FVU still drops by more than 2% or the ΔLM intervals separate, else ``"converged"``; None
    without a curve."""
    curve = ev.get("training_curve") or []
    if len(curve) < 2:
        return None
    a, b = curve[-2], curve[-1]
    fvu_drop = (a["fvu"] - b["fvu"]) / a["fvu"]
    overlap = not (b["delta_loss_ci"][1] < a["delta_loss_ci"][0])
    return {"state": "improving" if fvu_drop > 0.02 or not overlap else "converged",
            "tokens": [fmt_count(a["tokens"]), fmt_count(b["tokens"])], "fvu": [fmt_fixed(a["fvu"]), fmt_fixed(b["fvu"])],
            "delta_loss": [fmt_fixed(a["delta_loss"], 2), fmt_fixed(b["delta_loss"], 2)]}


def curve_dead(ev: dict) -> dict | None:
    """The dead fraction at the first and last point of the training curve (None without a curve)."""
    curve = ev.get("training_curve") or []
    if len(curve) < 2:
        return None
    return {"dead": [fmt_pct(curve[0]["dead_fraction"], 0), fmt_pct(curve[-1]["dead_fraction"], 0)],
            "tokens": [fmt_count(curve[0]["tokens"]), fmt_count(curve[-1]["tokens"])]}


def crosscheck(ev: dict) -> dict | None:
    """The SAELens cross-check of the evaluation (None where it was not run)."""
    check = ev.get("saelens_crosscheck")
    if check is None:
        return None
    return {"agree": bool(check["agree"]), "tolerance": fmt_sci(check["tolerance"]),
            "largest": fmt_sci(max(max(check["abs_difference"].values()), 1e-12)), "rows": fmt_count(len(check["rows"]))}


def lzero_axis(axes: dict) -> dict:
    """Does ΔLM fall as L0 rises along the L0 axis: ``"strictly"``, ``"within"`` its intervals, or
    ``"rises"`` (with the pairs of points between which it rises outside them)."""
    falls = axes["l0_axis_delta_loss_falls"]
    key = "strictly" if falls["strictly"] else "within" if falls["holds"] else "rises"
    return {"key": key, "rises": [[str(a), str(b)] for a, b in falls["rises_outside_ci"]] if key == "rises" else []}


def width_fvu(widths: list[dict]) -> str:
    """FVU along the width axis: ``"falls"``, ``"rises"`` or ``"neither"`` (not monotonic)."""
    pairs = list(zip(widths, widths[1:]))
    if all(b["fvu"] < a["fvu"] for a, b in pairs):
        return "falls"
    return "rises" if all(b["fvu"] > a["fvu"] for a, b in pairs) else "neither"


def width_chain(widths: list[dict]) -> dict | None:
    """The dark matter along the width axis, narrowest to widest: its fraction, and ICA's novelty verdict
    at each width (None where the chain did not run on every width; ``novel`` None without ICA)."""
    if len(widths) < 2 or any("dark_matter_fraction" not in p for p in widths):
        return None
    keys = novelty_keys(widths)
    return {"widths": [fmt_count(p["width"]) for p in widths],
            "fraction": [fmt_fixed(p["dark_matter_fraction"]) for p in widths],
            "novel": None if keys is None else [fmt_pct(p["ica_novel_fraction"], 0) for p in widths],
            "verdicts": keys, "same": keys is not None and len(set(keys)) == 1,
            "by_verdict": [] if keys is None else [{"key": key, "widths": [fmt_count(p["width"]) for p, k in zip(widths, keys) if k == key]}
                                                   for key in dict.fromkeys(keys)]}


def kl_exponent(ci: list[float]) -> str:
    """KL's growth with the error's scale against quadratic: ``"faster"``, ``"slower"`` or ``"about"``."""
    return "faster" if ci[0] > 2 else "slower" if ci[1] < 2 else "about"


def macro_numbers(ev: dict, train: dict, axes: dict) -> dict[str, str]:
    """The instrument's macros that are numbers (intervals, ranges, counts), no words."""
    lm = ev["lm"]
    d = lm.get("diagnosis", {})
    cfg = train["config"]
    spread = axes["seeds"]["spread"]
    axis_points = [p for setting in axes["axes"].values() for p in setting]
    half = max((p["delta_loss_ci"][1] - p["delta_loss_ci"][0]) / 2 for p in axis_points)
    reference = next(p for p in axis_points if p["name"] == axes["reference"])
    widths = axes["axes"]["width"]
    m = {
        "SaeBatch": fmt_count(cfg["batch_size"]),
        "SaeLr": fmt_sci(cfg["lr"]),
        "SaeSteps": fmt_count(train["steps"]),
        "SaeEpochs": fmt_fixed(train["tokens"] / train["train_tokens_available"], 1),
        "SaeUniqueTokens": fmt_count(train["train_tokens_available"]),
        "SaeDeltaLossCI": fmt_ci(lm["delta_loss_ci"]),
        "SaeKLCI": fmt_ci(lm["kl_ci"]),
        "SaeLossRecoveredCI": fmt_ci(lm["loss_recovered_ci"], 3),
        "SaeLmRows": fmt_count(lm["n_rows"]),
        "SaeLmClusters": fmt_count(lm["n_clusters"]),
        "SaeLmPositions": fmt_count(lm["positions_per_row"]),
        "AxesTokens": fmt_count(axes["train_tokens"]),
        "MainTokens": fmt_count(train["config"]["train_tokens"]),
        "BarFvu": fmt_fixed(BAR["fvu"], 2), "BarDead": fmt_pct(BAR["dead_fraction"], 0),
        "BarDeltaLoss": fmt_fixed(BAR["delta_loss"], 1), "BarRecovered": fmt_fixed(BAR["loss_recovered"], 2),
        "BarLzero": f"{BAR['l0'][0]}--{BAR['l0'][1]}",
        "SeedCount": fmt_count(spread["fvu"]["n"]) if spread else "0",
        "AxesCIHalfWidth": fmt_fixed(half, 2),
        "MainCIHalfWidth": fmt_fixed((lm["delta_loss_ci"][1] - lm["delta_loss_ci"][0]) / 2, 2),
        "CITarget": fmt_fixed(CI_TARGET, 1),
        "AxesReferenceDeltaLoss": fmt_fixed(reference["delta_loss"], 1),
        "AxesShare": f"1/{train['tokens'] / axes['train_tokens']:.0f}",
        "WidthRange": f"{fmt_count(widths[0]['width'])}--{fmt_count(widths[-1]['width'])}",
    }
    if not d:
        return m
    v = lm["variants"]
    noise = d["same_norm_noise"]
    scale = d["error_scale"]
    return m | {
        "SpliceAllDiff": _difference(d["where"]["all_minus_nonspecial"]),
        "SpliceOrdinaryDiff": _difference(d["where"]["ordinary_minus_nonspecial"], 3),
        "NoiseIsoDelta": _ci_text(v["noise_isotropic"]["delta_loss"]),
        "NoiseCovDelta": _ci_text(v["noise_error_covariance"]["delta_loss"]),
        "NoiseCovDiff": _difference(noise["error_covariance_minus_sae"]),
        "NoiseCovP": fmt_p(noise["error_covariance_minus_sae"]["p_permutation"]),
        "ErrorHalfDelta": _ci_text(v["error_0.5"]["delta_loss"]),
        "ErrorHalfKL": _ci_text(v["error_0.5"]["kl"], 3),
        "KLExponent": fmt_fixed(scale["kl_exponent"], 2),
        "KLExponentCI": fmt_ci(scale["kl_exponent_ci"]),
        "TopPcs": fmt_count(lm["error_geometry"]["half_variance_pcs"]),
        "TopPcsDelta": _ci_text(v["error_top_pcs"]["delta_loss"]),
        "OtherPcsDelta": _ci_text(v["error_other_pcs"]["delta_loss"]),
        "WithoutMeanDelta": _ci_text(v["error_without_mean"]["delta_loss"]),
        "PositionFirst": _ci_text(d["by_position"]["delta_loss"][0]),
        "PositionLast": _ci_text(d["by_position"]["delta_loss"][-1]),
    }


def macro_context(ev: dict, train: dict, axes: dict) -> dict:
    """What ``macros_instrument.tex.j2`` words: verdict keys, and the numbers its sentences embed."""
    d = ev["lm"].get("diagnosis", {})
    spread = axes["seeds"]["spread"]
    verdicts = bars(ev)
    dead = spread.get("dead_fraction", {}) if spread else {}
    widths = axes["axes"]["width"]
    context = {
        "bars": verdicts,
        "meets": [name for name, key in verdicts.items() if key == "meets"],
        "misses": [name for name, key in verdicts.items() if key == "misses"],
        "lzero": "inside" if BAR["l0"][0] <= ev["l0"] <= BAR["l0"][1] else "outside",
        "axes_tokens": fmt_count(axes["train_tokens"]),
        "seed_spread": {"fvu": seed_spread(spread, "dark_matter_fraction", 3), "kurt_r": seed_spread(spread, "kurtosis_r_median", 2),
                        "novel": seed_spread(spread, "ica_novel_fraction", 2)},
        "seed_novelty": seed_novelty(axes),
        "main_tokens": fmt_count(train["config"]["train_tokens"]),
        "seed_chain": seed_chain(spread),
        "width_chain": width_chain(widths),
        "seed_ranges": {"sae_fvu": seed_range(spread, "fvu", 3), "delta_loss": seed_range(spread, "delta_loss", 2),
                        "dead": f"{fmt_pct(dead['min'], 0)}--{fmt_pct(dead['max'], 0)}" if dead.get("n", 0) > 1 else None},
        "curve": curve_state(ev),
        "curve_dead": curve_dead(ev),
        "crosscheck": crosscheck(ev),
        "lzero_axis": lzero_axis(axes),
        "width_fvu": width_fvu(widths),
        "width_fvu_range": [fmt_fixed(widths[0]["fvu"]), fmt_fixed(widths[-1]["fvu"])],
        "width_dead_range": [fmt_pct(widths[0]["dead_fraction"], 0), fmt_pct(widths[-1]["dead_fraction"], 0)],
        "diagnosis": None,
    }
    # Read only where the words print it (the seed chain ran ICA).
    context["seed_stable_range"] = seed_range(spread, "ica_stable_restarts", 0) if context["seed_chain"] == "ica" else None
    if d:
        noise, parts = d["same_norm_noise"], d["error_parts"]
        context["diagnosis"] = {
            "noise_iso": ci_side(noise["isotropic_minus_sae"]), "noise_cov": ci_side(noise["error_covariance_minus_sae"]),
            "kl_exponent": kl_exponent(d["error_scale"]["kl_exponent_ci"]),
            "parts": ci_side(parts["top_minus_other_pcs"]), "parts_sum": ci_side(parts["parts_sum_minus_whole"]),
        }
    return context


def axes_table(axes: dict, ev: dict, train: dict) -> dict:
    """``tab_sae.tex.j2``: the main SAE along its training curve, then every axis point (reference first),
    then the seed axis's retrainings of the main SAE."""
    def cells(tokens, p):
        return [fmt_count(tokens), fmt_sig(p["l0"], 3), fmt_fixed(p["fvu"]), fmt_pct(p["dead_fraction"], 0),
                f"{fmt_fixed(p['delta_loss'], 2)} {fmt_ci(p['delta_loss_ci'], 2)}", fmt_fixed(p["loss_recovered"], 3)]

    curve = ev.get("training_curve") or []
    main = [{"kind": "after" if i < len(curve) - 1 else "final", "cells": cells(p["tokens"], p)} for i, p in enumerate(curve)]
    tokens = axes["train_tokens"]
    points, seen = [], set()
    for setting in AXES:
        for p in axes["axes"][setting]:
            if p["name"] in seen and p["name"] == axes["reference"]:
                continue
            seen.add(p["name"])
            value = fmt_sci(p[setting]) if setting == "l0_coefficient" else fmt_count(p[setting])
            points.append({"setting": setting, "value": value, "reference": p["name"] == axes["reference"],
                           "cells": cells(tokens, p)})
    seeds = [{"value": fmt_count(p["seed"]), "cells": cells(p["train_tokens"], p)}
             for p in axes["seeds"]["members"] if p["name"] != "main"]
    return {"main": main, "points": points, "seeds": seeds}


def chain_table(axes: dict) -> dict:
    """``tab_chain.tex.j2``: the dark matter of every SAE the chain ran on, the width axis (narrowest first)
    then the seed axis (the main SAE first)."""
    def row(p):
        ica = "ica_novel_fraction" in p
        return [fmt_count(p["train_tokens"]), fmt_fixed(p["dark_matter_fraction"]), fmt_fixed(p["kurtosis_r_median"], 2),
                fmt_pct(p["ica_novel_fraction"], 0) if ica else "--", fmt_pct(p["ica_novel_null_mean"], 0) if ica else "--",
                fmt_p(p["ica_novel_p_two_sided"]) if ica else "--",
                f"{p['ica_stable_restarts']} of {p['ica_components']}" if ica else "--"]

    widths = [{"value": fmt_count(p["width"]), "reference": p["name"] == axes["reference"], "cells": row(p)}
              for p in axes["axes"]["width"] if "dark_matter_fraction" in p]
    seeds = [{"value": fmt_count(p["seed"]), "main": p["name"] == "main", "cells": row(p)}
             for p in axes["seeds"]["members"] if "dark_matter_fraction" in p]
    return {"widths": widths, "seeds": seeds}


def splice_table(ev: dict) -> dict:
    """``tab_splice.tex.j2``: ΔLM and KL of each splice variant that was measured."""
    variants = ev["lm"]["variants"]
    return {"rows": [{"name": name, "delta_loss": _ci_text(variants[name]["delta_loss"]), "kl": _ci_text(variants[name]["kl"])}
                     for name in SPLICE_ROWS if name in variants]}
