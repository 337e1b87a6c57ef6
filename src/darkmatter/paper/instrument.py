"""The paper's account of the instrument: the SAE's quality against its bar, why it costs what it
costs (the splice diagnosis), its training curve, its axes (L0, width, seed) and the seed spread.

Every number comes from ``sae_eval.json`` (the main SAE), ``sae.json`` (its recipe) and
``sae_axes.json`` (:mod:`darkmatter.sae.axes`); wording that depends on the numbers is chosen
here from enumerated options, each with its condition, like the rest of the generator.
"""

from __future__ import annotations

from darkmatter.paper.format import ci_word, fmt_about, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, fmt_sci, fmt_sig, table

#: The quality bar the main SAE is held to (issue: "An SAE that deserves the name").
BAR = {"fvu": 0.08, "dead_fraction": 0.15, "delta_loss": 0.6, "loss_recovered": 0.97, "l0": (15, 40)}
#: The half-width a ΔLM interval should not exceed (the same issue), main SAE and axes alike.
CI_TARGET = 0.1

SPLICE_ROWS = (
    ("ordinary", "reconstruction at ordinary tokens only"),
    ("nonspecial", "\\quad + high-norm tokens (the default splice)"),
    ("all", "\\quad + special tokens (every position)"),
    ("zero", "zero ablation (non-special tokens)"),
    ("noise_isotropic", "$x+\\epsilon$, $\\|\\epsilon\\|=\\|r\\|$, isotropic"),
    ("noise_error_covariance", "$x+\\epsilon$, $\\|\\epsilon\\|=\\|r\\|$, $\\epsilon\\sim\\mathcal{N}(0,\\Sigma_r)$"),
    ("error_0.25", "$x-0.25\\,r$"),
    ("error_0.5", "$x-0.5\\,r$"),
    ("error_0.75", "$x-0.75\\,r$"),
    ("error_top_pcs", "$x-P r$ ($r$'s top PCs, half its variance)"),
    ("error_other_pcs", "$x-(I-P) r$ (the other half)"),
    ("error_without_mean", "$x-(r-\\bar r)$ (the error without its mean)"),
)


def ci_text(entry: dict, digits: int = 2) -> str:
    return f"{fmt_fixed(entry['mean'], digits)} {fmt_ci(entry['ci'], digits)}"


def bar_word(value: float, ci: list[float] | None, limit: float, below_is_good: bool = True) -> str:
    """``meets``/``misses`` a one-sided bar; with an interval, the whole interval must be on the good side."""
    worst = value if ci is None else (ci[1] if below_is_good else ci[0])
    return "meets" if (worst <= limit if below_is_good else worst >= limit) else "misses"


def splice_table(ev: dict) -> str:
    variants = ev["lm"]["variants"]
    rows = [[label, ci_text(variants[name]["delta_loss"]), ci_text(variants[name]["kl"])]
            for name, label in SPLICE_ROWS if name in variants]
    return table("lrr", ["layer-$L$ residual", "$\\Delta$LM (nats)", "KL (nats)"], rows)


def axes_table(axes: dict, ev: dict, train: dict) -> str:
    """The main SAE and its training curve, then every axis point (reference first)."""
    def row(label, tokens, p):
        return [label, fmt_count(tokens), fmt_sig(p["l0"], 3), fmt_fixed(p["fvu"]), fmt_pct(p["dead_fraction"], 0),
                f"{fmt_fixed(p['delta_loss'], 2)} {fmt_ci(p['delta_loss_ci'], 2)}", fmt_fixed(p["loss_recovered"], 3)]

    curve = ev.get("training_curve") or []
    rows = [row("main SAE, after" if i < len(curve) - 1 else "main SAE", p["tokens"], p) for i, p in enumerate(curve)]
    rows.append(None)
    tokens = axes["train_tokens"]
    seen = set()
    for setting, label in (("l0_coefficient", "$\\lambda={}$"), ("width", "width {}"), ("seed", "seed {}")):
        for p in axes["axes"][setting]:
            if p["name"] in seen and p["name"] == axes["reference"]:
                continue
            seen.add(p["name"])
            value = fmt_sci(p[setting]) if setting == "l0_coefficient" else fmt_count(p[setting])
            name = label.format(value) + (" (reference)" if p["name"] == axes["reference"] else "")
            rows.append(row(name, tokens, p))
    header = ["SAE", "tokens", "L0", "FVU", "dead", "$\\Delta$LM [CI]", "recovered"]
    return table("lrrrrrr", header, rows)


