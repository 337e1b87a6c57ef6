"""Contexts per unit: what the dashboard shows and what autointerp explains and scores.

Units of one run, each with an activation on every analysed token (NaN elsewhere), all read on
the same tokens:

- ``ica``: every ICA component; activation = its source s_j = u_j·(t − μ) (unmixing filter,
  unit variance, sign fixed so large positive = active);
- ``sae``: one SAE feature per ICA component, *density-matched* to it; activation = the latent.
  Density is the fraction of the train rows' analysed tokens on which a unit counts as active
  (latent > 0 for an SAE feature, source > ``examples.z_threshold`` for a component, estimated on
  a token sample of the train rows). Each component in turn takes the unused active feature
  (``compare.active_frequency``) nearest in log density, so every compared component has its own
  partner and autointerp can test the pairs with a paired test. Matching density makes the
  detection task's base rate comparable; kurtosis cannot be matched, it is what differs;
- ``random``: s = q·z for a random unit vector q in the ICA's whitened space (the same target,
  mean and whitening as the components; what ICA would report had it not optimised anything),
  sign-fixed like the components (positive skew on the train rows);
- ``calibration``: token classes of known meaning, 1 on the class and 0 elsewhere
  (:mod:`darkmatter.interp.calibration`); their top contexts are a seeded sample of the tied
  train tokens, not the first ones in corpus order.

**Held out.** The matching is a fit and uses the train rows. Per unit the JSON holds:

- ``top``: the ``top_k`` highest-activating contexts of the **train** rows (what the explainer sees);
- ``quantiles``: detection positives from the **held-out** rows, spread over ``n_quantiles``
  quantiles of the held-out rows' own active activations (a sparse unit's positives are not
  pushed to its low quantiles by the exclusions), ``per_quantile`` each;
- ``non_activating``: detection negatives, held-out tokens at or below the threshold.

No detection context shares a row or a document with a shown one: held-out tokens whose document
also appears in a train row are never drawn, and :func:`check_disjoint` checks every window.
Contexts are ±``window`` tokens with the unit's activation on each token and their ``split``.

Unit activations are held as one [N, units] float32 matrix (~170 MB at the default size).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli

HIST_BINS = 30
#: Train-row analysed tokens used to estimate the ICA components' densities for the matching.
DENSITY_TOKENS = 16384


def density_matched_features(ica_density: np.ndarray, frequency: np.ndarray, active_frequency: float) -> np.ndarray:
    """For each ICA component in order, the unused active SAE feature nearest in log density."""
    pool = np.flatnonzero(frequency > active_frequency)
    if len(pool) < len(ica_density):
        raise UserError(f"only {len(pool)} SAE features fire on more than {active_frequency:g} of tokens, fewer than the "
                        f"{len(ica_density)} ICA components to match; lower compare.active_frequency")
    free = np.ones(len(pool), dtype=bool)
    log_freq = np.log(frequency[pool])
    chosen = np.empty(len(ica_density), dtype=np.int64)
    for j, density in enumerate(ica_density):
        gap = np.where(free, np.abs(log_freq - np.log(max(density, 1e-9))), np.inf)
        best = int(np.argmin(gap))
        free[best] = False
        chosen[j] = pool[best]
    return chosen


def ica_density(sae, cache, components: dict, target: str, stats: dict, z_threshold: float,
                index: np.ndarray, chunk_tokens: int) -> np.ndarray:
    """Fraction of the tokens ``index`` on which each ICA source exceeds ``z_threshold``."""
    from darkmatter.analysis.ica import ica_target
    from darkmatter.analysis.stream import stream

    above = np.zeros(len(components["mixing"]))
    for chunk in stream(sae, cache.acts, index, chunk_tokens, desc="ICA densities"):
        t = ica_target(chunk, target, stats).cpu().numpy()
        above += (((t - components["mean"]) @ components["unmixing"].T) > z_threshold).sum(0)
    return above / len(index)


def random_filters(components: dict, n: int, seed: int) -> np.ndarray:
    """Unmixing filters q Λ^{-1/2} Vᵀ of ``n`` random unit q in the whitened space: s = q·z."""
    from darkmatter.stats import random_unit_directions

    q = random_unit_directions(n, components["pca_basis"].shape[1], seed)
    return (q / components["pca_scale"][None, :]) @ components["pca_basis"].T


def unit_activations(sae, cache, components: dict, target: str, stats: dict, features: np.ndarray,
                     random: np.ndarray, index: np.ndarray, chunk_tokens: int) -> np.ndarray:
    """[N, units] activations (ICA sources, SAE latents, random whitened units) on the tokens
    ``index``; NaN elsewhere."""
    import torch

    from darkmatter.analysis.ica import ica_target
    from darkmatter.analysis.stream import stream

    n = cache.meta["n_tokens"]
    filters = torch.as_tensor(np.concatenate([components["unmixing"], random]))
    out = np.full((n, len(filters) + len(features)), np.nan, dtype=np.float32)
    k = len(components["unmixing"])
    mean = torch.as_tensor(components["mean"])
    feats = torch.as_tensor(features, dtype=torch.int64, device=sae.W_dec.device)
    for chunk in stream(sae, cache.acts, index, chunk_tokens, desc="unit activations"):
        read = ((ica_target(chunk, target, stats).cpu() - mean) @ filters.T).float()
        picked = chunk.latents[:, feats].cpu()  # the units' latents only leave the device, not the whole width
        out[chunk.ids] = torch.cat([read[:, :k], picked, read[:, k:]], dim=1).numpy()
    return out


def sign_by_skew(acts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """+1/−1 per column so that each column's values on ``rows`` have positive skew."""
    from scipy.stats import skew

    return np.where(skew(acts[rows], axis=0) < 0, -1.0, 1.0)


