"""Causal stage: does the model use the dark matter's ICA components?

``python -m darkmatter.causal.stage --run NAME``, on the run's held-out rows (``darkmatter.causal.effects``
continues the forward from the cached layer-L activations; special tokens are out of edits and loss).
Every ablation acts in each of ``causal.edit_spaces`` (``darkmatter.causal.edits``): the first, by
default ``r``, removes a direction from the dark matter r = x − SAE(x) alone; ``x`` removes it from
the activation, and with it whatever the SAE reconstructs along it.

1. **Ranking and attribution** (``causal.attribution_rows``): one forward + backward pass gives
   ∂loss/∂x at the hook; every unit gets a predicted effect of its removal in the primary space
   (attribution patching: the magnitude ranks, see ``effects.predicted_effects``) and an activation ×
   gradient attribution. Units: every ICA component (mixing direction), its density-matched SAE
   feature (decoder row) and k random whitened units (V Λ^{1/2} q): equal pools, so the top units
   of ICA and of random are picked from as many candidates. Per row, how many of the top ``attribution_top_k`` units by |attribution| fall
   in each group, against the share the group would get by chance.
2. **Exact ablations** on other held-out rows (``causal.rows``), per group the units with the
   largest predicted effect plus a seeded sample of the rest, the same units in every space: ΔLM
   loss and KL per unit with bootstrap CIs over rows; ICA vs its matched SAE features as a paired
   test over pairs, ICA vs random unpaired; how well the cheap ranking agreed (Spearman ρ,
   predicted vs exact).
3. **Subspaces** (Deng et al. 2026 form): the m most kurtotic ICA directions, the top-m PCs of r
   and random m-dim whitened subspaces, removed together; loss ratio to clean. At m = k the three
   spans are the same subspace (``darkmatter.causal.edits``): the identity check (one random
   subspace suffices there), reported as the largest per-row difference against a tolerance,
   not as a bootstrap test of rounding noise (:func:`identity_check`).
   **Where in r's spectrum the loss lives** (r-space): bands of r's principal components that double
   in width ([0, 8), [8, 16), ...), each removed from r; ΔLM per unit of r's variance removed.
4. **Error-node split** (Marks et al. 2024): loss with x replaced by SAE(x) (the dark matter
   removed), by SAE(x) + r (= x, the check), and with the ICA part of r removed,
   V Vᵀ (t − μ); the share of the dark matter's effect the ICA part carries, with a bootstrap CI.
5. **Steering** (``darkmatter.causal.steer``): chosen components and their matched SAE features,
   norm-matched, over ``causal.steer_alphas``: continuations, the top next tokens, the unit's own
   activation on what the steered model wrote, and each direction's logit lens (±v̂ unembedded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli


def check_inputs(cfg, k: int, n_heldout_rows: int) -> None:
    """Bad input, one line each, before any compute."""
    bad = [j for j in cfg.steer_components if j >= k]
    if bad:
        raise UserError(f"causal.steer_components {bad} out of range: the run has {k} ICA components (0..{k - 1}); "
                        "fix causal.steer_components or leave it empty to steer the top components")
    need = cfg.attribution_rows + cfg.rows
    if need > n_heldout_rows:
        raise UserError(f"causal.attribution_rows + causal.rows = {need} exceeds the {n_heldout_rows} held-out rows; "
                        "lower them or raise sae.heldout_fraction / activations.n_tokens")


#: |Δ loss| per row (nats) below which removals of one subspace in different bases agree: the
#: float32 forward's rounding is ~1e-6 here, an error in the edit is orders of magnitude larger.
IDENTITY_TOLERANCE = 1e-4


def identity_check(a: np.ndarray, b: np.ndarray) -> dict:
    """The same removal through two bases: the largest per-row difference, against a tolerance.

    A bootstrap CI of rounding noise can exclude 0 and read as an effect (it did, at 1e-7), and it
    moves with any 1e-12 change of the inputs; what is worth reporting is whether the two agree.
    """
    worst = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    return {"same_subspace": True, "max_abs_difference": worst, "tolerance": IDENTITY_TOLERANCE,
            "agree": worst <= IDENTITY_TOLERANCE}


def pick_exact(predicted: np.ndarray, top: int, extra: int, seed: int) -> np.ndarray:
    """Indices: the ``top`` largest |predicted| and a seeded sample of ``extra`` of the rest."""
    order = np.argsort(-np.abs(predicted), kind="stable")
    rest = order[top:]
    sample = np.random.default_rng(seed).choice(rest, min(extra, len(rest)), replace=False) if len(rest) else []
    return np.sort(np.concatenate([order[:top], sample]).astype(np.int64))


def unit_summary(effects: dict, n_boot: int, rng) -> dict:
    from darkmatter.stats import mean_with_ci

    return {"delta_loss": mean_with_ci(effects["delta_loss"], n_boot, rng), "kl": mean_with_ci(effects["kl"], n_boot, rng)}


def group_tests(exact: dict, ica_ids: np.ndarray, partner: dict, random_ids: np.ndarray, n_boot: int, rng) -> dict:
    """ICA vs matched SAE (paired over pairs) and ICA vs random (unpaired), on mean Δloss per unit."""
    from darkmatter.stats import paired_difference, unpaired_difference

    mean = {name: float(np.mean(e["delta_loss"])) for name, e in exact.items()}
    ica = np.array([mean[f"ica-{j}"] for j in ica_ids])
    sae = np.array([mean[f"sae-{partner[j]}"] for j in ica_ids])
    random = np.array([mean[f"random-{j}"] for j in random_ids])
    return {"ica_vs_sae": paired_difference(ica, sae, n_boot, rng), "ica_vs_random": unpaired_difference(ica, random, n_boot, rng)}


def top_k_shares(scores: dict[str, np.ndarray], k: int) -> dict:
    """Per row, the share of the top-k units by |attribution| that each group holds, against its
    share of all units (what chance gives)."""
    names = list(scores)
    allscores = np.concatenate([np.abs(scores[n]) for n in names], axis=1)
    owner = np.concatenate([np.full(scores[n].shape[1], i) for i, n in enumerate(names)])
    top = np.argsort(-allscores, axis=1, kind="stable")[:, :k]
    counts = np.stack([(owner[top] == i).sum(1) for i in range(len(names))], axis=1)
    total = sum(scores[n].shape[1] for n in names)
    return {n: {"mean_in_top_k": float(counts[:, i].mean()), "share_of_top_k": float(counts[:, i].mean() / k),
                "share_of_units": scores[n].shape[1] / total, "per_row": counts[:, i].tolist()}
            for i, n in enumerate(names)}


def load_inputs(args, run):
    """Everything the stage reads, with a one-line error for a missing upstream output."""
    for path, stage in ((args.components, "ica"), (args.examples, "examples"), (args.stats, "residual")):
        if not path.exists():
            raise UserError(f"{path} not found: the causal stage needs the run's {stage} outputs; "
                            f"run `dvc repro {stage}@{run.name}` first")
    units = json.loads(args.examples.read_text())["units"]
    partner = {u["id"]: u["matched_sae_feature"] for u in units if u["kind"] == "ica"}
    return dict(np.load(args.components)), dict(np.load(args.stats)), np.array([partner[j] for j in sorted(partner)])


def train_mean(cache, stats: dict, heldout_fraction: float, chunk: int = 16384) -> np.ndarray:
    """Mean of x over the train rows' analysed tokens (what mean-ablation keeps), streamed."""
    from darkmatter.analysis.tokens import analysed_tokens, heldout_token_mask

    heldout = heldout_token_mask(cache.meta["n_rows"], cache.meta["context_length"], heldout_fraction)
    index = analysed_tokens(stats, heldout, "train")
    total = np.zeros(cache.acts.shape[1])
    for lo in range(0, len(index), chunk):
        total += np.asarray(cache.acts[index[lo : lo + chunk]], dtype=np.float64).sum(0)
    return total / len(index)