def seed_range(spread: dict | None, key: str, digits: int) -> str | None:
    """``min--max`` of a headline over the SAE seeds, or None where fewer than two seeds have it."""
    if not spread or key not in spread or spread[key]["n"] < 2:
        return None
    return f"{fmt_fixed(spread[key]['min'], digits)}--{fmt_fixed(spread[key]['max'], digits)}"


def seed_spread_phrase(spread: dict | None, key: str, tokens: int, digits: int = 3) -> str:
    """``n SAE seeds of N tokens: min--max`` for a headline, or that this build has no such spread."""
    span = seed_range(spread, key, digits)
    if span is None:
        return "no SAE-seed spread in this build"
    return f"the recipe after {fmt_count(tokens)} training tokens, {spread[key]['n']} SAE seeds: {span}"


def seed_verdicts(axes: dict) -> dict[str, str]:
    """How many SAE seeds give each ICA verdict (the chain's single-restart-pair ICA)."""
    from collections import Counter

    points = {p["name"]: p for setting in axes["axes"].values() for p in setting}
    seeds = [points[name] for name in axes["seeds"]["points"]]
    if len(seeds) < 2 or any("ica_novel_p_two_sided" not in p for p in seeds):
        return {"SeedNovelAgreement": "not measured (the seed axis's chain did not run)"}
    words = [("exceeds" if p["ica_novel_fraction"] > p["ica_novel_null_mean"] else "falls below")
             if p["ica_novel_p_two_sided"] < 0.05 else "does not differ significantly from" for p in seeds]
    tally = "; ".join(f"{n} of {len(words)}: {w}" for w, n in Counter(words).most_common())
    return {"SeedNovelAgreement": f"the same for all {len(words)} SAE seeds ({words[0]})" if len(set(words)) == 1
            else f"not the same across SAE seeds ({tally})"}