def context(cache, token: int, window: int, unit_acts: np.ndarray, decode) -> dict:
    """±``window`` tokens around ``token``, clipped to its row, with per-token activations."""
    context_length = cache.meta["context_length"]
    row, pos = divmod(int(token), context_length)
    lo, hi = row * context_length + max(0, pos - window), row * context_length + min(context_length, pos + window + 1)
    ids = [int(i) for i in cache.tokens[lo:hi]]
    acts = unit_acts[lo:hi]
    return {
        "token_index": int(token), "row": row, "position": pos, "focus": int(token - lo), "start": int(lo), "stop": int(hi),
        "activation": float(unit_acts[token]),
        "token_ids": ids, "tokens": [decode(i) for i in ids],
        "activations": [None if not np.isfinite(a) else round(float(a), 4) for a in acts],
    }


def check_disjoint(shown: list[dict], detection: list[dict]) -> None:
    """No detection window may overlap a shown window (a leak from explanation to scoring)."""
    for d in detection:
        for s in shown:
            if d["start"] < s["stop"] and s["start"] < d["stop"]:
                raise AssertionError(f"detection context at token {d['token_index']} overlaps shown context at "
                                     f"token {s['token_index']}")


def unit_examples(acts: np.ndarray, threshold: float, cfg, rng: np.random.Generator,
                  explain: np.ndarray, detect: np.ndarray, shuffle_ties: bool = False) -> dict:
    """Token ids for one unit: the top-k of the ``explain`` tokens (ties in random order with
    ``shuffle_ties``), and from the ``detect`` tokens a sample across the quantiles of their own
    active activations and a non-activating sample."""
    top_pool = explain[np.isfinite(acts[explain])]
    if shuffle_ties:
        top_pool = rng.permutation(top_pool)
    top = top_pool[np.argsort(-acts[top_pool], kind="stable")[: cfg.top_k]]
    pool = detect[np.isfinite(acts[detect])]
    active = pool[acts[pool] > threshold]
    active = active[np.argsort(acts[active], kind="stable")]
    quantiles = []
    for q, part in enumerate(np.array_split(active, cfg.n_quantiles)):
        if len(part):
            pick = rng.choice(part, min(cfg.per_quantile, len(part)), replace=False)
            quantiles.extend((q, int(t)) for t in np.sort(pick))
    inactive = pool[acts[pool] <= threshold]
    negatives = np.sort(rng.choice(inactive, min(cfg.n_non_activating, len(inactive)), replace=False)) if len(inactive) else []
    return {"top": [int(t) for t in top], "quantiles": quantiles, "non_activating": [int(t) for t in negatives],
            "active_fraction": float(len(active) / max(len(pool), 1)), "n_active_detect": int(len(active))}


