"""The dark-matter tables: ``tab_dark_matter``, ``tab_compare``, ``tab_ladder`` and ``tab_layers``.

Cells come formatted; ``--`` marks a cell a column does not define, ``None`` a row (or cell) whose
wording the template supplies ("not run", "planned", "stability not measured").
"""

from __future__ import annotations

from darkmatter.paper.format import fmt_count, fmt_fixed, fmt_pct


def count_or(value, missing: str = "--") -> str:
    return fmt_count(value) if value is not None else missing


def dark_matter(res: dict) -> dict:
    """Columns: the analysed tokens, the other way for high-norm outliers, and with special tokens."""
    lp, k = res["linear_predictability"], res["kurtosis"]
    other = "with_outliers" if res["tokens"]["outliers_excluded"] else "without_outliers"

    def fvu(key):
        return [fmt_fixed(res[key]), fmt_fixed(res[f"{key}_{other}"]) if f"{key}_{other}" in res else "--",
                fmt_fixed(res[f"{key}_with_special"])]

    def kurtosis(key):
        return [fmt_fixed(k[name]["quantiles"]["0.5"], 2) for name in (key, f"{key}_{other}", f"{key}_with_special")]

    return {
        "other": other,
        "fvu": fvu("dark_matter_fraction"),
        "fvu_all_rows": [fmt_fixed(res["dark_matter_fraction_all_rows"]), fmt_fixed(res["dark_matter_fraction_all_rows_with_special"])],
        "linear": fmt_fixed(lp["linear_fraction"]), "nonlinear": fmt_fixed(lp["nonlinear_fraction"]),
        "mean": fmt_fixed(lp["mean_fraction"]), "r2": fmt_fixed(lp["r2_heldout"]),
        "kurtosis_x": kurtosis("x"), "kurtosis_r": kurtosis("r"),
        "kurtosis_random": fmt_fixed(k["r_random_directions"]["quantiles"]["0.5"], 2),
        "pcs_half": fmt_count(res["pca"]["residual"]["n_components_50"]),
        "pcs_ninety": fmt_count(res["pca"]["residual"]["n_components_90"]),
    }


def compare(cmp_: dict) -> dict:
    """Matched / partial / novel counts per family of directions (``None``: stability not measured)."""
    def cells(b):
        if b is None:
            return None
        return [fmt_count(b["n"]), fmt_count(b["matched"]), fmt_count(b["partial"]), fmt_count(b["novel"]),
                fmt_pct(b["novel_fraction"], 0) if b["n"] else "--", fmt_fixed(b["median_max_cos"], 2) if b["n"] else "--"]

    t = cmp_["thresholds"]
    return {"match_above": f"{t['match_above']:g}", "novel_below": f"{t['novel_below']:g}",
            **{key: cells(cmp_[key]["pooled"] if key == "rotation_null" else cmp_[key])
               for key in ("ica", "ica_stable", "rotation_null", "random")}}


def detection(ai: dict | None) -> str | None:
    """ICA / random balanced accuracy, at the calibrated cut-off where the judge gives scores, as
    answered otherwise; None where the judge gives neither."""
    m = next((m for m in ("balanced_accuracy_calibrated", "balanced_accuracy")
              if ai and ai["groups"]["ica"].get(m) and ai["groups"]["random"].get(m)), None)
    return f"{fmt_fixed(ai['groups']['ica'][m]['mean'], 2)} / {fmt_fixed(ai['groups']['random'][m]['mean'], 2)}" if m else None


def run_cells(r: dict) -> dict:
    """One run's dark-matter headline cells (each table reads only the cells it prints: the paper
    records which metrics each table read)."""
    return {"fvu": fmt_fixed(r["residual"]["dark_matter_fraction"]),
            "r2": fmt_fixed(r["residual"]["linear_predictability"]["r2_heldout"]),
            "kurtosis_r": fmt_fixed(r["residual"]["kurtosis"]["r"]["quantiles"]["0.5"], 2),
            "stable": f"{count_or(r['ica']['n_stable'])}/{fmt_count(r['ica']['n_components'])}",
            "novel": f"{fmt_count(r['compare']['ica']['novel'])}/{fmt_count(r['compare']['ica']['n'])}"}


def ladder(main_label: str, run: dict, rows: list[tuple[str, str | None, dict | None | str]]) -> dict:
    """The main run, then the controls and the hub ladder: ``(label, SAE or None for one trained
    here, metrics / None (not run) / "planned")``."""
    def row(label, sae, r):
        state = "planned" if r == "planned" else "not_run" if r is None else "done"
        cells = {**run_cells(r), "detect": detection(r["autointerp"])} if state == "done" else None
        return {"label": label, "sae": sae, "state": state, "cells": cells}

    return {"rows": [row(main_label, None, run), *(row(*r) for r in rows)]}


def layers(runs: dict[int, dict | None]) -> dict:
    return {"rows": [{"layer": str(layer), "cells": run_cells(r) if r is not None else None} for layer, r in runs.items()]}
