"""Do the ICA components of the dark matter point where the SAE's decoder already points?

For each ICA *mixing* direction (what a component writes; see ``darkmatter.analysis.ica``), the
max |cos| over every SAE decoder row and the argmax feature, computed in blocks of decoder rows
and of directions within ``residual.latent_budget_mb``, so a 1M-wide dictionary never sits in
memory as one matrix product. Directions are binned as matched (> ``match_above``), partial, or novel
(< ``novel_below``).

**The null is a random rotation, not random directions.** Every mixing direction carries the
same un-whitening, V Λ^{1/2}, so it leans towards the top principal components of the target,
whatever W the ICA found; a random direction in the PCA subspace without the Λ^{1/2} weight
does not, and "ICA sits closer to the dictionary than random directions in the subspace" could
be that weighting alone. The fair null is the mixing directions of a random orthogonal W,
V Λ^{1/2} Qᵀ with Q Haar-distributed: exactly what ICA would report had it found nothing. And
the k directions are estimated jointly (they are the columns of one matrix), so they are not k
independent draws: each statistic of the k directions together (their median max |cos|, how
many are novel) is compared with its distribution over ``compare.n_rotations`` whole random
rotations, with Monte-Carlo p-values (:mod:`darkmatter.stats`). Random unit directions in the
whole activation space stay as a reference row.

**Kurtosis gap, like for like.** A sparse code's kurtosis is ~1/p for a feature firing at rate p,
so comparing ICA sources with SAE latents (zeros included: the seeds' definition, kept and
labelled as such) mostly says that JumpReLU outputs are sparse. The like-for-like comparison
puts the ICA sources (linear readouts of r) next to the SAE's pre-activations W_enc x + b_enc
(linear readouts of x) of the *active* features (firing on more than
``compare.active_frequency`` of held-out analysed tokens), each beside its own null: random
whitened directions for the sources, random unit directions in x for the pre-activations. All
kurtoses are on the same tokens, the held-out rows' analysed tokens. Gaps are differences of
medians with bootstrap intervals and permutation p-values, never ratios of excess kurtoses
(which change sign when a median is ≤ 0).

**Every ICA fit.** ICA's optimum moves with the last bit of its inputs (docs/reproducibility.md),
so the comparisons that read the ICA solution as a whole (median max |cos| and novel fraction
against the rotation null; ICA sources against random whitened directions) are also computed for every other
fit the ICA stage made (restarts and disjoint resamples, the same whitening); the paper states a
verdict only where every fit gives the same one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli
from darkmatter.stats import monte_carlo_p, percentile_interval, unpaired_difference


def cosine_blocks(n_directions: int, n_rows: int, d: int, budget_bytes: int) -> tuple[int, int]:
    """(decoder rows, directions) per block of :func:`max_abs_cos`: the normalised decoder block
    [rows, d] and the block of cosines [directions, rows] each take at most half of ``budget_bytes``
    in float32 (at least one of each)."""
    rows = max(1, min(n_rows, budget_bytes // (2 * 4 * d)))
    return rows, max(1, min(n_directions, budget_bytes // (2 * 4 * rows)))


def max_abs_cos(directions: np.ndarray, decoder, budget_bytes: int,
                among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Max |cos| of each row of ``directions`` over the rows of ``decoder`` (or the rows ``among``, read
    block by block: a copy of them would be decoder-sized), and the argmax row (its position in ``among``).

    ``decoder`` may be a torch tensor (on any device: the cosines are computed there) or an array
    [d_sae, d]. It is read in blocks of rows and the directions in blocks (:func:`cosine_blocks`),
    so the temporaries stay within ``budget_bytes`` (``residual.latent_budget_mb``, the chunk budget
    of every stage) whatever the width: 1,000 rotations × 128 components against a 262k-row decoder
    would otherwise be a 134-GB matrix of cosines.
    """
    import torch

    device = decoder.device if torch.is_tensor(decoder) else torch.device("cpu")
    with torch.no_grad():
        dirs = torch.as_tensor(directions, dtype=torch.float32).to(device)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        n, d = dirs.shape
        n_rows = decoder.shape[0] if among is None else len(among)
        rows, per = cosine_blocks(n, n_rows, d, budget_bytes)
        best = torch.full((n,), -1.0, device=device)
        arg = torch.zeros(n, dtype=torch.int64, device=device)
        for lo in range(0, n_rows, rows):
            part = decoder[lo : lo + rows] if among is None else decoder[np.asarray(among[lo : lo + rows], dtype=np.int64)]
            block = torch.as_tensor(part).detach().to(device, torch.float32)
            block = block / block.norm(dim=1, keepdim=True).clamp_min(1e-12)
            for start in range(0, n, per):
                value, index = (dirs[start : start + per] @ block.T).abs_().max(dim=1)
                better = value > best[start : start + per]
                best[start : start + per][better] = value[better]
                arg[start : start + per][better] = index[better] + lo
    return best.cpu().numpy().astype(np.float64), arg.cpu().numpy()


