"""Is the dark matter elliptical? The identifiability check behind ICA's nulls (the ``ellipticity`` stage).

If whitened r is a Gaussian scale mixture, z = √q · u with u uniform on the sphere and the squared
(Mahalanobis) norm q independent of u, its non-Gaussianity is *radial*: a per-token error magnitude.
Then every projection has the same excess kurtosis, 3·k/(k+2)·E[q²]/E[q]² − 3, no direction is
heavier-tailed than another, and ICA's rotation is not identifiable: ICA would find nothing, whatever
the dark matter holds in its norms.

**Random directions cannot tell.** Averaged over uniformly random unit directions w, E_w (w·z)⁴ =
3 E[q²]/(k(k+2)) for *any* distribution, so the mean random-projection kurtosis equals the elliptical
prediction from the norms as an identity (``random_mean`` beside ``predicted`` shows it). Only directions
chosen elsewhere can: ICA's, fitted on the train rows and read here on the held-out ones.

**The test.** T = the median held-out excess kurtosis of the ICA sources. Its null is T on a spherical
surrogate with the same norms (each token keeps its Mahalanobis norm and gets a uniformly random
direction): exactly what an elliptical r with this radial law gives, finite-sample bias included. The
difference T − mean(null) gets a cluster bootstrap (whole held-out documents resampled: tokens of a
document are not independent, and the surrogates, token by token, know nothing of that) from
``scipy.stats.bootstrap``: a BCa interval, and a two-sided p-value from the resampled differences, twice
the share on the far side of 0 (Phipson–Smyth counted). The unit is the document, not the row: rows are
cut from one packed token stream, so rows linked by a shared document chain into one or two clusters. A second reading removes the radial part: every token
scaled to norm √k (uniform on the sphere under ellipticity, where every projection has excess kurtosis
−6/(k+2)), so the tails left are directional by construction.

The bootstrap resamples documents through per-document moment sums (Σs, Σs², Σs³, Σs⁴ per source), so a
resample costs O(documents × k) whatever the token count; scipy's ``bootstrap`` draws and corrects the
resamples, and this module only supplies that statistic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli
from darkmatter.stats import MIN_N_FOR_CI, monte_carlo_p


def mahalanobis_sq(z: np.ndarray) -> np.ndarray:
    """q_i = (z_i − z̄)ᵀ S⁻¹ (z_i − z̄) with S the covariance of ``z`` (mean q = k)."""
    c = z - z.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(c, rowvar=False, bias=True))
    return np.sum(np.linalg.solve(chol, c.T) ** 2, axis=0)


def elliptical_kurtosis(q: np.ndarray, k: int) -> float:
    """Excess kurtosis of every projection of an elliptical law whose squared Mahalanobis norms are ``q``."""
    return float(3 * k / (k + 2) * np.mean(q**2) / np.mean(q) ** 2 - 3)


def moment_sums(s: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """[clusters, 5, k]: token count and Σs, Σs², Σs³, Σs⁴ of each source per cluster."""
    out = np.empty((n_clusters, 5, s.shape[1]))
    out[:, 0] = np.bincount(clusters, minlength=n_clusters)[:, None]
    for power in range(1, 5):
        out[:, power] = np.stack([np.bincount(clusters, weights=col**power, minlength=n_clusters) for col in s.T], axis=1)
    return out


def kurtosis_from_sums(sums: np.ndarray) -> np.ndarray:
    """Excess kurtosis (biased, as ``scipy.stats.kurtosis``) of each source from its summed moments [5, k]."""
    n = sums[0]
    m1, m2, m3, m4 = (sums[p] / n for p in range(1, 5))
    var = m2 - m1**2
    central4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return central4 / var**2 - 3


def median_kurtosis(s: np.ndarray) -> float:
    from scipy.stats import kurtosis

    return float(np.median(kurtosis(s, axis=0)))


def spherical_null(q: np.ndarray, white: np.ndarray, n_surrogates: int, rng: np.random.Generator) -> np.ndarray:
    """T on ``n_surrogates`` elliptical surrogates: norms √q kept, directions uniform."""
    k = white.shape[1]
    out = np.empty(n_surrogates)
    for i in range(n_surrogates):
        g = rng.standard_normal((len(q), k))
        out[i] = median_kurtosis((g * np.sqrt(q / np.sum(g**2, axis=1))[:, None]) @ white.T)
    return out


def directional_excess(s: np.ndarray, null: np.ndarray, clusters: np.ndarray, n_boot: int,
                       rng: np.random.Generator) -> dict:
    """T − mean(null) with a BCa cluster-bootstrap interval and a two-sided bootstrap p-value (neither with
    fewer than ``MIN_N_FOR_CI`` clusters: a bootstrap of 2-4 documents is noise)."""
    from scipy.stats import bootstrap

    n_clusters = int(clusters.max()) + 1
    sums = moment_sums(s, clusters, n_clusters)
    offset = float(null.mean())
    observed = median_kurtosis(s)
    out = {"observed": observed, "null_mean": offset, "null_sd": float(null.std(ddof=1)), "difference": observed - offset,
           "ci": None, "p_two_sided": None, "n_tokens": int(len(s)), "n_clusters": n_clusters, "n_surrogates": int(len(null))}
    if n_clusters < MIN_N_FOR_CI:
        return out

    def statistic(chosen):
        return float(np.median(kurtosis_from_sums(sums[chosen].sum(axis=0)))) - offset

    result = bootstrap((np.arange(n_clusters),), statistic, n_resamples=n_boot, method="BCa", vectorized=False, rng=rng)
    ci, draws = result.confidence_interval, result.bootstrap_distribution
    p = min(1.0, 2 * min(monte_carlo_p(draws, 0.0), monte_carlo_p(-draws, 0.0)))
    return out | {"ci": [float(ci.low), float(ci.high)], "p_two_sided": p}


def ellipticity(z: np.ndarray, white: np.ndarray, clusters: np.ndarray, n_random: int, n_surrogates: int,
                n_boot: int, seed: int) -> dict:
    """Both readings (norms kept; radial part removed) for the held-out whitened target ``z`` [n, k],
    the ICA unmixing ``white`` [k, k] (s = z Wᵀ) and each token's cluster (its document: 0..n−1)."""
    from scipy.stats import kurtosis

    from darkmatter.stats import random_unit_directions

    k = z.shape[1]
    if len(z) <= 10 * k:
        raise UserError(f"the ellipticity test has {len(z)} held-out tokens for k = {k}; it needs more than {10 * k}: "
                        "cache more tokens or raise sae.heldout_fraction")
    rng = np.random.default_rng(seed)
    q = mahalanobis_sq(z)
    centred = z - z.mean(axis=0)
    unit = centred * np.sqrt(k / q)[:, None]
    random = random_unit_directions(n_random, k, seed)
    return {
        "k": k,
        "predicted": elliptical_kurtosis(q, k),
        "random_mean": float(np.mean(kurtosis(centred @ random.T, axis=0))),
        "norms_kept": directional_excess(centred @ white.T, spherical_null(q, white, n_surrogates, rng), clusters,
                                         n_boot, rng),
        "radial_removed": directional_excess(unit @ white.T, spherical_null(np.full(len(q), float(k)), white,
                                                                            n_surrogates, rng), clusters, n_boot, rng),
        "sphere_kurtosis": -6 / (k + 2),
    }