def instrument_macros(ev: dict, train: dict, axes: dict) -> dict[str, str]:
    lm = ev["lm"]
    d = lm.get("diagnosis", {})
    cfg = train["config"]
    spread = axes["seeds"]["spread"]
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
        "SaeBarFvu": bar_word(ev["fvu"], None, BAR["fvu"]),
        "SaeBarDead": bar_word(ev["dead_fraction"], None, BAR["dead_fraction"]),
        "SaeBarDeltaLoss": bar_word(lm["delta_loss"], lm["delta_loss_ci"], BAR["delta_loss"]),
        "SaeBarRecovered": bar_word(lm["loss_recovered"], lm["loss_recovered_ci"], BAR["loss_recovered"], below_is_good=False),
        "SaeBarLzero": "inside" if BAR["l0"][0] <= ev["l0"] <= BAR["l0"][1] else "outside",
        "AxesTokens": fmt_count(axes["train_tokens"]),
        **{f"SeedSpread{name}": seed_spread_phrase(spread, key, axes["train_tokens"], digits) for name, key, digits in (
            ("Fvu", "dark_matter_fraction", 3), ("KurtR", "kurtosis_r_median", 2), ("Novel", "ica_novel_fraction", 2))},
        "BarFvu": fmt_fixed(BAR["fvu"], 2), "BarDead": fmt_pct(BAR["dead_fraction"], 0),
        "BarDeltaLoss": fmt_fixed(BAR["delta_loss"], 1), "BarRecovered": fmt_fixed(BAR["loss_recovered"], 2),
        "BarLzero": f"{BAR['l0'][0]}--{BAR['l0'][1]}",
        **seed_verdicts(axes),
    }
    met = {"$\\Delta$LM": m["SaeBarDeltaLoss"], "loss-recovered": m["SaeBarRecovered"], "FVU": m["SaeBarFvu"],
           "dead-latent": m["SaeBarDead"]}
    meets = [k for k, v in met.items() if v == "meets"]
    misses = [k for k, v in met.items() if v == "misses"]
    m["SaeBarsSummary"] = ("meets every bar set for it" if not misses else "misses every bar set for it" if not meets else
                           f"meets the {' and '.join(meets)} bars and misses the {' and '.join(misses)} bars")
    chained = seed_range(spread, "dark_matter_fraction", 3) is not None
    with_ica = seed_range(spread, "ica_novel_fraction", 2) is not None
    m["SeedChainSentence"] = (
        "The reference and the seed axis also go through the residual, ICA (two restarts) and comparison stages, "
        "which gives every dark-matter headline a spread over SAEs that differ in nothing but their seed." if with_ica else
        "The reference and the seed axis also go through the residual stage, which gives the FVU and kurtosis "
        "headlines a spread over SAEs that differ in nothing but their seed; their ICA and comparison stages are one "
        "switch of the pipeline (\\texttt{sae\\_axes.chain\\_ica}) that this build did not run, as it does not fit "
        "the two-core budget, so ICA's headlines carry no seed spread here." if chained else
        "Their dark-matter chain (residual, ICA, comparison) is a switch of the pipeline (\\texttt{sae\\_axes.chain}) "
        "that this build did not run: the dark-matter headlines carry no seed spread here, the SAE's own numbers do.")
    m["SeedHeadlineSentence"] = (
        f"the dark-matter headlines below carry the same seed spread, and the ICA novelty verdict is "
        f"{m['SeedNovelAgreement']}." if with_ica else
        "the FVU and kurtosis headlines below carry the same seed spread (ICA's do not: its seed chain did not run)."
        if chained else "the dark-matter headlines below carry no seed spread (the seed chain did not run).")
    m["SeedStableSentence"] = (f"Across two restarts each, SAEs of the other seeds keep "
                               f"{seed_range(spread, 'ica_stable_restarts', 0)} components." if with_ica else "")
    m["SeedCount"] = fmt_count(spread["fvu"]["n"]) if spread else "0"
    for name, key, digits in (("SaeFvu", "fvu", 3), ("DeltaLoss", "delta_loss", 2)):
        m[f"SeedRange{name}"] = seed_range(spread, key, digits) or "(not measured)"
    dead = spread.get("dead_fraction", {}) if spread else {}
    m["SeedRangeDead"] = (f"{fmt_pct(dead['min'], 0)}--{fmt_pct(dead['max'], 0)}" if dead.get("n", 0) > 1
                          else "(not measured)")
    m["SeedLimitation"] = (
        "the dark-matter headlines carry its spread." if with_ica else
        "the FVU and kurtosis headlines carry its spread; ICA's would too, with the switch of the seed chain that this "
        "build did not run." if chained else "no headline carries its spread in this build (its chain did not run).")
    axis_points = [p for setting in axes["axes"].values() for p in setting]
    half = max((p["delta_loss_ci"][1] - p["delta_loss_ci"][0]) / 2 for p in axis_points)
    m["AxesCIHalfWidth"] = fmt_fixed(half, 2)
    m["MainCIHalfWidth"] = fmt_fixed((lm["delta_loss_ci"][1] - lm["delta_loss_ci"][0]) / 2, 2)
    m["AxesRowsNeeded"] = fmt_about(lm["n_rows"] * (half / CI_TARGET) ** 2)  # a mean's interval narrows as 1/sqrt(rows)
    m["CITarget"] = fmt_fixed(CI_TARGET, 1)
    reference = next(p for p in axis_points if p["name"] == axes["reference"])
    m["AxesReferenceDeltaLoss"] = fmt_fixed(reference["delta_loss"], 1)
    m["AxesShare"] = f"1/{train['tokens'] / axes['train_tokens']:.0f}"
    curve = ev.get("training_curve") or []
    m["SaeCurveDead"] = ("not measured (no training curve)" if len(curve) < 2 else
                         f"from {fmt_pct(curve[0]['dead_fraction'], 0)} after {fmt_count(curve[0]['tokens'])} tokens to "
                         f"{fmt_pct(curve[-1]['dead_fraction'], 0)} after {fmt_count(curve[-1]['tokens'])}")
    check = ev.get("saelens_crosscheck")
    m["CrosscheckVerdict"] = ("was not run" if check is None else
                              f"{'agree' if check['agree'] else 'do not agree'} to within {fmt_sci(check['tolerance'])} "
                              f"(largest difference {fmt_sci(max(max(check['abs_difference'].values()), 1e-12))}, on "
                              f"{fmt_count(len(check['rows']))} rows)")
    falls = axes["l0_axis_delta_loss_falls"]
    m["LzeroAxisVerdict"] = ("falls as L0 rises" if falls["strictly"] else
                             "falls as L0 rises within its intervals (no rise outside them)" if falls["holds"] else
                             "does not fall as L0 rises: it rises outside the intervals between "
                             + ", ".join(f"{a} and {b}" for a, b in falls["rises_outside_ci"]))
    widths = axes["axes"]["width"]
    m["WidthFvuVerdict"] = ("falls" if all(b["fvu"] < a["fvu"] for a, b in zip(widths, widths[1:])) else
                            "rises" if all(b["fvu"] > a["fvu"] for a, b in zip(widths, widths[1:])) else
                            "does not change monotonically")
    m["WidthRange"] = f"{fmt_count(widths[0]['width'])}--{fmt_count(widths[-1]['width'])}"
    m["WidthFvuRange"] = f"{fmt_fixed(widths[0]['fvu'])} to {fmt_fixed(widths[-1]['fvu'])}"
    m["WidthDeadRange"] = f"{fmt_pct(widths[0]['dead_fraction'], 0)} to {fmt_pct(widths[-1]['dead_fraction'], 0)}"
    if not d:
        return m
    v = lm["variants"]
    noise = d["same_norm_noise"]
    parts = d["error_parts"]
    scale = d["error_scale"]
    m |= {
        "SpliceAllDiff": ci_text({"mean": d["where"]["all_minus_nonspecial"]["difference"], "ci": d["where"]["all_minus_nonspecial"]["ci"]}),
        "SpliceOrdinaryDiff": ci_text({"mean": d["where"]["ordinary_minus_nonspecial"]["difference"],
                                       "ci": d["where"]["ordinary_minus_nonspecial"]["ci"]}, 3),
        "NoiseIsoDelta": ci_text(v["noise_isotropic"]["delta_loss"]),
        "NoiseCovDelta": ci_text(v["noise_error_covariance"]["delta_loss"]),
        "NoiseIsoVerdict": ci_word(noise["isotropic_minus_sae"], "less", "more", "no more and no less"),
        "NoiseCovVerdict": ci_word(noise["error_covariance_minus_sae"], "less", "more", "no more and no less"),
        "NoiseCovDiff": ci_text({"mean": noise["error_covariance_minus_sae"]["difference"], "ci": noise["error_covariance_minus_sae"]["ci"]}),
        "NoiseCovP": fmt_p(noise["error_covariance_minus_sae"]["p_permutation"]),
        "ErrorHalfDelta": ci_text(v["error_0.5"]["delta_loss"]),
        "ErrorHalfKL": ci_text(v["error_0.5"]["kl"], 3),
        "KLExponent": fmt_fixed(scale["kl_exponent"], 2),
        "KLExponentCI": fmt_ci(scale["kl_exponent_ci"]),
        "KLExponentVerdict": ("grows faster than quadratically" if scale["kl_exponent_ci"][0] > 2 else
                              "grows more slowly than quadratically" if scale["kl_exponent_ci"][1] < 2 else
                              "grows about quadratically"),
        "TopPcs": fmt_count(lm["error_geometry"]["half_variance_pcs"]),
        "TopPcsDelta": ci_text(v["error_top_pcs"]["delta_loss"]),
        "OtherPcsDelta": ci_text(v["error_other_pcs"]["delta_loss"]),
        "PartsVerdict": ci_word(parts["top_minus_other_pcs"], "its top principal components", "its low-variance directions",
                                "both halves alike"),
        "PartsSumVerdict": ci_word(parts["parts_sum_minus_whole"], "more", "less", "no more and no less"),
        "WithoutMeanDelta": ci_text(v["error_without_mean"]["delta_loss"]),
        "PositionFirst": ci_text(d["by_position"]["delta_loss"][0]),
        "PositionLast": ci_text(d["by_position"]["delta_loss"][-1]),
    }
    return m


def curve_verdict(ev: dict) -> str:
    """Is the main SAE converged? Compare the last two points of its training curve."""
    curve = ev.get("training_curve") or []
    if len(curve) < 2:
        return "no training curve was recorded"
    a, b = curve[-2], curve[-1]
    fvu_drop = (a["fvu"] - b["fvu"]) / a["fvu"]
    overlap = not (b["delta_loss_ci"][1] < a["delta_loss_ci"][0])
    state = ("still improving" if fvu_drop > 0.02 or not overlap else "close to converged")
    return (f"{state}: from {fmt_count(a['tokens'])} to {fmt_count(b['tokens'])} training tokens FVU moves from "
            f"{fmt_fixed(a['fvu'])} to {fmt_fixed(b['fvu'])} and $\\Delta$LM from {fmt_fixed(a['delta_loss'], 2)} to "
            f"{fmt_fixed(b['delta_loss'], 2)}")