def bins(max_cos: np.ndarray, novel_below: float, match_above: float) -> dict:
    n = len(max_cos)
    counts = {
        "matched": int((max_cos > match_above).sum()),
        "partial": int(((max_cos >= novel_below) & (max_cos <= match_above)).sum()),
        "novel": int((max_cos < novel_below).sum()),
    }
    return {"n": n, **counts, "novel_fraction": counts["novel"] / n if n else None,
            "median_max_cos": float(np.median(max_cos)) if n else None}


def rotation_null_directions(basis: np.ndarray, scale: np.ndarray, n_rotations: int, seed: int) -> np.ndarray:
    """Mixing directions of ``n_rotations`` random orthogonal W: rows q Λ^{1/2} Vᵀ, [n_rotations · k, d]."""
    from darkmatter.stats import random_rotation

    rng = np.random.default_rng(seed)
    k = basis.shape[1]
    rotations = np.concatenate([random_rotation(k, rng) for _ in range(n_rotations)])
    return (rotations * scale[None, :]) @ basis.T


def two_sided(p_high: float, p_low: float) -> float:
    return min(1.0, 2 * min(p_high, p_low))


def rotation_test(observed: np.ndarray, null: np.ndarray, novel_below: float) -> dict:
    """The k directions' median max |cos| and novel count against their distribution under
    random rotations (``null``: [n_rotations, k] max |cos|)."""
    med, med_null = float(np.median(observed)), np.median(null, axis=1)
    nov, nov_null = int((observed < novel_below).sum()), (null < novel_below).sum(axis=1)
    k = null.shape[1]
    p_closer, p_farther = monte_carlo_p(med_null, med), monte_carlo_p(-med_null, -med)
    p_more, p_fewer = monte_carlo_p(nov_null, nov), monte_carlo_p(-nov_null, -nov)
    return {
        "n_rotations": int(len(null)),
        "median_max_cos": {"observed": med, "null_mean": float(med_null.mean()), "null_interval": percentile_interval(med_null),
                           "p_closer": p_closer, "p_farther": p_farther, "p_two_sided": two_sided(p_closer, p_farther)},
        "novel_fraction": {"observed": nov / k, "null_mean": float(nov_null.mean() / k),
                           "null_interval": [v / k for v in percentile_interval(nov_null)],
                           "p_more": p_more, "p_fewer": p_fewer, "p_two_sided": two_sided(p_more, p_fewer)},
    }


