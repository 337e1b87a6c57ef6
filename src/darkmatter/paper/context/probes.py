"""Dataset-geometry probes (``probes.json``): the contexts of ``sec_probes.tex.j2`` and ``tab_probes.tex.j2``."""

from __future__ import annotations

from darkmatter.paper.format import ci_side, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, fmt_sig, mean_ci


def _at_least(entry: dict, threshold: str = "0.85") -> str:
    """``count/n [lo, hi]``: the features whose probe reaches ``threshold`` (no interval when there is none)."""
    t = entry["at_least"][threshold]
    return f"{t['count']}/{entry['n']}" + (f" {fmt_ci(t['ci'], 2)}" if t["ci"] else "")


def _paired(test: dict) -> dict:
    """``test`` (paired) for a template: its verdict key, difference, interval (empty when there is none) and
    permutation p; ``missing`` when the test has no difference (printed ``--``)."""
    if test["difference"] is None:
        return {"missing": True, "side": ci_side(test)}
    return {"missing": False, "side": ci_side(test), "difference": fmt_fixed(test["difference"], 3),
            "ci": fmt_ci(test["ci"], 3) if test["ci"] else "", "p": fmt_p(test["p_permutation"])}


def _experiment1(entry: dict) -> dict:
    e1 = entry["experiment1"]
    c, t = e1["controls"], e1["tests"]
    unseen = c["unseen_probe"]
    probe_above_chance = e1["probe"]["mean"] > 0.5
    return {
        "sae": "run" if entry["sae"] == "run" else "trained",
        "probe": mean_ci(e1["probe"]), "at_least": _at_least(e1["probe"]),
        "train_loss": fmt_fixed(e1["train_loss"]["mean"], 2), "val_loss": fmt_fixed(e1["val_loss"]["mean"], 2),
        "token_lookup": mean_ci(c["token_lookup"]), "vs_lookup": _paired(t["probe_minus_token_lookup"]),
        "context_lookup": mean_ci(c["context_lookup"]), "position": mean_ci(c.get("position")),
        "shuffled": mean_ci(c.get("shuffled")), "unseen": mean_ci(unseen), "unseen_n": fmt_count(unseen["n"]),
        "unseen_above_chance": bool(unseen.get("ci") and unseen["ci"][0] > 0.5),
        # The token-id lookup's margin over chance as a share of the probe's (only when the probe is above chance).
        "probe_above_chance": probe_above_chance,
        "lookup_share": fmt_pct((c["token_lookup"]["mean"] - 0.5) / (e1["probe"]["mean"] - 0.5), 0) if probe_above_chance else None,
        "not_converged": [str(feature) for feature in e1["not_converged"]],
    }


def _experiment2(e2: dict) -> dict:
    r2, sae = e2["map"]["r2"], e2["sae"]
    resid_ci = e2["residual"]["probe"].get("ci")
    return {
        "solver": e2["map"]["solver"], "r2": fmt_fixed(r2["fve"], 3), "r2_uniform": fmt_fixed(r2["uniform"], 3),
        "r2_token_mean": fmt_fixed(e2["map"]["r2_token_mean"]["fve"], 3),
        "width": fmt_count(sae["width"]), "train_tokens": fmt_count(sae["train_tokens"]), "target_l0": fmt_sig(sae["target_l0"], 2),
        "baseline_l0": fmt_sig(e2["baseline"]["features"]["l0_val"], 2), "residual_l0": fmt_sig(e2["residual"]["features"]["l0_val"], 2),
        "pairs": fmt_count(e2["residual_minus_baseline"]["n"]),
        "baseline": mean_ci(e2["baseline"]["probe"]), "residual": mean_ci(e2["residual"]["probe"]),
        "residual_vs_baseline": _paired(e2["residual_minus_baseline"]),
        "lookup_residual_vs_baseline": _paired(e2["token_lookup_residual_minus_baseline"]),
        "residual_above_chance": bool(resid_ci and resid_ci[0] > 0.5),
    }


def probes(p: dict) -> dict:
    """``sec_probes``: every number it quotes (the seed's claims, the data, each layer's two experiments), and its verdict keys."""
    d, seed = p["data"], p["seed_claims"]
    layers = list(p["layers"])
    features = p["layers"][layers[0]]["experiment1"]["features"]
    return {
        "seed": {"probe": fmt_pct(seed["probe_mean_accuracy"], 2), "at_least": str(seed["at_least"]["0.85"]),
                 "probed": str(seed["probed"]), "map_r2": fmt_fixed(seed["map_r2"], 2),
                 "residual": fmt_pct(seed["residual_sae_mean_accuracy"], 2), "baseline": fmt_pct(seed["baseline_sae_mean_accuracy"], 2)},
        "layer0_is_token_function": bool(p["layer0_is_token_function"]),
        "data": {key: fmt_count(d[key]) for key in ("rows_train", "rows_val", "tokens_train", "tokens_val", "heldout_types",
                                                    "token_types", "tokens_unseen_types")},
        "features": {key: fmt_count(features[key]) for key in ("probed", "eligible", "dead", "width", "too_few_positives")},
        "experiment1": [{"layer": layer, **_experiment1(p["layers"][layer])} for layer in layers],
        "experiment2": [{"layer": layer, **_experiment2(p["layers"][layer]["experiment2"])} for layer in layers],
    }


def probes_table(p: dict) -> dict:
    """Experiment 1 (probe and controls) and 2 (map, baseline vs residual SAE): one cell per layer, and the seed's."""
    layers = list(p["layers"])
    seed = p["seed_claims"]

    def cells(cell) -> list:
        return [cell(p["layers"][layer]) for layer in layers]

    def control(key: str) -> list[str]:
        return cells(lambda e: mean_ci(e["experiment1"]["controls"].get(key)))

    return {
        "layers": layers,
        "probe": cells(lambda e: mean_ci(e["experiment1"]["probe"])), "at_least": cells(lambda e: _at_least(e["experiment1"]["probe"])),
        "controls": {key: control(key) for key in ("unseen_probe", "token_lookup", "context_lookup", "position", "shuffled")},
        "r2": cells(lambda e: fmt_fixed(e["experiment2"]["map"]["r2"]["fve"], 3)),
        "r2_uniform": cells(lambda e: fmt_fixed(e["experiment2"]["map"]["r2"]["uniform"], 3)),
        "r2_token_mean": cells(lambda e: fmt_fixed(e["experiment2"]["map"]["r2_token_mean"]["fve"], 3)),
        "baseline": cells(lambda e: mean_ci(e["experiment2"]["baseline"]["probe"])),
        "residual": cells(lambda e: mean_ci(e["experiment2"]["residual"]["probe"])),
        "residual_vs_baseline": cells(lambda e: _paired(e["experiment2"]["residual_minus_baseline"])),
        "seed": {"probe": fmt_fixed(seed["probe_mean_accuracy"], 4), "at_least": f"{seed['at_least']['0.85']}/{seed['probed']}",
                 "map_r2": fmt_fixed(seed["map_r2"], 4), "baseline": fmt_fixed(seed["baseline_sae_mean_accuracy"], 4),
                 "residual": fmt_fixed(seed["residual_sae_mean_accuracy"], 4),
                 "residual_vs_baseline": fmt_fixed(seed["residual_sae_mean_accuracy"] - seed["baseline_sae_mean_accuracy"], 3)},
    }
