"""``autointerp.json``, the automated interpretability: ``sec_autointerp.tex.j2`` and ``tab_autointerp.tex.j2``."""

from __future__ import annotations

from darkmatter.interp.calibration import UNITS
from darkmatter.paper.format import fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, mean_ci, significant
from darkmatter.stats import CI_LEVEL

#: The detection metrics the table can show, in column order; a column only where some group has it
#: (a likelihood judge gives no answers, so no balanced accuracy as answered).
METRICS = ("auc", "balanced_accuracy_calibrated", "balanced_accuracy")
#: The stage's groups of units (the table's rows and their order are in the template).
GROUPS = ("ica", "ica_stable", "sae", "random", "calibration", "calibration_given", "calibration_shuffled")


def _cell(entry: dict | None) -> str:
    return mean_ci(entry, 2, no_ci="(too few)")


def _test(test: dict) -> dict:
    """Difference, interval (None without one) and p-value of a permutation test."""
    return {"difference": fmt_fixed(test["difference"], 3), "ci": fmt_ci(test["ci"], 3) if test["ci"] else None,
            "p": fmt_p(test["p_permutation"])}


def _contrast(test: dict) -> dict:
    """ICA against another group: ``side`` is ``"better"`` or ``"worse"`` (two-sided, significant at ALPHA),
    ``"neither"``, or ``"absent"`` (no other group to compare with)."""
    if test["difference"] is None:
        return {"side": "absent"}
    side = "better" if test["difference"] > 0 else "worse"
    return {"side": side if significant(test, test["p_permutation"]) else "neither", **_test(test)}


def autointerp(ai: dict) -> dict:
    """``sec_autointerp.tex.j2``'s context: every number the section quotes, and its verdict keys."""
    metric = ai["primary_metric"]
    tests, g = ai["tests"][metric], ai["groups"]
    given = g["calibration_given"]
    explainer, detector = ai.get("explainer", ai["model"]), ai["model"]
    reads = tests.get("given_vs_shuffled")
    # The judge given another calibration unit's true explanation (the AUC form only).
    shuffled = ({"auc": _cell(g["calibration_shuffled"]["auc"]), **_test(reads),
                 "reads_explanation": significant(reads, reads["p_permutation"]) and bool(reads["ci"] and reads["ci"][0] > 0)}
                if reads and reads["difference"] is not None and metric == "auc" else None)
    # The judge on calibration units given their true explanations: None where not scored.
    ceiling = ({"units": [u.label for u in UNITS], "n_units": fmt_count(given["n_units"]),
                "contexts": fmt_count(given["contexts_per_unit"]), "other_contexts": fmt_count(g["ica"]["contexts_per_unit"]),
                "auc": _cell(given["auc"]), "balanced_accuracy": _cell(given["balanced_accuracy_calibrated"]),
                "own_auc": _cell(g["calibration"]["auc"])} if given["auc"] else None)
    ceiling_ci = (given.get("auc") or {}).get("ci")
    separates = ai["judge_separates_calibration"]
    return {
        "metric": metric, "ci_level": fmt_pct(CI_LEVEL, 0),
        "explainer": explainer.replace("_", "-"), "detector": detector.replace("_", "-"), "one_model": explainer == detector,
        "local": ai["backend"] in ("local", "replay of local"),
        # bfloat16 or float32 for local judges (None behind an API or before the key existed), and the
        # CPU flag that picked the judge where params left it to the CPU (autointerp.local_model: auto)
        "numerics": ai.get("numerics"), "chosen_by_cpu": ai.get("chosen_by_cpu"),
        # "answers": the backend gives no log-probabilities, so the primary metric is balanced accuracy as answered.
        "scorer": ai.get("scorer", "yes_no") if metric != "balanced_accuracy" else "answers",
        "ceiling": ceiling, "shuffled": shuffled, "ceiling_above_chance": bool(ceiling_ci and ceiling_ci[0] > 0.5),
        "judge_separates": separates, "gate": _test(tests["calibration_vs_random"]),
        "vs_random": _contrast(tests["ica_vs_random"]), "vs_sae": _contrast(tests["ica_vs_sae"]),
        "pairs": fmt_count(tests["ica_vs_sae"]["n"]) if separates else None,
    }


def autointerp_table(ai: dict | None) -> dict:
    """``tab_autointerp.tex.j2``'s context: per group present, its number of units and a cell per shown
    metric; ``run`` is False without metrics."""
    if ai is None:
        return {"run": False, "metrics": list(METRICS), "groups": {}}
    g = {k: ai["groups"][k] for k in GROUPS if k in ai["groups"]}
    metrics = [m for m in METRICS if any(entry.get(m) for entry in g.values())]
    return {"run": True, "metrics": metrics,
            "groups": {k: {"n": fmt_count(entry["n_units"]), "cells": [_cell(entry.get(m)) for m in metrics]}
                       for k, entry in g.items()}}