def median_gap(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """median(a) − median(b) of finite values: bootstrap CI and permutation p (unpaired)."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = unpaired_difference(a, b, n_boot, rng, statistic=np.median)
    return {"median_a": float(np.median(a)) if len(a) else None, "median_b": float(np.median(b)) if len(b) else None, **out}


def kurtosis_gap(components: dict, stats: dict, active: np.ndarray, cfg) -> dict:
    """The seeds' definition (labelled) and the like-for-like comparisons, on held-out tokens."""
    rng = np.random.default_rng(cfg.seed)
    ica = components["kurtosis"]
    latent, preact = stats["latent_kurtosis"][active], stats["preact_kurtosis"][active]
    seeds = median_gap(latent, ica, cfg.n_bootstrap, rng)
    both_positive = seeds["median_a"] is not None and seeds["median_a"] > 0 and seeds["median_b"] > 0
    seeds["ratio_of_medians"] = seeds["median_a"] / seeds["median_b"] if both_positive else None
    out = {
        "active_frequency": cfg.active_frequency,
        "n_active_features": int(active.sum()),
        "rows": "held-out rows, analysed tokens",
        "seed_definition": {"what": "SAE latents with their zeros (kurtosis ~1/p for firing rate p) minus ICA sources; "
                                    "a = SAE, b = ICA", **seeds},
        "like_for_like": {"what": "SAE pre-activations (linear readouts of x) minus ICA sources (linear readouts of r); "
                                  "a = SAE, b = ICA", **median_gap(preact, ica, cfg.n_bootstrap, rng)},
        "ica_vs_random_whitened": {"what": "ICA sources minus random whitened directions; a = ICA, b = random",
                                   **median_gap(ica, components["random_whitened_kurtosis"], cfg.n_bootstrap, rng)},
        "sae_preact_vs_random_x": {"what": "SAE pre-activations minus random directions in x; a = SAE, b = random",
                                   **median_gap(preact, stats["kurtosis_x_random_directions"], cfg.n_bootstrap, rng)},
    }
    if bool(components["stability_measured"]) and components["stable"].any():
        out["like_for_like_stable"] = median_gap(preact, ica[components["stable"].astype(bool)], cfg.n_bootstrap, rng)
    return out


def fit_checks(components: dict, decoder, null_cos: np.ndarray, reference: dict, cfg, budget_bytes: int) -> list[dict]:
    """The rotation tests and the ICA-vs-random kurtosis gap for every ICA fit, ``reference``'s first."""
    rot = reference["rotation_null"]
    out = [{"fit": "reference", "median_max_cos": rot["median_max_cos"], "novel_fraction": rot["novel_fraction"],
            "ica_vs_random_whitened": reference["kurtosis_gap"]["ica_vs_random_whitened"]}]
    for name, mixing, kurt in zip(components["other_fits"].tolist(), components["other_mixing"], components["other_kurtosis"]):
        test = rotation_test(max_abs_cos(mixing, decoder, budget_bytes)[0], null_cos, cfg.novel_below)
        out.append({"fit": name, "median_max_cos": test["median_max_cos"], "novel_fraction": test["novel_fraction"],
                    "ica_vs_random_whitened": median_gap(kurt, components["random_whitened_kurtosis"], cfg.n_bootstrap,
                                                         np.random.default_rng(cfg.seed))})
    return out


def compare(components: dict, decoder, stats: dict, cfg, budget_bytes: int) -> tuple[dict, dict]:
    """Metrics and per-direction arrays (``budget_bytes`` bounds the cosine blocks: :func:`max_abs_cos`)."""
    from darkmatter.stats import random_unit_directions

    mixing = components["mixing"]
    measured = bool(components["stability_measured"])
    stable = components["stable"].astype(bool)
    k, d = mixing.shape
    if decoder.shape[1] != d:
        raise UserError(f"SAE decoder has d_in {decoder.shape[1]} but the ICA directions have {d}; they come from different runs")
    live = np.flatnonzero(stats["latent_fires_heldout"] > 0)
    ica_cos, ica_arg = max_abs_cos(mixing, decoder, budget_bytes)
    live_cos, _ = max_abs_cos(mixing, decoder, budget_bytes, among=live) if len(live) else (np.zeros(k), None)
    rand_cos, _ = max_abs_cos(random_unit_directions(cfg.n_random, d, cfg.seed), decoder, budget_bytes)
    null_dirs = rotation_null_directions(components["pca_basis"], components["pca_scale"], cfg.n_rotations, cfg.seed + 1)
    null_cos = max_abs_cos(null_dirs, decoder, budget_bytes)[0].reshape(cfg.n_rotations, k)
    active = stats["latent_frequency"] > cfg.active_frequency
    report = {
        "thresholds": {"novel_below": cfg.novel_below, "match_above": cfg.match_above},
        "d_sae": int(decoder.shape[0]),
        "n_live_features": int(len(live)),
        "ica": bins(ica_cos, cfg.novel_below, cfg.match_above),
        "ica_stable": bins(ica_cos[stable], cfg.novel_below, cfg.match_above) if measured else None,
        "ica_vs_live_features": bins(live_cos, cfg.novel_below, cfg.match_above),
        "random": bins(rand_cos, cfg.novel_below, cfg.match_above),
        "rotation_null": {"pooled": bins(null_cos.ravel(), cfg.novel_below, cfg.match_above),
                          **rotation_test(ica_cos, null_cos, cfg.novel_below)},
        "kurtosis_gap": kurtosis_gap(components, stats, active, cfg),
    }
    report["ica_fits"] = fit_checks(components, decoder, null_cos, report, cfg, budget_bytes)
    arrays = {
        "ica_max_cos": ica_cos, "ica_nearest_feature": ica_arg, "ica_max_cos_live": live_cos,
        "random_max_cos": rand_cos, "rotation_null_max_cos": null_cos,
        "sae_active_latent_kurtosis": stats["latent_kurtosis"][active],
        "sae_active_preact_kurtosis": stats["preact_kurtosis"][active],
    }
    return report, arrays


def plot(arrays: dict, components: dict, stats: dict, cfg, out_dir: Path) -> None:
    from darkmatter.figures import save_figure, subplots

    fig, ax = subplots(figsize=(4.2, 3.0))
    edges = np.linspace(0, 1, 41)
    for values, label in ((arrays["ica_max_cos"], "ICA mixing directions"), (arrays["random_max_cos"], "random directions"),
                          (arrays["rotation_null_max_cos"].ravel(), "random rotation W (null)")):
        ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.4, label=label)
    for t in (cfg.novel_below, cfg.match_above):
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("max |cos| with any SAE decoder row")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "decoder_similarity")

    fig, ax = subplots(figsize=(4.2, 3.0))
    series = [(components["kurtosis"], "ICA sources"), (components["random_whitened_kurtosis"], "random whitened directions"),
              (arrays["sae_active_preact_kurtosis"], "active SAE pre-activations"),
              (stats["kurtosis_x_random_directions"], "random directions in x"),
              (arrays["sae_active_latent_kurtosis"], "active SAE latents (with zeros)")]
    finite = np.concatenate([v[np.isfinite(v)] for v, _ in series if len(v)])
    lo, hi = np.quantile(finite, 0.005), np.quantile(finite, 0.995)
    edges = np.concatenate([[-np.inf], np.linspace(min(lo, -1), max(hi, 1), 60), [np.inf]])
    for values, label in series:
        v = values[np.isfinite(values)]
        ax.hist(np.clip(v, edges[1], edges[-2]), bins=edges[1:-1], density=True, histtype="step", linewidth=1.2, label=label)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("excess kurtosis, held-out rows (clipped at the 0.5/99.5% quantiles)")
    ax.set_ylabel("density")
    ax.legend(fontsize=6)
    save_figure(fig, out_dir / "kurtosis_gap")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.sae.io import load_sae, to_device

    parser = argparse.ArgumentParser(description="Compare ICA mixing directions with the SAE dictionary; kurtosis gap.")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--components", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    args = parser.parse_args(argv)
    run = run_from_args(args)
    for path, stage in ((args.stats, "residual"), (args.components, "ica")):
        if not path.exists():
            raise UserError(f"{path} not found; run the {stage} stage first (`dvc repro {stage}@{run.name}`)")
    stats, components = dict(np.load(args.stats)), dict(np.load(args.components))
    sae = to_device(load_sae(args.sae), run.subject.device)  # the cosines run where the decoder is
    report, arrays = compare(components, sae.W_dec, stats, run.compare, run.residual.latent_budget_mb << 20)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "comparison.npz", **arrays)
    plot(arrays, components, stats, run.compare, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ica": report["ica"], "rotation_null": report["rotation_null"],
                      "like_for_like": report["kurtosis_gap"]["like_for_like"]}, indent=2))


if __name__ == "__main__":
    main()
