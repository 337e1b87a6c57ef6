"""Do the ICA components of the dark matter point where the SAE's decoder already points?

For each ICA *mixing* direction (what a component writes; see ``darkmatter.analysis.ica``), the max
|cos| over every SAE decoder row and the argmax feature, computed in blocks of
``compare.decoder_chunk`` rows so a 1M-wide dictionary never sits in memory as one matrix
product. Directions are binned as matched (> ``match_above``), partial, or novel
(< ``novel_below``).

Baselines, with the same statistic: random unit directions in activation space, and random
directions inside the span of the whitened PCA subspace the ICA searched (a random direction
where the ICA could have looked). A Mann–Whitney test says whether ICA directions sit closer to
the dictionary than those. Every count is also given for the stable components alone and
against the live decoder rows alone (features that fired at least once).

Kurtosis gap: the excess kurtosis of the ICA sources against that of the *active* SAE features
(firing on more than ``compare.active_frequency`` of non-special tokens; streamed by the
residual stage), with random projections of r as the Gaussian-ish floor. Reported as ratios
SAE / ICA of medians and of means: above 1, the SAE's features are the sparser ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli


def max_abs_cos(directions: np.ndarray, decoder, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Max |cos| of each row of ``directions`` over the rows of ``decoder``, and the argmax row.

    ``decoder`` may be a torch tensor or array [d_sae, d]; it is read ``chunk`` rows at a time.
    """
    import torch

    dirs = torch.as_tensor(directions, dtype=torch.float32)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    best = torch.full((len(dirs),), -1.0)
    arg = torch.zeros(len(dirs), dtype=torch.int64)
    for lo in range(0, decoder.shape[0], chunk):
        block = torch.as_tensor(decoder[lo : lo + chunk]).detach().float().cpu()
        block = block / block.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims = (dirs @ block.T).abs()
        value, index = sims.max(dim=1)
        better = value > best
        best[better], arg[better] = value[better], index[better] + lo
    return best.numpy().astype(np.float64), arg.numpy()


def bins(max_cos: np.ndarray, novel_below: float, match_above: float) -> dict:
    n = len(max_cos)
    counts = {
        "matched": int((max_cos > match_above).sum()),
        "partial": int(((max_cos >= novel_below) & (max_cos <= match_above)).sum()),
        "novel": int((max_cos < novel_below).sum()),
    }
    return {"n": n, **counts, "novel_fraction": counts["novel"] / n if n else None,
            "median_max_cos": float(np.median(max_cos)) if n else None}