def ablation(directions: np.ndarray, mean, device: str, space: str):
    """The edit removing one unit direction [d], or the span of orthonormal rows [m, d], in ``space``:
    from the dark matter r (the batch's ``residual``) or from the activation x."""
    import torch

    from darkmatter.causal.edits import remove, remove_from_residual

    q = torch.as_tensor(np.atleast_2d(directions).T, dtype=torch.float32, device=device)
    if space == "r":
        return lambda resid, batch: remove_from_residual(resid, batch.residual, q, mean, batch.edit)
    return lambda resid, batch: remove(resid, q, mean, batch.edit)


def spectrum_edits(stats: dict, mean, device: str) -> tuple[dict, dict]:
    """r-space removals of bands of r's principal components (training rows), and each band's share of
    var(r): where in r's spectrum the loss lives."""
    from darkmatter.causal.edits import spectrum_bands

    vectors, values = stats["pca_residual_vectors"], np.clip(stats["pca_residual_values"], 0, None)
    bands = spectrum_bands(len(values))
    edits = {f"band-{lo}-{hi}": ablation(vectors[:, lo:hi].T, mean, device, "r") for lo, hi in bands}
    shares = {f"band-{lo}-{hi}": float(values[lo:hi].sum() / values.sum()) for lo, hi in bands}
    return edits, shares