def verdict(result: dict) -> str:
    """``"elliptical"`` (no direction heavier-tailed than the norms explain, both readings),
    ``"directional"`` (ICA's directions carry tails beyond the radial part in both), ``"mixed"``, or
    ``"unmeasured"`` (too few held-out documents for intervals)."""
    if any(r["ci"] is None for r in (result["norms_kept"], result["radial_removed"])):
        return "unmeasured"
    above = [r["ci"][0] > 0 for r in (result["norms_kept"], result["radial_removed"])]
    inside = [r["ci"][0] <= 0 <= r["ci"][1] for r in (result["norms_kept"], result["radial_removed"])]
    return "directional" if all(above) else "elliptical" if all(inside) else "mixed"


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.analysis.ica import Whitener, whitened_target
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.analysis.tokens import analysed_tokens, heldout_token_mask
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.activations import ActivationCache
    from darkmatter.sae.io import check_compatible, load_sae, to_device

    parser = argparse.ArgumentParser(description="Is the dark matter elliptical? ICA's directions against spherical surrogates.")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True, help="the residual stage's stats.npz")
    parser.add_argument("--components", type=Path, required=True, help="the ICA stage's components.npz")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    run = run_from_args(args)
    for path, stage in ((args.stats, "residual"), (args.components, "ica")):
        if not path.exists():
            raise UserError(f"{path} not found; run `dvc repro {stage}@{run.name}` first")
    stats, comps = dict(np.load(args.stats)), dict(np.load(args.components))
    cfg = run.ellipticity
    cache = ActivationCache.open(args.cache)
    sae = load_sae(args.sae)
    check_compatible(sae, cache)
    sae = to_device(sae, run.subject.device)
    context = cache.meta["context_length"]
    heldout = heldout_token_mask(cache.meta["n_rows"], context, run.sae.heldout_fraction)
    tokens = analysed_tokens(stats, heldout, "heldout")
    whitener = Whitener(comps["mean"], comps["pca_basis"], comps["pca_scale"])
    z = whitened_target(sae, cache, tokens, whitener, run.ica.target, stats,
                        latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20), desc="held-out rows")
    documents, clusters = np.unique(np.asarray(cache.array("doc_ids"))[tokens], return_inverse=True)
    result = ellipticity(z, comps["white"], clusters, run.residual.n_random_directions, cfg.n_surrogates,
                         cfg.n_bootstrap, cfg.seed)
    metrics = {**result, "verdict": verdict(result), "target": run.ica.target, "n_rows": int(len(np.unique(tokens // context))),
               "unit": "held-out analysed tokens; intervals resample whole documents (BCa, scipy.stats.bootstrap)"}
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({key: metrics[key] for key in ("verdict", "predicted", "random_mean")}
                     | {key: {k: metrics[key][k] for k in ("difference", "ci", "p_two_sided")}
                        for key in ("norms_kept", "radial_removed")}, indent=2))


if __name__ == "__main__":
    main()
