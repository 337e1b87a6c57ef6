"""The causal ablations (``causal.json``): ``sec_causal.tex.j2`` and ``tab_causal.tex.j2``."""

from __future__ import annotations

from darkmatter.paper.format import ci_side, difference, fmt_ci, fmt_count, fmt_fixed, fmt_pct, mean_ci


def _ratio(entry: dict) -> str:
    return f"{fmt_fixed(entry['value'], 3)} {fmt_ci(entry['ci'], 3)}".strip()


def causal(c: dict) -> dict:
    """Every number the section quotes, and its verdict keys."""
    g, sub, e = c["exact_groups"], c["subspaces"], c["error_node_split"]
    sizes = sorted(sub, key=int)
    k = sizes[-1]
    att = c["attribution"]["groups"]
    return {
        "rows": fmt_count(c["rows"]["exact"]), "positions_per_row": fmt_count(c["rows"]["positions_per_row"]),
        "clean_loss": mean_ci(c["clean_loss"], 2), "ablation": c["ablation"],
        "groups": {name: mean_ci(g[name]) for name in ("ica", "sae", "random")}, "units": fmt_count(g["ica"]["n"]),
        "ica_vs_sae": difference(c["tests"]["ica_vs_sae"]), "ica_vs_random": difference(c["tests"]["ica_vs_random"]),
        "spearman": fmt_fixed(c["ranking_agreement"]["spearman"], 2), "ranked_units": fmt_count(c["ranking_agreement"]["n_units"]),
        "partial": [{"m": m, "vs_pca": ci_side(sub[m]["ica_minus_pca"]), "vs_random": ci_side(sub[m]["ica_minus_random"])}
                    for m in sizes if m != k],
        "k": k,
        # At m = k the three removals are one subspace: their loss ratios must agree (causal.stage.identity_check).
        "identity_agrees": all(sub[k][f"ica_minus_{kind}"].get("agree", False) for kind in ("pca", "random")),
        "sae_only": mean_ci(e["sae_only"]), "sae_plus_r": mean_ci(e["sae_plus_r"], 4), "minus_ica_part": mean_ci(e["minus_ica_part"]),
        "ica_share": _ratio(e["ica_share"]),
        "top_k": c["attribution"]["top_k"],
        "attribution": {name: fmt_pct(att[name]["share_of_top_k"], 0) for name in ("ica", "sae", "random")},
        "attribution_chance": fmt_pct(att["ica"]["share_of_units"], 0),
    }


def causal_table(c: dict) -> dict:
    """Loss ratio (ablated / clean, held-out rows) of removing m dimensions: ICA, PCA, random."""
    return {"rows": [[fmt_count(int(m)), *(_ratio(c["subspaces"][m][kind]["loss_ratio"]) for kind in ("ica", "pca", "random"))]
                     for m in sorted(c["subspaces"], key=int)]}
