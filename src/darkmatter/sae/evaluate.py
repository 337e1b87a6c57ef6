"""SAE evaluation stage on held-out tokens: the instrument checked before anything is read through it.

Works for any SAELens ``SAE`` (trained here or loaded from the hub) whose ``d_in`` and hook
match the activation cache; a mismatch fails with one line before any compute.

Reconstruction metrics stream over the held-out rows in chunks (float64 accumulators) and are
reported with AND without special tokens (BOS/EOS/PAD and position 0, where |x| ~ 1e5):

- ``fvu``: SAELens's definition, E‖x − x̂‖² / (E‖x‖² − ‖E x‖²), variance around the mean;
  ``explained_variance`` = 1 − fvu;
- L0: mean, quantiles and a histogram; dead and dense feature fractions
  (:mod:`darkmatter.sae.features`: one definition for every stage).

LM metrics (``lm``) splice the reconstruction into the model on ``sae_eval.lm_rows`` held-out
rows spread over the held-out set, continuing the forward from the cached activations and reading
out ``positions_per_row`` predictions per row: ΔLM and KL for the default splice (non-special
positions) and for every control of :mod:`darkmatter.sae.splice`, each with an interval that
resamples whole documents (rows cut from one document are one cluster), loss recovered against
zero ablation, and the paired comparisons of the diagnosis (``lm.diagnosis``). With ``--curve``
the training-curve snapshots get the headline numbers too; ``sae_eval.crosscheck_rows`` rows are
also evaluated by SAELens's own code (:mod:`darkmatter.sae.crosscheck`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.data.activations import ActivationCache
from darkmatter.data.split import row_tokens, split_rows
from darkmatter.errors import cli
from darkmatter.sae.io import check_compatible
from darkmatter.sae.reconstruction import reconstruction_stats

def heldout_tokens(cache: ActivationCache, heldout_fraction: float) -> np.ndarray:
    """Flat ids of every token in the held-out rows (special tokens included; masks come later)."""
    _, rows = split_rows(cache.meta["n_rows"], heldout_fraction)
    return row_tokens(rows, cache.meta["context_length"])


def lm_rows(heldout_rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` held-out rows spread evenly over the held-out set: neighbouring rows are often cut from
    one document, so evenly spaced rows reach more documents than the first ``n`` would."""
    n = min(n, len(heldout_rows))
    return heldout_rows[np.unique(np.linspace(0, len(heldout_rows) - 1, n).round().astype(int))]


def outlier_threshold(cache: ActivationCache, norm_factor: float) -> float:
    """‖x‖ above which a non-special token is a high-norm outlier: the residual stage's rule, on every cached token."""
    from darkmatter.analysis.residual import token_norms
    from darkmatter.analysis.tokens import classify

    return classify(np.asarray(cache.special), token_norms(cache.acts), norm_factor)[1]["threshold"]


