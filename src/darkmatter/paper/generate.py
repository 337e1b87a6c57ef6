"""The paper's numbers: metrics JSON -> ``paper/generated/*.tex`` (the ``paper_tables`` stage).

From the metrics files alone (``metrics/runs/<run>/``, the main run's and whatever other runs
exist), this writes:

- ``macros.tex``: a ``\\dm...`` command for every number the prose quotes, and the
  data-dependent words (``\\dmNovelVerdict`` is "exceeds" or "does not exceed", ...), chosen
  here from the numbers so the text never claims more than the metrics show;
- booktabs tables (``tab_*.tex``); rows whose run has no metrics say "not run";
- ``sec_*.tex`` for the later experiments (autointerp, probes, causal): their results when
  their metrics exist, otherwise a paragraph saying the experiment was not run in this build.

All formatting and rounding lives in :mod:`darkmatter.paper.format`. Every output is rewritten
on each run, so a number from an older run can never survive. A missing required metrics file
stops generation with one line naming the stage to run, before anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from darkmatter.errors import UserError, cli
from darkmatter.interp.calibration import UNITS as CALIBRATION_UNITS
from darkmatter.paper.format import ci_word, fmt_about, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, fmt_sci, fmt_sig, p_word, table
from darkmatter.paper.instrument import axes_table, curve_verdict, instrument_macros, splice_table
from darkmatter.paper.provenance import (RECORDER, Recorder, included_figures, note_absent, provenance_tex, read_lock,
                                         resolve_figure, track)
from darkmatter.paper.templates import SECTIONS, Templates
from darkmatter.stats import CI_LEVEL
from darkmatter.paper import context
import darkmatter.paper.context.causal  # noqa: F401
import darkmatter.paper.context.probes  # noqa: F401

REQUIRED = ("activations", "sae", "sae_eval", "residual", "ica", "compare")
LATER = ("autointerp", "probes", "causal")
MODEL_NAMES = {"gemma-3-270m": "Gemma 3 270M", "smollm2-135m": "SmolLM2 135M"}
NOT_RUN = "\\textit{not run}"
PLANNED = "\\textit{planned}"


# ---- inputs ---------------------------------------------------------------------------------

def read_run(metrics_dir: Path, required: bool) -> dict | None:
    """The metrics of one run, ``metrics_dir`` = ``metrics/runs/<run>`` (``None`` if absent and not required)."""
    out = {}
    for name in REQUIRED:
        path = metrics_dir / f"{name}.json"
        if not path.exists():
            if required:
                stage = {"sae_eval": "eval_sae"}.get(name, name)
                raise UserError(f"{path} is missing; run `dvc repro {stage}@{metrics_dir.name}` before generating the paper")
            return None
        out[name] = track(json.loads(path.read_text()), _source(path))
    for name in LATER:
        path = metrics_dir / f"{name}.json"
        out[name] = track(json.loads(path.read_text()), _source(path)) if path.exists() else note_absent(_source(path))
    return out


def _source(path: Path) -> str:
    """A metrics file's path as dvc.lock names it (``metrics/runs/<run>/<name>.json``)."""
    return "metrics/" + "/".join(path.parts[path.parts.index("runs"):] if "runs" in path.parts else path.parts[-1:])


# ---- data-dependent wording -----------------------------------------------------------------

def stable_word(ica: dict) -> str:
    stable = ica["stable_fraction"]
    if stable is None:
        return "not measured"
    return ("most" if stable > 0.5 else "a minority" if stable >= 0.25 else "only a small minority" if stable > 0 else "none")


def across_fits(words: list[str], disagree: str) -> tuple[str, str]:
    """One verdict per ICA fit -> (the verdict to print, a phrase saying on how many fits it holds).

    ICA's optimum moves with the last bit of its inputs, so a verdict about the ICA solution is
    printed only when every fit (restarts and resamples) gives it; otherwise ``disagree``.
    """
    from collections import Counter

    n = len(words)
    if n == 1:
        return words[0], "one ICA fit, not checked on restarts or resamples"
    if len(set(words)) == 1:
        return words[0], f"the same in each of the {n} ICA fits"
    tally = "; ".join(f"{count} of {n} fits: {word}" for word, count in Counter(words).most_common())
    return disagree, f"the {n} ICA fits disagree ({tally})"


