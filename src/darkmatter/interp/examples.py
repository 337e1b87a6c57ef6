"""Contexts per unit: what the dashboard shows and what autointerp explains and scores.

Units of one run, each with an activation on every non-special token:

- ``ica``: every ICA component; activation = its source s_j = u_j·(t − μ) (unmixing filter,
  unit variance, sign fixed so large positive = active);
- ``sae``: ``examples.n_sae_features`` SAE features *density-matched* to the ICA components;
  activation = the latent. Density is the fraction of tokens on which a unit counts as active:
  latent > 0 for an SAE feature, source z-score > ``examples.z_threshold`` for a component
  (estimated on a token subsample before the pass). Each component in turn (cycling if more
  features are asked for) takes the unused active feature (firing on more than
  ``compare.active_frequency``) nearest in log density. Matching density rather than kurtosis
  makes the detection task's base rate of "activating" contexts comparable across groups;
  kurtosis cannot be matched, since it is the very thing that differs (the kurtosis gap);
- ``random``: ``examples.n_random_directions`` random unit directions v in activation space;
  activation = v·x, z-scored over the tokens.

A dense unit (ICA, random) "activates" where its z-score exceeds ``examples.z_threshold``; an
SAE feature where it is non-zero. Per unit the JSON holds the top-k contexts, a stratified
sample across ``n_quantiles`` activation quantiles of the active tokens, and non-activating
contexts, each ±``window`` tokens with the unit's activation on every token of the window and
the ``split`` (``train``/``heldout`` rows of the SAE split) so autointerp can explain on one and
score on the other. Special tokens are never chosen as the activating token.

Unit activations are held as one [N, units] float32 matrix (134 MB at the default size).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli

HIST_BINS = 30
#: Non-special tokens used to estimate the ICA components' densities for the matching.
DENSITY_TOKENS = 16384


def density_matched_features(ica_density: np.ndarray, frequency: np.ndarray, active_frequency: float,
                             n: int) -> tuple[np.ndarray, np.ndarray]:
    """SAE features nearest in log density to the ICA components, and the component each matches."""
    pool = list(np.flatnonzero(frequency > active_frequency))
    chosen, matched = [], []
    for i in range(min(n, len(pool))):
        j = i % len(ica_density)
        target = np.log(max(ica_density[j], 1e-9))
        best = min(pool, key=lambda f: abs(np.log(frequency[f]) - target))
        pool.remove(best)
        chosen.append(int(best))
        matched.append(j)
    return np.array(chosen, dtype=np.int64), np.array(matched, dtype=np.int64)


def ica_density(sae, cache, components: dict, target: str, stats: dict, z_threshold: float,
                n_tokens: int, seed: int, chunk_tokens: int) -> np.ndarray:
    """Fraction of (subsampled) non-special tokens on which each ICA source exceeds ``z_threshold``."""
    from darkmatter.analysis.ica import ica_target, target_rows
    from darkmatter.analysis.stream import stream

    index = target_rows(cache, n_tokens, seed)
    above = np.zeros(len(components["mixing"]))
    for chunk in stream(sae, cache.acts, index, chunk_tokens, desc="ICA densities"):
        t = ica_target(chunk, target, stats).cpu().numpy()
        above += (((t - components["mean"]) @ components["unmixing"].T) > z_threshold).sum(0)
    return above / len(index)


def unit_activations(sae, cache, components: dict, target: str, stats: dict, features: np.ndarray,
                     directions: np.ndarray, chunk_tokens: int) -> np.ndarray:
    """[N, units] activations (ICA sources, SAE latents, random projections); special tokens NaN."""
    import torch

    from darkmatter.analysis.ica import ica_target
    from darkmatter.analysis.stream import stream

    n = cache.meta["n_tokens"]
    k = len(components["mixing"])
    out = np.full((n, k + len(features) + len(directions)), np.nan, dtype=np.float32)
    special = np.asarray(cache.special, dtype=bool)
    unmixing = torch.as_tensor(components["unmixing"])
    mean = torch.as_tensor(components["mean"])
    feats = torch.as_tensor(features, dtype=torch.int64)
    dirs = torch.as_tensor(directions.T.copy(), dtype=torch.float32)
    for chunk in stream(sae, cache.acts, np.flatnonzero(~special), chunk_tokens, desc="unit activations"):
        t = ica_target(chunk, target, stats).cpu()
        sources = (t - mean) @ unmixing.T
        out[chunk.ids] = torch.cat([sources.float(), chunk.latents.cpu()[:, feats], chunk.x.cpu() @ dirs], dim=1).numpy()
    return out


def zscore(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return (values - finite.mean()) / finite.std()


def context(cache, token: int, window: int, unit_acts: np.ndarray, decode) -> dict:
    """±``window`` tokens around ``token``, clipped to its row, with per-token activations."""
    context_length = cache.meta["context_length"]
    row, pos = divmod(int(token), context_length)
    lo, hi = row * context_length + max(0, pos - window), row * context_length + min(context_length, pos + window + 1)
    ids = [int(i) for i in cache.tokens[lo:hi]]
    acts = unit_acts[lo:hi]
    return {
        "token_index": int(token), "row": row, "position": pos, "focus": int(token - lo),
        "activation": float(unit_acts[token]),
        "token_ids": ids, "tokens": [decode(i) for i in ids],
        "activations": [None if not np.isfinite(a) else round(float(a), 4) for a in acts],
    }


def unit_examples(acts: np.ndarray, threshold: float, cfg, rng: np.random.Generator) -> dict:
    """Token ids of the top-k, the quantile sample and the non-activating sample for one unit."""
    valid = np.flatnonzero(np.isfinite(acts))
    values = acts[valid]
    order = np.argsort(-values, kind="stable")
    top = valid[order[: cfg.top_k]]
    active = valid[values > threshold]
    active = active[np.argsort(acts[active], kind="stable")]
    quantiles = []
    for q, part in enumerate(np.array_split(active, cfg.n_quantiles)):
        if len(part):
            pick = rng.choice(part, min(cfg.per_quantile, len(part)), replace=False)
            quantiles.extend((q, int(t)) for t in np.sort(pick))
    inactive = valid[values <= threshold]
    negatives = np.sort(rng.choice(inactive, min(cfg.n_non_activating, len(inactive)), replace=False)) if len(inactive) else []
    return {"top": [int(t) for t in top], "quantiles": quantiles, "non_activating": [int(t) for t in negatives],
            "active_fraction": float(len(active) / max(len(valid), 1))}


def build(cache, acts: np.ndarray, units: list[dict], cfg, heldout: np.ndarray, decode) -> list[dict]:
    """Examples and summaries for every unit; ``units[i]`` describes column i of ``acts``."""
    from scipy.stats import kurtosis
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    context_length = cache.meta["context_length"]
    out = []
    for col, unit in enumerate(tqdm(units, desc="examples", unit="unit")):
        a = acts[:, col]
        threshold = 0.0 if unit["kind"] == "sae" else cfg.z_threshold
        chosen = unit_examples(a, threshold, cfg, rng)
        finite = a[np.isfinite(a)]
        counts, edges = np.histogram(finite, bins=HIST_BINS)

        def ctx(token, **extra):
            c = context(cache, token, cfg.window, a, decode)
            c["split"] = "heldout" if heldout[token // context_length] else "train"
            return c | extra

        out.append(unit | {
            "threshold": threshold,
            "active_fraction": chosen["active_fraction"],
            "kurtosis": float(kurtosis(finite)),
            "max_activation": float(finite.max()),
            "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
            "top": [ctx(t) for t in chosen["top"]],
            "quantiles": [ctx(t, quantile=q) for q, t in chosen["quantiles"]],
            "non_activating": [ctx(t) for t in chosen["non_activating"]],
        })
    return out


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_tokenizer, resolve_device
    from darkmatter.data.split import split_rows
    from darkmatter.sae.io import check_compatible, load_sae
    from darkmatter.stats import random_unit_directions

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
    sae = sae.to(resolve_device(run.subject.device))
    tokenizer = load_tokenizer(run.model.name, args.weights)

    chunk = latent_chunk_tokens(sae.cfg.d_sae, run.residual.latent_budget_mb << 20)
    density = ica_density(sae, cache, components, run.ica.target, stats, cfg.z_threshold, DENSITY_TOKENS, cfg.seed, chunk)
    features, matched = density_matched_features(density, stats["latent_frequency"], run.compare.active_frequency,
                                                 cfg.n_sae_features)
    directions = random_unit_directions(cfg.n_random_directions, cache.meta["d_model"], cfg.seed + 1)
    acts = unit_activations(sae, cache, components, run.ica.target, stats, features, directions, chunk)
    k = len(components["mixing"])
    for col in range(k + len(features), acts.shape[1]):
        acts[:, col] = zscore(acts[:, col])
    units = [{"kind": "ica", "id": j, "stable": bool(components["stable"][j]),
              "variance_share": float(components["variance_share"][j]),
              "source_kurtosis_fit": float(components["kurtosis"][j]),
              "max_cos_sae": float(comparison["ica_max_cos"][j]),
              "nearest_sae_feature": int(comparison["ica_nearest_feature"][j])} for j in range(k)]
    units += [{"kind": "sae", "id": int(f), "frequency": float(stats["latent_frequency"][f]),
               "matched_to_ica": int(j), "ica_density": float(density[j])} for f, j in zip(features, matched)]
    units += [{"kind": "random", "id": i} for i in range(len(directions))]
    _, heldout_rows = split_rows(cache.meta["n_rows"], run.sae.heldout_fraction)
    heldout = np.zeros(cache.meta["n_rows"], dtype=bool)
    heldout[heldout_rows] = True
    result = build(cache, acts, units, cfg, heldout, lambda i: tokenizer.decode([i]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"hook_name": cache.meta["hook_name"], "model": cache.meta["model"], "ica_target": run.ica.target,
            "z_threshold": cfg.z_threshold, "window": cfg.window}
    args.out.write_text(json.dumps({"meta": meta, "units": result}) + "\n")
    print(f"wrote {len(result)} units ({k} ICA, {len(features)} SAE, {len(directions)} random) to {args.out}")


if __name__ == "__main__":
    main()