def spectrum_rows(effects: dict, shares: dict, n_boot: int, rng) -> list[dict]:
    """Per band: ΔLM with its interval, the share of var(r) removed, and ΔLM per percent of var(r)."""
    from darkmatter.stats import mean_with_ci

    rows = []
    for name, share in shares.items():
        _, lo, hi = name.split("-")
        delta = mean_with_ci(effects[name]["delta_loss"], n_boot, rng)
        per = {"mean": delta["mean"] / (100 * share), "ci": [c / (100 * share) for c in delta["ci"]] if delta["ci"] else None}
        rows.append({"pcs": [int(lo), int(hi)], "variance_share": share, "delta_loss": delta, "delta_loss_per_percent": per})
    return rows


def plot(report: dict, predicted: dict, exact: dict, out_dir: Path) -> None:
    """Predicted against exact ΔLM per unit, the subspace removals (both in the primary edit space), and
    where in r's spectrum the loss lives (ΔLM per percent of var(r), per band of principal components)."""
    from darkmatter.figures import save_figure, subplots

    colours = {"ica": "C0", "sae": "C1", "random": "C7"}
    spectrum = report.get("spectrum")
    fig, axes = subplots(1, 3 if spectrum else 2, figsize=(11.5 if spectrum else 8.0, 3.0))
    for name, e in exact.items():
        kind = name.split("-")[0]
        axes[0].scatter(predicted[name], np.mean(e["delta_loss"]), s=12, color=colours[kind])
    lo = min(min(predicted.values()), min(np.mean(e["delta_loss"]) for e in exact.values()))
    hi = max(max(predicted.values()), max(np.mean(e["delta_loss"]) for e in exact.values()))
    axes[0].plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle=":")
    axes[0].set_xlabel("predicted effect (attribution patching, |first order|)")
    axes[0].set_ylabel(f"exact ΔLM loss ({report['primary_space']}-space, held-out rows)")
    for kind, colour in colours.items():
        axes[0].scatter([], [], color=colour, label=kind)
    axes[0].legend(fontsize=7)
    subspaces = report["spaces"][report["primary_space"]]["subspaces"]
    sizes = sorted(subspaces, key=int)
    for kind in ("ica", "pca", "random"):
        axes[1].plot([int(m) for m in sizes], [subspaces[m][kind]["loss_ratio"]["value"] for m in sizes],
                     "o-", label=kind, color={"ica": "C0", "pca": "C2", "random": "C7"}[kind])
    axes[1].set_xlabel("dimensions removed (m)")
    axes[1].set_ylabel("LM loss / clean loss")
    axes[1].legend(fontsize=7)
    if spectrum:
        mid = [np.sqrt(max(b["pcs"][0], 1) * b["pcs"][1]) for b in spectrum]
        per = [b["delta_loss_per_percent"] for b in spectrum]
        err = np.array([[p["mean"] - p["ci"][0], p["ci"][1] - p["mean"]] if p["ci"] else [0, 0] for p in per]).T
        axes[2].errorbar(mid, [p["mean"] for p in per], yerr=err, fmt="o-", color="C3", capsize=3)
        axes[2].set_xscale("log")
        axes[2].axhline(0, color="grey", linewidth=0.8, linestyle=":")
        axes[2].set_xlabel("principal components of r (band)")
        axes[2].set_ylabel("ΔLM per % of var(r) removed")
    save_figure(fig, out_dir / "ablation")