def ica_fit_verdicts(cmp_: dict) -> dict[str, str]:
    """The verdicts that read the ICA solution as a whole, over every fit (compare's ``ica_fits``)."""
    fits = cmp_["ica_fits"]
    novel, novel_fits = across_fits(
        [p_word(f["novel_fraction"]["p_more"], f["novel_fraction"]["p_fewer"],
                "exceeds", "falls below", "does not differ significantly from") for f in fits],
        "does not robustly exceed or fall below")
    closer, closer_fits = across_fits(
        [p_word(f["median_max_cos"]["p_closer"], f["median_max_cos"]["p_farther"],
                "closer to", "farther from", "no closer to and no farther from") for f in fits],
        "not robustly closer to or farther from")
    tails, tails_fits = across_fits(
        [ci_word(f["ica_vs_random_whitened"], "more heavy-tailed than", "less heavy-tailed than",
                 "not distinguishable in tail weight from") for f in fits],
        "not robustly more or less heavy-tailed than")
    return {"CloserVerdict": closer, "CloserFits": closer_fits, "IcaVsRandomVerdict": tails, "IcaVsRandomFits": tails_fits,
            "NovelVerdict": novel, "NovelFits": novel_fits}


def verdicts(run: dict) -> dict[str, str]:
    """Words whose choice depends on the numbers (and on their uncertainty)."""
    res, ica, cmp_ = run["residual"], run["ica"], run["compare"]
    gap = cmp_["kurtosis_gap"]
    return {
        **ica_fit_verdicts(cmp_),
        "ResidualShape": ci_word(res["shape"], "more heavy-tailed than", "less heavy-tailed than",
                                 "not distinguishable in tail weight from"),
        "StableVerdict": stable_word(ica),
        "StablePhrase": (f"{fmt_count(ica['n_stable'])} of {fmt_count(ica['n_components'])} components come back across "
                         "restarts and disjoint token samples" if ica["stability"]["measured"]
                         else "stability was not measured (one restart and no resamples)"),
        "GapVerdict": ci_word(gap["like_for_like"], "more heavy-tailed than", "less heavy-tailed than",
                              "not distinguishable in tail weight from"),
        "SeedGapVerdict": ci_word(gap["seed_definition"], "sparser", "less sparse", "no sparser"),
        "ConvergedVerdict": "all converged" if ica["all_converged"] else "did not all converge",
        "LinearVerdict": ("more than half" if res["linear_predictability"]["r2_heldout"] > 0.5 else "less than half"),
        "OutlierVerdict": "excluded from" if res["tokens"]["outliers_excluded"] else "kept in",
    }


# ---- macros ---------------------------------------------------------------------------------

def fmt_count_or(value, missing: str = "n/a") -> str:
    return fmt_count(value) if value is not None else missing


def macros(run: dict, main, corpus: dict) -> dict[str, str]:
    """``main`` is the main :class:`~darkmatter.config.Run`, ``run`` its metrics."""
    act, train, ev, res, ica, cmp_ = (run[k] for k in REQUIRED)
    lp = res["linear_predictability"]
    gap = cmp_["kurtosis_gap"]
    rot = cmp_["rotation_null"]
    iters = [r["n_iter"] for r in ica["runs"]]
    classes = res["tokens"]["classes"]
    measured = ica["stability"]["measured"]
    m = {
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
        "OutlierVerdict": "",  # replaced by verdicts()
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
        "IcaTarget": {"residual": "the residual $r$", "nonlinear": "the nonlinear part of $r$"}[ica["target"]],
        "IcaK": fmt_count(ica["n_components"]),
        "IcaTokens": fmt_count(ica["n_tokens"]),
        "IcaResampleTokens": fmt_count(min(ica["resample_tokens"])) if ica["resample_tokens"] else "0",
        "IcaSeeds": fmt_count(ica["seeds"]),
        "IcaResamples": fmt_count(ica["resamples"]),
        "IcaVarFrac": fmt_pct(ica["pca_variance_fraction"]),
        "IcaItersMin": fmt_about(min(iters)),
        "IcaItersMax": fmt_about(max(iters)),
        "IcaNStable": fmt_count_or(ica["n_stable"], "not measured"),
        "IcaNStableSeeds": fmt_count_or(ica["stability"]["n_stable_seeds"], "not measured"),
        "IcaNStableResamples": fmt_count_or(ica["stability"]["n_stable_resamples"], "not measured"),
        "IcaStableFrac": fmt_pct(ica["stable_fraction"], 0) if measured else "not measured",
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
        "SeedGapRatio": fmt_sig(gap["seed_definition"]["ratio_of_medians"], 3)
                        if gap["seed_definition"]["ratio_of_medians"] is not None else "undefined (a median is not positive)",
        "GapDiff": fmt_fixed(gap["like_for_like"]["difference"], 2),
        "GapCI": fmt_ci(gap["like_for_like"]["ci"]),
        "GapP": fmt_p(gap["like_for_like"]["p_permutation"]),
        "IcaVsRandomDiff": fmt_fixed(gap["ica_vs_random_whitened"]["difference"], 2),
        "IcaVsRandomCI": fmt_ci(gap["ica_vs_random_whitened"]["ci"]),
        "PreactVsRandomDiff": fmt_fixed(gap["sae_preact_vs_random_x"]["difference"], 2),
        "PreactVsRandomCI": fmt_ci(gap["sae_preact_vs_random_x"]["ci"]),
        "FigDir": f"runs/{main.name}",
        "CILevel": fmt_pct(CI_LEVEL, 0),
    }
    m.update(verdicts(run))
    return m