def random_in_subspace(basis: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` random unit directions in the column span of ``basis`` [d, k]."""
    g = np.random.default_rng(seed).standard_normal((n, basis.shape[1]))
    v = g @ basis.T
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def kurtosis_gap(ica_kurtosis: np.ndarray, sae_kurtosis: np.ndarray) -> dict:
    ica, sae = ica_kurtosis[np.isfinite(ica_kurtosis)], sae_kurtosis[np.isfinite(sae_kurtosis)]
    if not len(ica) or not len(sae):
        return {"n_ica": len(ica), "n_sae": len(sae), "ratio_of_medians": None, "ratio_of_means": None}
    return {
        "n_ica": int(len(ica)), "n_sae": int(len(sae)),
        "median_ica": float(np.median(ica)), "median_sae": float(np.median(sae)),
        "mean_ica": float(ica.mean()), "mean_sae": float(sae.mean()),
        "ratio_of_medians": float(np.median(sae) / np.median(ica)),
        "ratio_of_means": float(sae.mean() / ica.mean()),
    }


def compare(components: dict, decoder, stats: dict, cfg) -> tuple[dict, dict]:
    """Metrics and per-direction arrays."""
    from scipy.stats import mannwhitneyu

    from darkmatter.stats import random_unit_directions, summary

    mixing, stable = components["mixing"], components["stable"].astype(bool)
    d = mixing.shape[1]
    if decoder.shape[1] != d:
        raise UserError(f"SAE decoder has d_in {decoder.shape[1]} but the ICA directions have {d}; they come from different runs")
    live = np.flatnonzero(stats["latent_frequency"] > 0)
    ica_cos, ica_arg = max_abs_cos(mixing, decoder, cfg.decoder_chunk)
    live_cos, live_arg = max_abs_cos(mixing, decoder[live], cfg.decoder_chunk) if len(live) else (np.zeros(len(mixing)), None)
    rand_cos, _ = max_abs_cos(random_unit_directions(cfg.n_random, d, cfg.seed), decoder, cfg.decoder_chunk)
    sub_cos, _ = max_abs_cos(random_in_subspace(components["pca_basis"], cfg.n_random, cfg.seed + 1), decoder, cfg.decoder_chunk)

    def test(a, b):
        return float(mannwhitneyu(a, b, alternative="two-sided").pvalue) if len(a) and len(b) else None

    active = stats["latent_frequency"] > cfg.active_frequency
    ica_kurt = components["kurtosis"]
    report = {
        "thresholds": {"novel_below": cfg.novel_below, "match_above": cfg.match_above},
        "d_sae": int(decoder.shape[0]),
        "n_live_features": int(len(live)),
        "ica": bins(ica_cos, cfg.novel_below, cfg.match_above),
        "ica_stable": bins(ica_cos[stable], cfg.novel_below, cfg.match_above),
        "ica_vs_live_features": bins(live_cos, cfg.novel_below, cfg.match_above),
        "random": bins(rand_cos, cfg.novel_below, cfg.match_above),
        "random_in_pca_subspace": bins(sub_cos, cfg.novel_below, cfg.match_above),
        "mann_whitney_p": {"ica_vs_random": test(ica_cos, rand_cos), "ica_vs_random_in_pca_subspace": test(ica_cos, sub_cos)},
        "kurtosis_gap": {
            "active_frequency": cfg.active_frequency,
            "n_active_features": int(active.sum()),
            "all_components": kurtosis_gap(ica_kurt, stats["latent_kurtosis"][active]),
            "stable_components": kurtosis_gap(ica_kurt[stable], stats["latent_kurtosis"][active]),
            "r_random_directions": summary(stats["kurtosis_r_random_directions"]),
        },
    }
    arrays = {
        "ica_max_cos": ica_cos, "ica_nearest_feature": ica_arg,
        "ica_max_cos_live": live_cos,
        "random_max_cos": rand_cos, "random_subspace_max_cos": sub_cos,
        "sae_active_kurtosis": stats["latent_kurtosis"][active],
    }
    return report, arrays


def plot(arrays: dict, components: dict, stats: dict, cfg, out_dir: Path) -> None:
    from darkmatter.figures import save_figure, subplots

    fig, ax = subplots(figsize=(4.2, 3.0))
    edges = np.linspace(0, 1, 41)
    for key, label in (("ica_max_cos", "ICA mixing directions"), ("random_max_cos", "random directions"),
                       ("random_subspace_max_cos", "random in PCA subspace")):
        ax.hist(arrays[key], bins=edges, density=True, histtype="step", linewidth=1.4, label=label)
    for t in (cfg.novel_below, cfg.match_above):
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("max |cos| with any SAE decoder row")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "decoder_similarity")

    fig, ax = subplots(figsize=(4.2, 3.0))
    series = [(components["kurtosis"], "ICA sources"), (arrays["sae_active_kurtosis"], "active SAE features"),
              (stats["kurtosis_r_random_directions"], "r on random directions")]
    top = max(float(np.nanmax(v)) for v, _ in series if len(v))
    edges = np.logspace(-2, np.log10(max(top, 1.0)) + 0.01, 50)
    for values, label in series:
        v = values[np.isfinite(values)]
        ax.hist(np.clip(v, edges[0], None), bins=edges, density=True, histtype="step", linewidth=1.4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("excess kurtosis (clipped at left edge)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "kurtosis_gap")


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.sae.io import load_sae

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
    sae = load_sae(args.sae)
    report, arrays = compare(components, sae.W_dec, stats, run.compare)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "comparison.npz", **arrays)
    plot(arrays, components, stats, run.compare, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ica": report["ica"], "random_in_pca_subspace": report["random_in_pca_subspace"],
                      "kurtosis_gap": report["kurtosis_gap"]["all_components"]}, indent=2))


if __name__ == "__main__":
    main()