def error_node_edits(sae, components: dict, stats: dict, target: str, device: str, chunk_tokens: int) -> dict:
    """x → SAE(x); x → SAE(x) + r (= x, the check); x → x − V Vᵀ (t − μ) (the ICA part of r removed)."""
    import torch

    from darkmatter.analysis.ica import ica_target
    from darkmatter.analysis.stream import Chunk, reconstruct

    basis = torch.as_tensor(components["pca_basis"], dtype=torch.float32, device=device)
    mean = torch.as_tensor(components["mean"], dtype=torch.float32, device=device)

    def splice(kind):
        def edit(resid, batch):
            flat = resid.reshape(-1, resid.shape[-1])
            recon = reconstruct(sae, flat, chunk_tokens)
            if kind == "sae_only":
                new = recon
            elif kind == "sae_plus_r":
                new = recon + (flat - recon)
            else:
                t = ica_target(Chunk(None, flat, None, flat - recon), target, stats).float()
                new = flat - ((t - mean) @ basis) @ basis.T
            return torch.where(batch.edit[..., None], new.reshape(resid.shape), resid)
        return edit

    return {kind: splice(kind) for kind in ("sae_only", "sae_plus_r", "minus_ica_part")}


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, n_boot: int, rng) -> dict:
    """mean(numerator) / mean(denominator) over rows, with a bootstrap interval over rows."""
    from darkmatter.stats import MIN_N_FOR_CI, percentile_interval

    value = float(numerator.mean() / denominator.mean())
    if len(numerator) < MIN_N_FOR_CI:
        return {"value": value, "ci": None, "n": int(len(numerator))}
    idx = rng.integers(0, len(numerator), (n_boot, len(numerator)))
    draws = numerator[idx].mean(1) / denominator[idx].mean(1)
    return {"value": value, "ci": percentile_interval(draws), "n": int(len(numerator))}