def build(cache, acts: np.ndarray, units: list[dict], cfg, explain: np.ndarray, detect: np.ndarray,
          heldout_rows: np.ndarray, decode) -> list[dict]:
    """Examples and summaries for every unit; ``units[i]`` describes column i of ``acts``."""
    from scipy.stats import kurtosis
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    context_length = cache.meta["context_length"]
    out = []
    for col, unit in enumerate(tqdm(units, desc="examples", unit="unit")):
        a = acts[:, col]
        threshold = {"sae": 0.0, "calibration": 0.5}.get(unit["kind"], cfg.z_threshold)
        chosen = unit_examples(a, threshold, cfg, rng, explain, detect, shuffle_ties=unit["kind"] == "calibration")
        held = a[detect]
        held = held[np.isfinite(held)]
        counts, edges = np.histogram(held, bins=HIST_BINS)

        def ctx(token, **extra):
            c = context(cache, token, cfg.window, a, decode)
            c["split"] = "heldout" if heldout_rows[token // context_length] else "train"
            return c | extra

        top = [ctx(t) for t in chosen["top"]]
        quantiles = [ctx(t, quantile=q) for q, t in chosen["quantiles"]]
        negatives = [ctx(t) for t in chosen["non_activating"]]
        check_disjoint(top, quantiles + negatives)
        out.append(unit | {
            "threshold": threshold,
            "active_fraction": chosen["active_fraction"],
            "n_active_heldout": chosen["n_active_detect"],
            "kurtosis": float(kurtosis(held)),
            "max_activation": float(np.nanmax(a)),
            "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
            "top": top, "quantiles": quantiles, "non_activating": negatives,
        })
    return out


def calibration_columns(cache, train: np.ndarray, detect: np.ndarray, analysed: np.ndarray,
                        decode) -> tuple[np.ndarray, list[dict], list[str]]:
    """The calibration units' activation columns and unit records; a class with no token in the
    train rows or in the detection pool is dropped and named."""
    from darkmatter.interp import calibration

    acts = calibration.activations(np.asarray(cache.tokens), np.asarray(cache.array("positions")), analysed, decode)
    keep = [(acts[train, j] == 1).any() and (acts[detect, j] == 1).any() for j in range(acts.shape[1])]
    units = [{"kind": "calibration", "id": u.name, "explanation": u.explanation}
             for u, k in zip(calibration.UNITS, keep) if k]
    return acts[:, keep], units, [u.name for u, k in zip(calibration.UNITS, keep) if not k]


def detection_pool(cache, heldout_tokens: np.ndarray, train_tokens: np.ndarray) -> np.ndarray:
    """Held-out tokens whose document does not also appear in a train row (rows cut documents)."""
    doc_ids = np.asarray(cache.array("doc_ids"))
    seen = np.unique(doc_ids[train_tokens])
    return heldout_tokens[~np.isin(doc_ids[heldout_tokens], seen)]


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.analysis.tokens import analysed_tokens, heldout_token_mask
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_tokenizer
    from darkmatter.sae.io import check_compatible, load_sae, to_device

    parser = argparse.ArgumentParser(description="Top, quantile and negative contexts for ICA components and baseline units.")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True, help="the run's model directory (for the tokenizer)")
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--components", type=Path, required=True)
    parser.add_argument("--comparison", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="examples JSON")
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cfg = run.examples
    for path in (args.stats, args.components, args.comparison):
        if not path.exists():
            raise UserError(f"{path} not found; run the residual, ica and compare stages first")
    stats, components, comparison = (dict(np.load(p)) for p in (args.stats, args.components, args.comparison))
    cache = ActivationCache.open(args.cache)
    sae = load_sae(args.sae)
    check_compatible(sae, cache)
    sae = to_device(sae, run.subject.device)
    tokenizer = load_tokenizer(run.model.name, args.weights)
    decode = lambda i: tokenizer.decode([i])  # noqa: E731

    heldout = heldout_token_mask(cache.meta["n_rows"], cache.meta["context_length"], run.sae.heldout_fraction)
    train, held = analysed_tokens(stats, heldout, "train"), analysed_tokens(stats, heldout, "heldout")
    detect = detection_pool(cache, held, train)
    chunk = latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20)
    sample = np.sort(np.random.default_rng(cfg.seed).choice(train, min(DENSITY_TOKENS, len(train)), replace=False))
    density = ica_density(sae, cache, components, run.ica.target, stats, cfg.z_threshold, sample, chunk)
    frequency_train = stats["latent_fires_train"] / max(int(stats["n_train_analysed"]), 1)
    features = density_matched_features(density, frequency_train, run.compare.active_frequency)
    random = random_filters(components, cfg.n_random_units, cfg.seed + 1)
    analysed = np.sort(np.concatenate([train, held]))
    acts = unit_activations(sae, cache, components, run.ica.target, stats, features, random, analysed, chunk)
    k = len(components["mixing"])
    random_cols = slice(2 * k, acts.shape[1])
    acts[:, random_cols] *= sign_by_skew(acts[:, random_cols], train)[None, :].astype(np.float32)
    measured = bool(components["stability_measured"])
    units = [{"kind": "ica", "id": j, "stable": bool(components["stable"][j]) if measured else None,
              "variance_share": float(components["variance_share"][j]),
              "source_kurtosis_heldout": float(components["kurtosis"][j]),
              "max_cos_sae": float(comparison["ica_max_cos"][j]),
              "nearest_sae_feature": int(comparison["ica_nearest_feature"][j]),
              "density_train": float(density[j]), "matched_sae_feature": int(features[j])} for j in range(k)]
    units += [{"kind": "sae", "id": int(f), "frequency_train": float(frequency_train[f]),
               "matched_to_ica": j, "ica_density_train": float(density[j])} for j, f in enumerate(features)]
    units += [{"kind": "random", "id": i} for i in range(len(random))]
    calibration_acts, calibration_units, dropped = calibration_columns(cache, train, detect, analysed, decode)
    acts = np.concatenate([acts, calibration_acts], axis=1)
    units += calibration_units
    result = build(cache, acts, units, cfg, train, detect, heldout.reshape(-1, cache.meta["context_length"])[:, 0],
                   decode)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"hook_name": cache.meta["hook_name"], "model": cache.meta["model"], "ica_target": run.ica.target,
            "z_threshold": cfg.z_threshold, "window": cfg.window, "outliers_excluded": bool(stats["outliers_excluded"]),
            "explain_rows": "train", "detect_rows": "heldout", "n_detect_tokens": int(len(detect)),
            "n_heldout_tokens_dropped_shared_document": int(len(held) - len(detect)),
            "calibration_units_absent_from_corpus": dropped}
    args.out.write_text(json.dumps({"meta": meta, "units": result}) + "\n")
    print(f"wrote {len(result)} units ({k} ICA, {len(features)} SAE, {len(random)} random, "
          f"{len(calibration_units)} calibration) to {args.out}")


if __name__ == "__main__":
    main()