def ladder_macros(ladder: list[tuple[str, str, dict | None | str]]) -> dict[str, str]:
    runnable = [r for _, _, r in ladder if r != "planned"]
    return {"LadderDone": fmt_count(sum(r is not None for r in runnable)), "LadderRunnable": fmt_count(len(runnable))}


def macro_file(values: dict[str, str]) -> str:
    lines = ["% Generated by darkmatter.paper from metrics/*.json. Do not edit."]
    lines += [f"\\newcommand{{\\dm{name}}}{{{value}}}" for name, value in sorted(values.items())]
    return "\n".join(lines) + "\n"


# ---- tables ---------------------------------------------------------------------------------

def compare_table(cmp_: dict) -> str:
    rows = []
    for key, label in (("ica", "ICA mixing directions"), ("ica_stable", "\\quad stable only"),
                       ("rotation_null", "random rotations of the whitened space (null)"),
                       ("random", "random unit directions")):
        b = cmp_[key]["pooled"] if key == "rotation_null" else cmp_[key]
        if b is None:
            rows.append([label, "\\multicolumn{6}{c}{stability not measured}"])
            continue
        rows.append([label, fmt_count(b["n"]), fmt_count(b["matched"]), fmt_count(b["partial"]), fmt_count(b["novel"]),
                     fmt_pct(b["novel_fraction"], 0) if b["n"] else "--",
                     fmt_fixed(b["median_max_cos"], 2) if b["n"] else "--"])
    t = cmp_["thresholds"]
    return table("lrrrrrr", ["directions", "$n$", f"$>{t['match_above']:g}$", "partial", f"$<{t['novel_below']:g}$",
                             "novel", "median"], rows)


def dark_matter_table(res: dict) -> str:
    """Columns: the analysed tokens, the other way for high-norm outliers, and with special tokens."""
    lp, k = res["linear_predictability"], res["kurtosis"]
    excluded = res["tokens"]["outliers_excluded"]
    other = "with_outliers" if excluded else "without_outliers"

    def three(fvu_key, kurt_key=None):
        if kurt_key is None:
            return [fmt_fixed(res[fvu_key]), fmt_fixed(res[f"{fvu_key}_{other}"]) if f"{fvu_key}_{other}" in res else "--",
                    fmt_fixed(res[f"{fvu_key}_with_special"])]
        return [fmt_fixed(k[kurt_key]["quantiles"]["0.5"], 2), fmt_fixed(k[f"{kurt_key}_{other}"]["quantiles"]["0.5"], 2),
                fmt_fixed(k[f"{kurt_key}_with_special"]["quantiles"]["0.5"], 2)]

    rows = [
        ["dark-matter fraction (FVU), held-out rows", *three("dark_matter_fraction")],
        ["dark-matter fraction, all rows", fmt_fixed(res["dark_matter_fraction_all_rows"]), "--",
         fmt_fixed(res["dark_matter_fraction_all_rows_with_special"])],
        ["\\quad linearly predictable from $x$ (held-out)", fmt_fixed(lp["linear_fraction"]), "--", "--"],
        ["\\quad nonlinear (held-out)", fmt_fixed(lp["nonlinear_fraction"]), "--", "--"],
        ["\\quad mean of $r$ (held-out)", fmt_fixed(lp["mean_fraction"]), "--", "--"],
        ["$R^2$ of ridge $r \\approx Wx+b$ (fit: train, scored: held-out)", fmt_fixed(lp["r2_heldout"]), "--", "--"],
        ["median excess kurtosis, dims of $x$ (held-out)", *three(None, "x")],
        ["median excess kurtosis, dims of $r$ (held-out)", *three(None, "r")],
        ["\\quad $r$ on random unit directions (held-out)", fmt_fixed(k["r_random_directions"]["quantiles"]["0.5"], 2), "--", "--"],
        ["PCs for 50\\% / 90\\% of var$(r)$ (train rows)", f"{fmt_count(res['pca']['residual']['n_components_50'])} / "
                                                           f"{fmt_count(res['pca']['residual']['n_components_90'])}", "--", "--"],
    ]
    other_label = "with outliers" if excluded else "without outliers"
    return table("lrrr", ["quantity", "analysed tokens", other_label, "with special"], rows)