def lm_report(effects: dict, clusters: np.ndarray, n_boot: int, seed: int, position_bins: int = 4) -> dict:
    """ΔLM and KL of every variant with cluster-bootstrap intervals (rows sharing a document are one
    cluster), loss recovered, and for the full variant set the paired comparisons behind the diagnosis."""
    from darkmatter.causal.effects import per_row
    from darkmatter.sae.splice import ERROR_SCALES, VARIANTS
    from darkmatter.stats import cluster_bootstrap_means, cluster_mean_with_ci, cluster_paired_difference, \
        cluster_ratio_with_ci, percentile_interval

    rng = np.random.default_rng(seed)
    scored = effects["scored"]
    names = [k for k in effects if isinstance(effects[k], dict)]
    clean = per_row(effects["clean_loss"], scored)
    delta = {n: per_row(effects[n]["loss"], scored) - clean for n in names}
    kl = {n: per_row(effects[n]["kl"], scored) for n in names}

    def ci(values):
        return cluster_mean_with_ci(values, clusters, n_boot, rng)

    def paired(a, b):
        return cluster_paired_difference(delta[a], delta[b], clusters, n_boot, rng)

    recovered = cluster_ratio_with_ci(delta["zero"] - delta["nonspecial"], delta["zero"], clusters, n_boot, rng)
    report = {
        "n_rows": int(len(clean)), "n_clusters": int(clusters.max()) + 1,
        "positions_per_row": int(len(effects["positions"])), "n_predictions": int(scored.sum()),
        "unit": "held-out rows spread over the held-out set; intervals resample whole documents (rows sharing one)",
        "loss_clean": float(clean.mean()),
        "loss_spliced": float((clean + delta["nonspecial"]).mean()),
        "loss_zero_ablated": float((clean + delta["zero"]).mean()),
        "delta_loss": float(delta["nonspecial"].mean()),
        "delta_loss_ci": ci(delta["nonspecial"])["ci"],
        "delta_loss_zero_ablation": float(delta["zero"].mean()),
        "kl": float(kl["nonspecial"].mean()),
        "kl_ci": ci(kl["nonspecial"])["ci"],
        "loss_recovered": recovered["value"],
        "loss_recovered_ci": recovered["ci"],
        "variants": {n: {"delta_loss": ci(delta[n]), "kl": ci(kl[n])} for n in names},
    }
    if not set(VARIANTS) <= set(names):
        return report
    scales = (*ERROR_SCALES, 1.0)
    curve = [f"error_{a:g}" for a in ERROR_SCALES] + ["nonspecial"]
    log_a = np.log(scales)

    def exponent(means):
        """b of KL ∝ α^b (least squares in log-log): KL is positive, and ≈ quadratic for small errors."""
        return float(np.polyfit(log_a, np.log(np.clip(means, 1e-12, None)), 1)[0])

    draws = cluster_bootstrap_means(np.stack([kl[n] for n in curve]), clusters, n_boot, rng)
    bins = np.array_split(np.arange(len(effects["positions"])), position_bins)
    per_bin = [per_row(effects["nonspecial"]["loss"][:, b] - effects["clean_loss"][:, b], scored[:, b]) for b in bins]
    report["diagnosis"] = {
        "where": {"ordinary_minus_nonspecial": paired("ordinary", "nonspecial"),
                  "all_minus_nonspecial": paired("all", "nonspecial")},
        "same_norm_noise": {"isotropic_minus_sae": paired("noise_isotropic", "nonspecial"),
                            "error_covariance_minus_sae": paired("noise_error_covariance", "nonspecial")},
        "error_scale": {"alphas": list(scales), "delta_loss": [ci(delta[n]) for n in curve],
                        "kl": [ci(kl[n]) for n in curve],
                        "kl_exponent": exponent(np.array([kl[n].mean() for n in curve])),
                        "kl_exponent_ci": percentile_interval(np.array([exponent(d) for d in draws]))},
        "error_parts": {"top_minus_other_pcs": paired("error_top_pcs", "error_other_pcs"),
                        "parts_sum_minus_whole": cluster_paired_difference(
                            delta["error_top_pcs"] + delta["error_other_pcs"], delta["nonspecial"], clusters, n_boot, rng),
                        "without_mean_minus_whole": paired("error_without_mean", "nonspecial")},
        "by_position": {"bins": [[int(effects["positions"][b[0]]), int(effects["positions"][b[-1]])] for b in bins],
                        "delta_loss": [ci(v) for v in per_bin]},
    }
    return report


def evaluate(sae, cache: ActivationCache, heldout_fraction: float, dense_threshold: float, budget_bytes: int) -> dict:
    """The reconstruction statistics on the held-out rows, in chunks whose latents fit ``budget_bytes``."""
    from darkmatter.analysis.stream import latent_chunk_tokens

    check_compatible(sae, cache)
    index = heldout_tokens(cache, heldout_fraction)
    special = np.asarray(cache.special)
    return reconstruction_stats(sae, cache.acts, special, index, dense_threshold,
                                latent_chunk_tokens(sae.cfg.d_sae, budget_bytes))


def error_geometry_on_train(sae, cache: ActivationCache, heldout_fraction: float, threshold: float,
                           n_tokens: int, seed: int, chunk_tokens: int):
    """r's mean and covariance on a seeded sample of the train rows' ordinary tokens (no fit sees held-out rows)."""
    from darkmatter.analysis.residual import token_norms
    from darkmatter.data.split import token_index
    from darkmatter.sae.splice import error_geometry

    train_rows, _ = split_rows(cache.meta["n_rows"], heldout_fraction)
    index = token_index(cache, train_rows)
    index = np.sort(np.random.default_rng(seed).choice(index, size=min(n_tokens, len(index)), replace=False))
    index = index[token_norms(cache.acts[index]) <= threshold]
    return error_geometry(sae, cache.acts, index, chunk_tokens)


def row_clusters(cache: ActivationCache, rows: np.ndarray) -> np.ndarray:
    """Cluster label per row: rows holding tokens of one document are one cluster."""
    from darkmatter.stats import linked_clusters

    docs = np.asarray(cache.array("doc_ids")).reshape(-1, cache.meta["context_length"])[rows]
    return linked_clusters([d[d >= 0] for d in docs])