@cli
def main(argv: list[str] | None = None) -> None:
    import torch
    from scipy.stats import spearmanr

    from darkmatter.analysis.stream import latent_chunk_tokens, reconstruct
    from darkmatter.causal.edits import subspaces
    from darkmatter.causal.effects import (attributions, batches, edit_effects, gradients, predicted_effects, scored_positions,
                                           with_residual)
    from darkmatter.causal.steer import logit_lens, steer
    from darkmatter.causal.units import build_units
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_run_subject, load_tokenizer
    from darkmatter.data.split import split_rows
    from darkmatter.sae.io import check_compatible, load_sae, to_device
    from darkmatter.stats import mean_with_ci, paired_difference

    parser = argparse.ArgumentParser(description="Causal tests of the dark matter's ICA components.")
    add_run_arguments(parser)
    for name in ("--cache", "--weights", "--sae", "--stats", "--components", "--examples", "--out", "--metrics", "--figures"):
        parser.add_argument(name, type=Path, required=True)
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cfg = run.causal
    components, stats, sae_ids = load_inputs(args, run)
    k = len(components["mixing"])
    cache = ActivationCache.open(args.cache)
    _, held_rows = split_rows(cache.meta["n_rows"], run.sae.heldout_fraction)
    check_inputs(cfg, k, len(held_rows))

    subject = load_run_subject(run, args.weights)
    sae = to_device(load_sae(args.sae), run.subject.device)
    check_compatible(sae, cache)
    layer, site, device = run.layer, run.subject.site, subject.device
    rng = np.random.default_rng(cfg.seed)
    attribution_rows = held_rows[: cfg.attribution_rows]
    exact_rows = held_rows[cfg.attribution_rows : cfg.attribution_rows + cfg.rows]
    chunk_tokens = latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20)
    groups = build_units(components, stats, sae, run.ica.target, sae_ids, k, cfg.seed + 1, chunk_tokens)
    primary = cfg.edit_spaces[0]
    means = {"x": train_mean(cache, stats, run.sae.heldout_fraction), "r": stats["mean_residual"]} if cfg.ablation == "mean" \
        else {"x": None, "r": None}
    means_t = {space: torch.zeros(1, device=device) if m is None else torch.as_tensor(m, dtype=torch.float32, device=device)
               for space, m in means.items()}

    # 1. one gradient pass: the cheap ranking of every unit (in the primary space), and the attributions
    positions = scored_positions(cache.meta["context_length"], cfg.positions_per_row)
    attribution_data = with_residual(list(batches(cache, attribution_rows, cfg.batch_rows, positions, device)), sae, chunk_tokens)
    grads = gradients(subject, layer, site, attribution_data)
    first_order = {g: predicted_effects(grads, group.directions, means[primary], primary) for g, group in groups.items()}
    predicted = {g: magnitude.mean(0) for g, (_, magnitude) in first_order.items()}
    predicted_signed = {g: signed.mean(0) for g, (signed, _) in first_order.items()}
    attribution = {g: attributions(grads, group, sae, chunk_tokens) for g, group in groups.items()}

    # 2. exact ablations on other held-out rows: top and sampled ICA units with their partners; random units;
    # the same units in every edit space
    exact_data = with_residual(list(batches(cache, exact_rows, cfg.batch_rows, positions, device)), sae, chunk_tokens)
    chosen = {"ica": pick_exact(predicted["ica"], cfg.exact_top, cfg.exact_random, cfg.seed),
              "random": pick_exact(predicted["random"], cfg.exact_top, cfg.exact_random, cfg.seed + 2)}
    chosen["sae"] = chosen["ica"]  # each component's partner: the paired design
    units = {name: (g, j) for g in ("ica", "sae", "random") for j, name in zip(chosen[g], groups[g].names(chosen[g]))}
    exact = {}
    for space in cfg.edit_spaces:
        edits = {name: ablation(groups[g].directions[j], means_t[space], device, space) for name, (g, j) in units.items()}
        exact[space] = edit_effects(subject, layer, site, exact_data, edits, f"exact ablations ({space})")
        clean_loss = exact[space].pop("clean_loss")
    predicted_chosen = {name: float(predicted[g][j]) for name, (g, j) in units.items()}
    names = list(units)

    # 3. subspaces (every space), r's spectrum (r-space) and 4. the error-node split, on the same rows
    sizes = sorted({max(1, round(f * k)) for f in cfg.subspace_fractions})
    bases = {f"{kind}-{m}-{i}": basis for m in sizes
             for kind, spans in subspaces(components, m, cfg.n_random_subspaces if m < k else 1, cfg.seed + m).items()
             for i, basis in enumerate(spans)}
    sub_edits = {f"{space}:{name}": ablation(basis.T, means_t[space], device, space)
                 for space in cfg.edit_spaces for name, basis in bases.items()}
    band_edits, band_shares = spectrum_edits(stats, means_t["r"], device) if "r" in cfg.edit_spaces else ({}, {})
    more = edit_effects(subject, layer, site, exact_data,
                        sub_edits | band_edits | error_node_edits(sae, components, stats, run.ica.target, device, chunk_tokens),
                        "subspaces, spectrum, error nodes")
    more.pop("clean_loss")

    # 5. steering: the components with the largest predicted effect (or those asked for) and their partners
    steer_ids = list(cfg.steer_components) or [int(j) for j in np.argsort(-np.abs(predicted["ica"]), kind="stable")[: cfg.n_steer]]
    tokenizer = load_tokenizer(run.model.name, args.weights)
    decode = lambda i: tokenizer.decode([i])  # noqa: E731
    context = cache.meta["context_length"]
    prompt_flat = exact_rows[0] * context + np.arange(cfg.steer_prompt_tokens)
    prompt, prompt_special = np.asarray(cache.tokens[prompt_flat]), np.asarray(cache.special[prompt_flat])
    hook = subject.hook_name(layer, site)

    def reader(group, j):
        def read(seq):
            with torch.inference_mode():
                x = subject.activations(torch.from_numpy(seq.astype(np.int64))[None], layer, site)[0].to(sae.W_dec.device)
                return group.read(x, x - reconstruct(sae, x, chunk_tokens))[:, j].float().cpu().numpy()
        return read

    steering = []
    for j in steer_ids:
        norm = float(np.linalg.norm(components["mixing"][j]))  # one source standard deviation: α in those units
        for g in ("ica", "sae"):
            vector = groups[g].directions[j] * norm
            steering.append({"unit": groups[g].names([j])[0], "paired_with": f"ica-{j}", "vector_norm": norm,
                             "logit_lens": logit_lens(subject, groups[g].directions[j], decode),
                             "prompt": "".join(decode(int(t)) for t in prompt),
                             "alphas": [steer(subject, hook, prompt, prompt_special, vector, a, cfg.steer_new_tokens,
                                              reader(groups[g], j), decode) for a in cfg.steer_alphas]})

    # metrics
    n_boot = cfg.n_bootstrap

    def subspace_row(space, m):
        row, deltas = {}, {}
        for kind in ("ica", "pca", "random"):
            deltas[kind] = np.mean([more[n]["delta_loss"] for n in more if n.startswith(f"{space}:{kind}-{m}-")], axis=0)
            row[kind] = {"delta_loss": mean_with_ci(deltas[kind], n_boot, rng),
                         "loss_ratio": ratio_ci(clean_loss + deltas[kind], clean_loss, n_boot, rng)}
        if m == k:  # one subspace in three bases: differences are float32 rounding, not an effect to test
            for other in ("pca", "random"):
                row[f"ica_minus_{other}"] = identity_check(deltas["ica"], deltas[other])
            return row
        # paired over rows: the same rows under each removal
        row["ica_minus_pca"] = paired_difference(deltas["ica"], deltas["pca"], n_boot, rng)
        row["ica_minus_random"] = paired_difference(deltas["ica"], deltas["random"], n_boot, rng)
        return row

    def space_report(space):
        e = exact[space]
        agreement = spearmanr([predicted_chosen[n] for n in names], [float(np.mean(e[n]["delta_loss"])) for n in names])
        return {
            "exact": {n: unit_summary(e[n], n_boot, rng) | {"predicted_effect": predicted_chosen[n]} for n in names},
            "exact_groups": {g: mean_with_ci([np.mean(e[n]["delta_loss"]) for n in groups[g].names(chosen[g])], n_boot, rng)
                             for g in ("ica", "sae", "random")},
            "tests": group_tests(e, chosen["ica"], {j: int(sae_ids[j]) for j in range(k)}, chosen["random"], n_boot, rng),
            "ranking_agreement": {"spearman": float(agreement.statistic), "p": float(agreement.pvalue), "n_units": len(names),
                                  "ranked_in": primary},
            "subspaces": {str(m): subspace_row(space, m) for m in sizes},
        }

    report = {
        "rows": {"attribution": int(len(attribution_rows)), "exact": int(len(exact_rows)),
                 "positions_per_row": int(len(positions)),
                 "which": "held-out rows; special tokens are out of every edit and of the loss"},
        "ablation": cfg.ablation,
        "primary_space": primary,
        "clean_loss": mean_with_ci(clean_loss, n_boot, rng),
        "units": {g: int(len(group.ids)) for g, group in groups.items()},
        "predicted_effect": {g: {"magnitude_mean": float(v.mean()), "magnitude_max": float(v.max()),
                                 "signed_mean": float(predicted_signed[g].mean()), "space": primary} for g, v in predicted.items()},
        "spaces": {space: space_report(space) for space in cfg.edit_spaces},
        "spectrum": spectrum_rows(more, band_shares, n_boot, rng) if band_shares else None,
        "error_node_split": {
            **{kind: mean_with_ci(more[kind]["delta_loss"], n_boot, rng) for kind in ("sae_only", "sae_plus_r", "minus_ica_part")},
            "ica_share": ratio_ci(more["minus_ica_part"]["delta_loss"], more["sae_only"]["delta_loss"], n_boot, rng),
        },
        "attribution": {"top_k": cfg.attribution_top_k, "groups": top_k_shares(attribution, cfg.attribution_top_k)},
        "steering": {"components": steer_ids, "alphas": list(cfg.steer_alphas)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steering.json").write_text(json.dumps(steering, indent=1) + "\n")
    np.savez(args.out / "effects.npz", clean_loss=clean_loss,
             **{f"exact_{space}_{n}": exact[space][n]["delta_loss"] for space in cfg.edit_spaces for n in names},
             **{f"predicted_{g}": v for g, v in predicted.items()}, **{f"predicted_signed_{g}": v for g, v in predicted_signed.items()}, **{f"attribution_{g}": v for g, v in attribution.items()})
    plot(report, predicted_chosen, exact[primary], args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({space: report["spaces"][space]["exact_groups"] for space in cfg.edit_spaces}
                     | {"error_node_split": report["error_node_split"]}, indent=2))


if __name__ == "__main__":
    main()