def tex_escape(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")


def ladder_rows(params, metrics_root: Path) -> list[tuple[str, str, dict | None | str]]:
    """(label, SAE, metrics) per run definition with a pretrained SAE: metrics, None (not run) or "planned"."""
    rows = []
    for name, d in params.run_definitions.items():
        if d.sae.source != "pretrained":
            continue
        sae = f"\\texttt{{{tex_escape(d.sae.release)}}} {tex_escape(d.sae.sae_id)}"
        found = "planned" if d.planned else read_run(metrics_root / "runs" / name, False)
        rows.append((tex_escape(d.label), sae, found))
    return rows


def control_rows(params, metrics_root: Path) -> list[tuple[str, str, dict | None]]:
    """(label, SAE, metrics or None) per run definition of a random-weights control model."""
    from darkmatter.config import MODELS

    return [(tex_escape(d.label), "trained here (JumpReLU, CPU)", read_run(metrics_root / "runs" / name, False))
            for name, d in params.run_definitions.items() if MODELS[d.subject.model].random_weights_seed is not None]


def ladder_table(main_label: str, run: dict, ladder: list[tuple[str, str, dict | None | str]],
                 controls: list[tuple[str, str, dict | None]] = ()) -> str:
    def cells(r):
        if r is None or r == "planned":  # one marker, the numeric cells left empty
            return [NOT_RUN if r is None else PLANNED] + [""] * 4
        ai = r["autointerp"]
        # Balanced accuracy at the calibrated cut-off where the judge gives scores, as answered otherwise.
        m = next((m for m in ("balanced_accuracy_calibrated", "balanced_accuracy")
                  if ai and ai["groups"]["ica"].get(m) and ai["groups"]["random"].get(m)), None)
        detect = (f"{fmt_fixed(ai['groups']['ica'][m]['mean'], 2)} / {fmt_fixed(ai['groups']['random'][m]['mean'], 2)}"
                  if m else NOT_RUN)
        return [fmt_fixed(r["residual"]["dark_matter_fraction"]), fmt_fixed(r["residual"]["linear_predictability"]["r2_heldout"]),
                f"{fmt_count_or(r['ica']['n_stable'], '--')}/{fmt_count(r['ica']['n_components'])}",
                f"{fmt_count(r['compare']['ica']['novel'])}/{fmt_count(r['compare']['ica']['n'])}", detect]

    rows = [[main_label, "trained here (JumpReLU, CPU)", *cells(run)]]
    rows += [[label, sae, *cells(r)] for label, sae, r in [*controls, *ladder]]
    return table("llrrrrr", ["model", "SAE", "FVU", "$R^2$", "stable", "novel", "detect ICA / random"], rows)


def layers_table(runs: dict[int, dict | None]) -> str:
    rows = []
    for layer, r in runs.items():
        if r is None:
            rows.append([str(layer), *[NOT_RUN] * 5])
            continue
        rows.append([str(layer), fmt_fixed(r["residual"]["dark_matter_fraction"]),
                     fmt_fixed(r["residual"]["linear_predictability"]["r2_heldout"]),
                     fmt_fixed(r["residual"]["kurtosis"]["r"]["quantiles"]["0.5"], 2),
                     f"{fmt_count_or(r['ica']['n_stable'], '--')}/{fmt_count(r['ica']['n_components'])}",
                     f"{fmt_count(r['compare']['ica']['novel'])}/{fmt_count(r['compare']['ica']['n'])}"])
    return table("rrrrrr", ["layer", "FVU", "$R^2$", "median kurt.\\ $r$", "stable", "novel"], rows)


AUTOINTERP_GROUPS = (("ica", "ICA components"), ("ica_stable", "\\quad stable only"),
                     ("sae", "SAE features (density-matched)"), ("random", "random whitened units"),
                     ("calibration", "calibration units, judge's explanations"),
                     ("calibration_given", "calibration units, true explanations (ceiling)"),
                     ("calibration_shuffled", "calibration units, another unit's explanation"))
AUTOINTERP_METRICS = (("auc", "AUC"), ("balanced_accuracy_calibrated", "bal.\\ acc.\\ (calibrated)"),
                      ("balanced_accuracy", "bal.\\ acc.\\ (as answered)"))


def ci_cell(entry: dict | None, digits: int = 2, no_ci: str = "(too few)") -> str:
    """``mean [lo, hi]`` of a ``mean_with_ci`` entry (``no_ci`` in place of the interval when there
    is none); ``--`` when missing."""
    if not entry or entry.get("mean") is None:
        return "--"
    return f"{fmt_fixed(entry['mean'], digits)} {fmt_ci(entry['ci'], digits) if entry['ci'] else no_ci}".strip()


def autointerp_table(ai: dict | None) -> str:
    """One row per group; a metric column only where some group has it (a likelihood judge gives
    no answers, so no balanced accuracy "as answered")."""
    if ai is None:
        header = ["units", "$n$", *(label for _, label in AUTOINTERP_METRICS)]
        return table("lrrrr", header, [[label, NOT_RUN, "", "", ""] for _, label in AUTOINTERP_GROUPS])
    groups = [(k, label) for k, label in AUTOINTERP_GROUPS if k in ai["groups"]]
    metrics = [(m, label) for m, label in AUTOINTERP_METRICS if any(ai["groups"][k].get(m) for k, _ in groups)]
    rows = [[label, fmt_count(ai["groups"][k]["n_units"]), *(ci_cell(ai["groups"][k].get(m)) for m, _ in metrics)]
            for k, label in groups]
    return table("lr" + "r" * len(metrics), ["units", "$n$", *(label for _, label in metrics)], rows)


SCORERS = {
    "likelihood": ("The score of a context is the judge's mean log-probability per token of the explanation written after "
                   "the excerpt and the name of its marked token (a likelihood judge, read as a language model rather than "
                   "asked a question; centred on each unit's own contexts, labels unseen)."),
    "yes_no": ("The judge is asked whether the unit fires on the marked token, which the prompt names; the score is "
               "$\\log P(\\text{Yes}) - \\log P(\\text{No})$ of the answer token."),
}


def autointerp_section(ai: dict | None) -> str:
    """Results prose for autointerp, worded from the numbers. The judge's ceiling comes first; the
    groups are ranked only when the judge separates calibration units from random ones."""
    if ai is None:
        return not_run_section("autointerp")
    metric = ai["primary_metric"]
    name = {"auc": "AUC", "balanced_accuracy_calibrated": "calibrated balanced accuracy",
            "balanced_accuracy": "balanced accuracy"}[metric]
    tests, g = ai["tests"][metric], ai["groups"]

    def diff(test: dict, how: str) -> str:
        ci = (f"{fmt_pct(CI_LEVEL, 0)} CI [{fmt_fixed(test['ci'][0], 3)}, {fmt_fixed(test['ci'][1], 3)}]" if test["ci"]
              else "too few units for an interval")
        return f"{how} {fmt_fixed(test['difference'], 3)}, {ci}, permutation $p={fmt_p(test['p_permutation'])}$"

    def contrast(test: dict, other: str, how: str) -> str:
        if test["difference"] is None:
            return f"there are no {other} to compare with"
        significant = test["p_permutation"] < 0.05
        direction = "better than" if test["difference"] > 0 else "worse than"
        verdict = f"detected {direction}" if significant else "not detected significantly differently from"
        return f"ICA components are {verdict} {other} ({diff(test, how)})"

    explainer, detector = ai.get("explainer", ai["model"]), ai["model"]
    judge = (f"Explanations are written by {explainer} and detection is judged by {detector}"
             if explainer != detector else f"The judge is {detector}")
    judge = judge.replace("_", "-") + (", run locally on CPU. " if ai["backend"] in ("local", "replay of local") else ". ")
    reads = tests.get("given_vs_shuffled")
    shuffled = ((f"Given another calibration unit's explanation on the same contexts it scores AUC "
                 f"{ci_cell(g['calibration_shuffled']['auc'])} ({diff(reads, 'mean paired difference')}): "
                 + ("it reads the explanation. " if reads["ci"] and reads["ci"][0] > 0 and reads["p_permutation"] < 0.05
                    else "it does not demonstrably read the explanation. "))
                if reads and reads["difference"] is not None and metric == "auc" else "")
    ceiling = (f"On calibration units, token classes of known meaning built from the corpus "
               f"({', '.join(u.label for u in CALIBRATION_UNITS)}; {fmt_count(g['calibration_given']['n_units'])} units "
               f"found in this run's text), given their true explanations and scored on "
               f"{fmt_count(g['calibration_given']['contexts_per_unit'])} held-out contexts each (the other groups on "
               f"{fmt_count(g['ica']['contexts_per_unit'])}), the "
               f"judge reaches AUC {ci_cell(g['calibration_given']['auc'])} and balanced accuracy "
               f"{ci_cell(g['calibration_given']['balanced_accuracy_calibrated'])} at a cut-off chosen on the other "
               f"calibration units: the ceiling of what this judge can see. {shuffled}With its own explanations of the same "
               f"units: AUC {ci_cell(g['calibration']['auc'])}. ") if g["calibration_given"]["auc"] else ""
    scorer = SCORERS[ai.get("scorer", "yes_no")] if metric != "balanced_accuracy" else (
        "The judge is asked whether the unit fires on the marked token, which the prompt names; its answers are scored "
        "as given (the backend gives no log-probabilities).")
    gate = tests["calibration_vs_random"]
    if ai["judge_separates_calibration"]:
        verdict = (f"It separates the calibration units it explained from random units ({diff(gate, 'difference of mean ' + name)}), "
                   "so its scores can rank groups. "
                   f"{contrast(tests['ica_vs_random'], 'random units of the same whitened space', 'difference of mean ' + name)}; "
                   f"{contrast(tests['ica_vs_sae'], 'their density-matched SAE features', 'mean paired difference over ' + fmt_count(tests['ica_vs_sae']['n']) + ' pairs')}. ")
    else:
        ceiling_ci = (g["calibration_given"].get("auc") or {}).get("ci")
        why = ("the detection judge sees known structure when it is told what it is, but the explanations written for "
               "it do not carry that structure"
               if ceiling_ci and ceiling_ci[0] > 0.5 else "it cannot find structure that is known to be there")
        verdict = ("It does not separate the calibration units it explained from random units "
                   f"({diff(gate, 'difference of mean ' + name)}): {why}, so we "
                   "do not rank the groups by its scores. The group means in Table~\\ref{tab:autointerp} are reported, not "
                   f"interpreted (ICA $-$ random: {fmt_fixed(tests['ica_vs_random']['difference'], 3)}; ICA $-$ SAE, paired: "
                   f"{fmt_fixed(tests['ica_vs_sae']['difference'], 3)}). ")
    return ("% Generated by darkmatter.paper from the autointerp metrics.\n"
            f"{judge}Each unit is explained from its top contexts in the train rows and scored by detection on held-out rows "
            "(activating contexts across the quantiles of the held-out activations, and non-activating ones; no detection "
            f"context shares a row, a document or a window with a shown one). {scorer} "
            "Chance is 0.5 for every column of "
            f"Table~\\ref{{tab:autointerp}}. {ceiling}{verdict}"
            f"Figure~\\ref{{fig:autointerp}} shows each unit's {name}.\n")


def causal_table(c: dict | None) -> str:
    """Loss ratio (ablated / clean, held-out rows) of removing m dimensions: ICA, PCA, random."""
    if c is None:
        return table("l", ["causal stage not run"], [])

    def cell(entry: dict) -> str:
        return f"{fmt_fixed(entry['value'], 3)} {fmt_ci(entry['ci'], 3)}".strip()

    rows = [[fmt_count(int(m)), *(cell(c["subspaces"][m][kind]["loss_ratio"]) for kind in ("ica", "pca", "random"))]
            for m in sorted(c["subspaces"], key=int)]
    return table("rrrr", ["$m$", "ICA (most kurtotic $m$)", "PCA (top $m$)", "random ($m$-dim)"], rows)


def causal_section(c: dict | None) -> str:
    """Results prose for the causal stage, worded from its intervals."""
    if c is None:
        return not_run_section("causal")

    def mean_ci(entry: dict, digits: int = 3) -> str:
        return f"{fmt_fixed(entry['mean'], digits)} {fmt_ci(entry['ci'], digits)}".strip()

    def than(test: dict, other: str, how: str) -> str:
        verb = ci_word(test, "more than", "less than", "no differently from")
        return (f"{verb} {other} ({how} {fmt_fixed(test['difference'], 3)} {fmt_ci(test['ci'], 3)}, "
                f"permutation $p={fmt_p(test['p_permutation'])}$)")

    g, t, rows = c["exact_groups"], c["tests"], c["rows"]
    sizes = sorted(c["subspaces"], key=int)
    k = sizes[-1]
    partial = [m for m in sizes if m != k]
    sub = c["subspaces"]
    vs_pca = "; ".join(f"$m={m}$: ICA {ci_word(sub[m]['ica_minus_pca'], 'above', 'below', 'not different from')} PCA, "
                       f"{ci_word(sub[m]['ica_minus_random'], 'above', 'below', 'not different from')} random" for m in partial)
    identity = all(sub[k][f"ica_minus_{kind}"].get("agree", False) for kind in ("pca", "random"))
    e = c["error_node_split"]
    share = e["ica_share"]
    att = c["attribution"]["groups"]
    att_words = ", ".join(f"{name} {fmt_pct(att[key]['share_of_top_k'], 0)}" for key, name in
                          (("ica", "ICA"), ("sae", "SAE"), ("random", "random")))
    ablation = {"mean": "mean-ablating", "project": "projecting out"}[c["ablation"]]
    return (
        "% Generated by darkmatter.paper from the causal metrics.\n"
        f"On {fmt_count(rows['exact'])} held-out rows ({fmt_count(rows['positions_per_row'])} predictions read out per row; "
        f"special tokens out of every edit and of the loss; clean loss {mean_ci(c['clean_loss'], 2)} nats), "
        f"{ablation} one direction at the SAE's layer raises the next-token loss by {mean_ci(g['ica'])} nats for ICA "
        f"components, {mean_ci(g['sae'])} for their density-matched SAE features and {mean_ci(g['random'])} for random "
        f"directions of the same whitened space (per group the {fmt_count(g['ica']['n'])} units with the largest "
        "attribution-patching estimate and a random sample of the rest; intervals over units). "
        f"ICA components matter {than(t['ica_vs_sae'], 'their matched SAE features', 'mean paired difference')} and "
        f"{than(t['ica_vs_random'], 'random directions', 'difference of means')}. The cheap ranking agreed with the exact ablations "
        f"(Spearman $\\rho={fmt_fixed(c['ranking_agreement']['spearman'], 2)}$ over {fmt_count(c['ranking_agreement']['n_units'])} units).\n\n"
        f"Removing subspaces together (Table~\\ref{{tab:causal}}, the form of Deng et al.): {vs_pca} (paired over rows). "
        f"At $m=k={k}$ the three removals are the same subspace, since ICA only rotates inside the top-$k$ principal "
        f"subspace; their loss ratios {'agree, as they must' if identity else 'DISAGREE, which signals a bug'}.\n\n"
        f"Error nodes~\\citep{{marks2024sparse}}: replacing $x$ by $\\mathrm{{SAE}}(x)$ raises the loss by {mean_ci(e['sae_only'])} nats; "
        f"$\\mathrm{{SAE}}(x)+r$ restores it ({mean_ci(e['sae_plus_r'], 4)}, the check); removing only the ICA part of $r$ "
        f"(its top-$k$ principal subspace) raises it by {mean_ci(e['minus_ica_part'])}, a share "
        f"{fmt_fixed(share['value'], 3)} {fmt_ci(share['ci'], 3)} of the dark matter's effect. "
        f"Attribution (activation $\\times$ gradient of the loss) puts the top-{c['attribution']['top_k']} units per row "
        f"in the groups as {att_words}, against {fmt_pct(att['ica']['share_of_units'], 0)} each by chance. "
        "Attribution is a first-order, local estimate: it ranks where the loss is sensitive, not what removing a unit does, "
        "and its signed sum nearly cancels for directions a calibrated model uses; the exact ablations carry the claims. "
        "Steering continuations are in the run's dashboard, not quantified here (Figure~\\ref{fig:causal}).\n")


def not_run_section(name: str) -> str:
    """What a later experiment's section says when its metrics file does not exist."""
    title = {"autointerp": "automated interpretability", "probes": "dataset-geometry probes", "causal": "causal ablations"}[name]
    return (f"% Generated by darkmatter.paper: no metrics for {name}.\n"
            f"The {title} experiment was \\textit{{not run}} in this build: its metrics file does not exist, "
            "so this section reports nothing.\n")


# ---- stage ----------------------------------------------------------------------------------

def layer_runs(params, metrics_root: Path) -> dict[int, dict | None]:
    """The layer sweep: every listed run of the main run's model with an SAE trained here, by layer."""
    main = params.main
    same = [params.run(name) for name in params.runs]
    same = [r for r in same if r.model.name == main.model.name and r.sae_source.source == "train"]
    return {r.layer: read_run(metrics_root / "runs" / r.name, required=False) for r in sorted(same, key=lambda r: r.layer)}


def generate(params, metrics_root: Path, out: Path, recorder: Recorder | None = None,
             lock_path: Path | None = None, sections: Path | None = None) -> list[Path]:
    """Write every generated file; returns their paths. Raises before writing if inputs are missing.

    ``recorder`` (one is made if not given) collects what each file read of the metrics;
    ``provenance.tex`` maps each figure of ``paper/main.tex`` and each table to its stage in ``lock_path``
    (default: ``dvc.lock`` beside ``metrics_root``).
    """
    recorder = recorder or Recorder()
    token = RECORDER.set(recorder)
    try:
        files = _render(params, metrics_root, recorder, Templates(sections or metrics_root.resolve().parent / SECTIONS))
    finally:
        RECORDER.reset(token)
    repo_root = metrics_root.resolve().parent
    lock = read_lock(lock_path or repo_root / "dvc.lock")
    tex = [repo_root / "paper" / "main.tex"] if (repo_root / "paper" / "main.tex").exists() else []
    figures = {key: resolve_figure(key, params.main_run, repo_root) for key in included_figures(tex)}
    tables = {name.removesuffix(".tex"): sorted(recorder.files[name]) for name in files if name.startswith("tab_")}
    files["provenance.tex"] = provenance_tex(figures, tables, lock)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tex"):
        stale.unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


def _render(params, metrics_root: Path, recorder: Recorder, templates: Templates) -> dict[str, str]:
    """Each generated file's text, rendered with ``recorder`` attributing the metrics reads to it."""
    with recorder.reading("inputs"):
        main = read_run(metrics_root / "runs" / params.main_run, required=True)
        ladder = ladder_rows(params, metrics_root)
        controls = control_rows(params, metrics_root)
        axes_path = metrics_root / "sae_axes.json"
        if not axes_path.exists():
            raise UserError(f"{axes_path} is missing; run `dvc repro sae_axes` before generating the paper")
        axes = track(json.loads(axes_path.read_text()), "metrics/sae_axes.json")
        corpus_path = metrics_root / "runs" / params.main_run / "corpus.json"
        if not corpus_path.exists():
            raise UserError(f"{corpus_path} is missing; run `dvc repro corpus@{params.main_run}` before generating the paper")
        corpus = track(json.loads(corpus_path.read_text()), _source(corpus_path))
    builders = {
        "macros.tex": lambda: macro_file({**macros(main, params.main, corpus), **ladder_macros(ladder),
                                          **instrument_macros(main["sae_eval"], main["sae"], axes),
                                          "SaeCurveVerdict": curve_verdict(main["sae_eval"])}),
        "tab_dark_matter.tex": lambda: dark_matter_table(main["residual"]),
        "tab_compare.tex": lambda: compare_table(main["compare"]),
        "tab_ladder.tex": lambda: ladder_table(MODEL_NAMES.get(params.main.model.name, params.main.model.name), main, ladder,
                                                controls),
        "tab_layers.tex": lambda: layers_table(layer_runs(params, metrics_root)),
        "tab_sae.tex": lambda: axes_table(axes, main["sae_eval"], main["sae"]),
        "tab_splice.tex": lambda: splice_table(main["sae_eval"]),
        "tab_autointerp.tex": lambda: autointerp_table(main["autointerp"]),
        "sec_autointerp.tex": lambda: autointerp_section(main["autointerp"]),
        "sec_causal.tex": lambda: section("causal", main["causal"], context.causal.causal),
        "tab_causal.tex": lambda: section("causal", main["causal"], context.causal.causal_table, table=True),
        "sec_probes.tex": lambda: section("probes", main["probes"], context.probes.probes),
        "tab_probes.tex": lambda: section("probes", main["probes"], context.probes.probes_table, table=True),
    }
    files = {}

    def section(name, metrics, build, table=False):
        """A later experiment's section or table: its template, or the "not run" one without metrics."""
        if metrics is None:
            return templates.render("tab_not_run.tex.j2" if table else "not_run.tex.j2", {"name": name})
        return templates.render(f"{'tab' if table else 'sec'}_{name}.tex.j2", build(metrics))

    for name, build in builders.items():
        with recorder.reading(name):
            files[name] = build()
    return files


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description="Generate the paper's tables, macros and wording from the metrics.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--out", type=Path, default=Path("paper/generated"))
    args = parser.parse_args(argv)
    files = generate(load_params(args.params), args.metrics, args.out)
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