def evaluate_lm(subject, saes: dict, cache: ActivationCache, run, full: str | None = None,
                lm_rows_override: int | None = None) -> dict[str, dict]:
    """The ``lm`` section of each SAE in ``saes``: ΔLM, KL and loss recovered, with intervals.

    The SAE named ``full`` gets every variant of the diagnosis, the others the default splice. All
    are spliced into the same held-out predictions in one pass: the clean forward and the zero
    ablation do not depend on the SAE, so they run once for all of them (the forward continues from
    the cached layer-L activations and reads out ``sae_eval.positions_per_row`` predictions per row,
    :mod:`darkmatter.causal.effects`).
    """
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.causal.effects import batches, prediction_effects, scored_positions
    from darkmatter.sae.splice import VARIANTS, splice_edits

    cfg = run.sae_eval
    _, held = split_rows(cache.meta["n_rows"], run.sae.heldout_fraction)
    rows = lm_rows(held, lm_rows_override or cfg.lm_rows)
    threshold = outlier_threshold(cache, run.residual.outlier_norm_factor)
    geometry = None
    if full is not None:
        chunk = latent_chunk_tokens(saes[full].cfg.d_sae, run.residual.latent_budget_mb * 2**20)
        geometry = error_geometry_on_train(saes[full], cache, run.sae.heldout_fraction, threshold, cfg.geometry_tokens,
                                           cfg.seed, chunk)
    budget = run.residual.latent_budget_mb << 20
    edits = {"zero": splice_edits(next(iter(saes.values())), None, threshold, cfg.seed, ("zero",))["zero"]}
    for name, sae in saes.items():
        variants = tuple(v for v in VARIANTS if v != "zero") if name == full else ("nonspecial",)
        edits |= {f"{name}/{v}": edit for v, edit in splice_edits(sae, geometry, threshold, cfg.seed, variants, budget).items()}
    positions = scored_positions(cache.meta["context_length"], cfg.positions_per_row)
    data = list(batches(cache, rows, cfg.lm_batch_rows, positions, subject.device))
    effects = prediction_effects(subject, run.layer, run.subject.site, data, edits, "LM loss with the SAEs spliced in")
    clusters = row_clusters(cache, rows)
    shared = {key: effects[key] for key in ("clean_loss", "scored", "zero")} | {"positions": positions}
    reports = {}
    for name in saes:
        own = {key.split("/", 1)[1]: value for key, value in effects.items() if key.startswith(f"{name}/")}
        reports[name] = lm_report(shared | own, clusters, cfg.n_bootstrap, cfg.seed) | {"outlier_threshold": threshold}
    if geometry is not None:
        reports[full]["error_geometry"] = geometry.report()
    return reports


def headline(report: dict) -> dict:
    """The numbers a point of a curve or an axis carries: reconstruction, sparsity and the default splice."""
    lm = report["lm"]
    return {key: report[key] for key in ("fvu", "fvu_with_special", "l0", "dead_fraction")} | {
        key: lm[key] for key in ("delta_loss", "delta_loss_ci", "kl", "kl_ci", "loss_recovered", "loss_recovered_ci")}


def evaluate_saes(subject, saes: dict, cache: ActivationCache, run, full: str | None = None,
                  lm_rows_override: int | None = None) -> dict[str, dict]:
    """Each SAE's reconstruction on every held-out token, and its LM loss spliced in (:func:`evaluate_lm`)."""
    lm = evaluate_lm(subject, saes, cache, run, full, lm_rows_override)
    return {name: {"hook_name": cache.meta["hook_name"], "d_sae": sae.cfg.d_sae}
            | evaluate(sae, cache, run.sae.heldout_fraction, run.sae_eval.dense_threshold,
                       run.residual.latent_budget_mb << 20) | {"lm": lm[name]}
            for name, sae in saes.items()}


def load_curve(curve_dir: Path | None, device: str) -> dict:
    """The training-curve snapshots in ``curve_dir`` (``<tokens>/``), by training tokens."""
    from darkmatter.sae.io import load_sae, to_device

    if curve_dir is None or not curve_dir.exists():
        return {}
    folders = sorted((p for p in curve_dir.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    return {int(p.name): to_device(load_sae(p), device) for p in folders}


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.models import load_run_subject
    from darkmatter.sae.io import load_sae, to_device

    parser = argparse.ArgumentParser(description="Evaluate an SAE on held-out tokens (reconstruction and LM loss).")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True, help="the run's model directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--lm-rows", type=int, default=None, help="override sae_eval.lm_rows")
    parser.add_argument("--curve", type=Path, default=None, help="the sae stage's training-curve snapshots")
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cache = ActivationCache.open(args.cache)
    sae = to_device(load_sae(args.sae), run.subject.device)
    subject = load_run_subject(run, args.weights)
    curve = load_curve(args.curve, run.subject.device)
    reports = evaluate_saes(subject, {"final": sae} | {f"after {t}": s for t, s in curve.items()}, cache, run, "final", args.lm_rows)
    report = {"sae": str(args.sae)} | reports["final"]
    if curve:
        train = run.sae
        report["training_curve"] = [{"tokens": t // train.batch_size * train.batch_size} | headline(reports[f"after {t}"])
                                    for t in curve] + [
            {"tokens": train.train_tokens // train.batch_size * train.batch_size} | headline(report)]
    cfg = run.sae_eval
    if cfg.crosscheck_rows:
        from darkmatter.sae.crosscheck import crosscheck

        _, held = split_rows(cache.meta["n_rows"], run.sae.heldout_fraction)
        rows = lm_rows(held, cfg.crosscheck_rows)
        report["saelens_crosscheck"] = crosscheck(subject, sae, cache, rows, run.layer, run.subject.site, cfg.lm_batch_rows)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("fvu", "l0", "dead_fraction")} | {k: report["lm"][k] for k in (
        "delta_loss", "delta_loss_ci", "kl", "loss_recovered", "loss_recovered_ci")}, indent=2))


if __name__ == "__main__":
    main()
