"""The causal ablations (``causal.json``): ``sec_causal.tex.j2`` and ``tab_causal.tex.j2``.

The section leads with the primary edit space (``r``: the dark matter alone) and sets the other
(``x``: the activation, which also loses what the SAE reconstructs along the direction) beside it.
"""

from __future__ import annotations

from darkmatter.paper.format import ci_side, difference, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, mean_ci, significant


def _ratio(entry: dict) -> str:
    return f"{fmt_fixed(entry['value'], 3)} {fmt_ci(entry['ci'], 3)}".strip()


def _space(s: dict) -> dict:
    """One edit space's ablations: group means, the two group tests, the ranking's agreement, subspaces."""
    g, sub = s["exact_groups"], s["subspaces"]
    sizes = sorted(sub, key=int)
    k = sizes[-1]
    return {
        "groups": {name: mean_ci(g[name]) for name in ("ica", "sae", "random")}, "units": fmt_count(g["ica"]["n"]),
        "ica_vs_sae": difference(s["tests"]["ica_vs_sae"]), "ica_vs_random": difference(s["tests"]["ica_vs_random"]),
        "spearman": fmt_fixed(s["ranking_agreement"]["spearman"], 2), "ranked_units": fmt_count(s["ranking_agreement"]["n_units"]),
        "spearman_p": fmt_p(s["ranking_agreement"]["p"]),
        "ranking_agrees": significant(s["ranking_agreement"], s["ranking_agreement"]["p"]) and s["ranking_agreement"]["spearman"] > 0,
        "partial": [{"m": m, "vs_pca": ci_side(sub[m]["ica_minus_pca"]), "vs_random": ci_side(sub[m]["ica_minus_random"])}
                    for m in sizes if m != k],
        "k": k,
        # At m = k the three removals are one subspace: their loss ratios must agree (causal.stage.identity_check).
        "identity_agrees": all(sub[k][f"ica_minus_{kind}"].get("agree", False) for kind in ("pca", "random")),
    }


def _band(b: dict) -> dict:
    per = b["delta_loss_per_percent"]
    return {"pcs": f"{b['pcs'][0] + 1}--{b['pcs'][1]}", "share": fmt_pct(b["variance_share"], 1),
            "delta": mean_ci(b["delta_loss"]), "per_percent": f"{fmt_fixed(per['mean'], 3)} {fmt_ci(per['ci'], 3)}".strip()}


def spectrum(bands: list[dict] | None) -> dict | None:
    """Where in r's spectrum the loss lives: the top band, the band with the most loss per percent of
    var(r) removed, and whether loss per percent falls from the top band to the bottom one (``"falls"``:
    the bottom band's interval lies below the top band's; ``"rises"``: above; ``"neither"``)."""
    if not bands:
        return None
    top, bottom = bands[0], bands[-1]
    densest = max(bands, key=lambda b: b["delta_loss_per_percent"]["mean"])
    a, b = top["delta_loss_per_percent"]["ci"], bottom["delta_loss_per_percent"]["ci"]
    trend = "neither" if a is None or b is None else "falls" if b[1] < a[0] else "rises" if b[0] > a[1] else "neither"
    return {"top": _band(top), "bottom": _band(bottom), "densest": _band(densest), "n": len(bands), "trend": trend}


def causal(c: dict) -> dict:
    """Every number the section quotes, and its verdict keys."""
    e, att = c["error_node_split"], c["attribution"]["groups"]
    primary = c["primary_space"]
    return {
        "rows": fmt_count(c["rows"]["exact"]), "positions_per_row": fmt_count(c["rows"]["positions_per_row"]),
        "clean_loss": mean_ci(c["clean_loss"], 2), "ablation": c["ablation"],
        "primary": primary, "main": _space(c["spaces"][primary]),
        "other": next(({"space": s, **_space(v)} for s, v in c["spaces"].items() if s != primary), None),
        "spectrum": spectrum(c.get("spectrum")),
        "sae_only": mean_ci(e["sae_only"]), "sae_plus_r": mean_ci(e["sae_plus_r"], 4), "minus_ica_part": mean_ci(e["minus_ica_part"]),
        "ica_share": _ratio(e["ica_share"]),
        "top_k": c["attribution"]["top_k"],
        "attribution": {name: fmt_pct(att[name]["share_of_top_k"], 0) for name in ("ica", "sae", "random")},
        "attribution_chance": fmt_pct(att["ica"]["share_of_units"], 0),
    }


def causal_table(c: dict) -> dict:
    """Loss ratio (ablated / clean, held-out rows) of removing m dimensions, ICA, PCA and random, in each
    edit space (the primary first); and the spectrum bands of r."""
    order = [c["primary_space"]] + [s for s in c["spaces"] if s != c["primary_space"]]
    blocks = [{"space": s, "rows": [[fmt_count(int(m)), *(_ratio(c["spaces"][s]["subspaces"][m][kind]["loss_ratio"])
                                                           for kind in ("ica", "pca", "random"))]
                                    for m in sorted(c["spaces"][s]["subspaces"], key=int)]} for s in order]
    return {"blocks": blocks, "bands": [_band(b) for b in c.get("spectrum") or []]}
