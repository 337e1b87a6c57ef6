"""Probes stage: are layer-L SAE features predictable from layer 0, beyond token identity?

``python -m darkmatter.probes.stage --run NAME`` reproduces seed 002 ("Are SAE features just
dataset geometry?") with the controls it lacked, for the run's layer and ``probes.extra_layers``:

1. **Paired data** (:mod:`darkmatter.probes.paired`): one forward over a seeded sample of cache
   rows captures ``blocks.0.hook_resid_pre`` and every probed layer; special tokens out.
2. **Experiment 1, probes** (:mod:`darkmatter.probes.controls`): for a seeded sample of the
   layer SAE's features with enough positives (the run's SAE at its layer; at an extra layer the
   baseline SAE of experiment 2), an L2 logistic probe on layer 0 next to shuffled labels, a
   token-id lookup, a previous+current-token lookup, position only, and the probe on held-out
   token types. Accuracy distribution, train/validation loss and the seed's threshold counts
   (≥95/90/85/80/75%), each with a bootstrap CI; paired tests probe − lookup over features.
3. **Experiment 2** (:mod:`darkmatter.probes.affine`): the affine map layer 0 -> L (ridge; its
   held-out R² and the token-mean reference), the residual actual − predicted, and two SAEs
   trained here with the project's trainer at the same width and length, one on the layer's
   activations (baseline) and one on the residual, at the same L0 target; the residual SAE's
   features are density-matched one by one to the baseline's sample (nearest firing rate), probed
   with the same protocol, and compared pair by pair (bootstrap CI, sign-flip permutation test).

Skipped features are counted by reason; a probe that did not converge is named in the metrics.
The forward and each trained SAE are kept in ``data/scratch/probes/<fingerprint>/`` until the
stage finishes, so a killed run resumes without redoing them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli

THRESHOLDS = (0.95, 0.90, 0.85, 0.80, 0.75)
#: The seed's reported numbers (Gemma 2 2B, layer 20, Gemma Scope 16k, 10,240 WikiText tokens).
SEED_CLAIMS = {"probe_mean_accuracy": 0.8554, "probed": 83, "sampled": 100,
               "at_least": {"0.95": 28, "0.9": 35, "0.85": 47, "0.8": 53, "0.75": 58},
               "map_r2": 0.5025, "baseline_sae_mean_accuracy": 0.7555, "residual_sae_mean_accuracy": 0.7423}


def check_requested(features: tuple[int, ...], width: int) -> None:
    """Requested feature indices exist in the run's SAE: one line before any compute."""
    bad = [j for j in features if j >= width]
    if bad:
        raise UserError(f"probes.features {bad} out of range: the run's SAE has {width} features (0..{width - 1}); "
                        "fix probes.features or leave it empty to sample features")


def choose_features(counts: dict, n_features: int, requested: tuple[int, ...], min_positives: int,
                    min_val_positives: int, rng: np.random.Generator) -> np.ndarray:
    """The requested features (each must qualify, else one line naming it) or a seeded sample of the eligible."""
    if requested:
        short = [f"{j} ({int(counts['train_positives'][j])} train / {int(counts['val_positives'][j])} validation positives)"
                 for j in requested if j not in set(counts["eligible"].tolist())]
        if short:
            raise UserError(f"probes.features without enough positives (need {min_positives} train and {min_val_positives} "
                            f"validation, and some inactive tokens): {', '.join(short)}; drop them or raise probes.n_tokens")
        return np.asarray(requested)
    eligible = counts["eligible"]
    return np.sort(rng.choice(eligible, min(n_features, len(eligible)), replace=False))


def latent_counts(sae, x: np.ndarray, split, chunk_tokens: int) -> dict:
    """Per-feature firing counts on the split's training and validation tokens, and the mean L0 of
    the validation tokens: the SAE encodes ``chunk_tokens`` rows of ``x`` at a time on its device and
    only d_sae-sized counts come back (never an [N, d_sae] array: 12.9 GB at 49k tokens × 262k)."""
    import torch

    from darkmatter.analysis.stream import forward_of

    forward, device = forward_of(sae), sae.W_dec.device
    masks = {}
    for name in ("train", "val"):
        mask = np.zeros(len(x), dtype=bool)
        mask[getattr(split, name)] = True
        masks[name] = torch.from_numpy(mask)
    counts = {name: torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=device) for name in masks}
    l0_val = 0
    with torch.no_grad():
        for start in range(0, len(x), chunk_tokens):
            active = forward.encode(torch.as_tensor(x[start:start + chunk_tokens], dtype=torch.float32).to(device))[1] > 0
            for name, mask in masks.items():
                rows = mask[start:start + chunk_tokens].to(device)
                counts[name] += active[rows].sum(dim=0)
            l0_val += int(active[masks["val"][start:start + chunk_tokens].to(device)].sum())
    return {"train_positives": counts["train"].cpu().numpy(), "val_positives": counts["val"].cpu().numpy(),
            "l0_val": l0_val / len(split.val)}


def latent_columns(sae, x: np.ndarray, features: np.ndarray, chunk_tokens: int) -> np.ndarray:
    """``[N, len(features)]`` bool: where each of ``features`` fires (a second pass over ``x``, after
    :func:`latent_counts` chose them)."""
    import torch

    from darkmatter.analysis.stream import latent_subset

    device = sae.W_dec.device
    columns = torch.as_tensor(np.asarray(features, dtype=np.int64), device=device)
    out = np.empty((len(x), len(columns)), dtype=bool)
    for start in range(0, len(x), chunk_tokens):
        chunk = torch.as_tensor(x[start:start + chunk_tokens], dtype=torch.float32).to(device)
        out[start:start + chunk_tokens] = (latent_subset(sae, chunk, columns, chunk_tokens) > 0).cpu().numpy()
    return out


def accuracy_summary(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """Mean with CI, median, std, and the seed's threshold counts with CIs of their fractions."""
    from darkmatter.stats import mean_with_ci

    v = np.asarray([x for x in values if x is not None], dtype=float)
    out = {**mean_with_ci(v, n_boot, rng), "median": float(np.median(v)) if len(v) else None,
           "std": float(v.std()) if len(v) else None}
    out["at_least"] = {}
    for t in THRESHOLDS:
        share = mean_with_ci((v >= t).astype(float), n_boot, rng)
        out["at_least"][str(t)] = {"count": int((v >= t).sum()), "fraction": share["mean"], "ci": share["ci"]}
    return out


def match_density(target_rates: np.ndarray, rates: np.ndarray, eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each target firing rate (in a seeded order), the eligible feature with the nearest log
    rate not taken yet: a feature set at the same density, pair by pair."""
    free = list(eligible)
    chosen = np.empty(len(target_rates), dtype=int)
    for i in rng.permutation(len(target_rates)):
        k = int(np.argmin(np.abs(np.log(rates[free]) - np.log(target_rates[i]))))
        chosen[i] = free.pop(k)
    return chosen


def probe_sae(name: str, sae, acts: np.ndarray, inputs, split, cfg, rng, budget_bytes: int, requested=(), controls=True,
              match_rates: np.ndarray | None = None) -> dict:
    """Experiment 1's protocol on one SAE's features: per-feature results and their summaries.

    ``match_rates``: pick, instead of a random sample, features density-matched to these firing rates.
    ``budget_bytes``: what a chunk of latents may take (``residual.latent_budget_mb``).
    """
    from darkmatter.analysis.stream import latent_chunk_tokens
    from darkmatter.probes.controls import CONTROLS, eligible_features, probe_features
    from darkmatter.stats import paired_difference

    chunk_tokens = latent_chunk_tokens(sae.cfg.d_sae, budget_bytes)
    fired = latent_counts(sae, acts, split, chunk_tokens)
    counts = eligible_features(fired["train_positives"], fired["val_positives"], len(split.train), len(split.val),
                               cfg.min_positives, cfg.min_val_positives)
    rates = counts["train_positives"] / len(split.train)
    if match_rates is not None:
        chosen = match_density(match_rates[: len(counts["eligible"])], rates, counts["eligible"], rng)
    else:
        chosen = choose_features(counts, cfg.n_features, requested, cfg.min_positives, cfg.min_val_positives, rng)
    print(f"probes: {name}: {len(chosen)} features, {'probe and controls' if controls else 'probe and lookups'}")
    rows = [{"feature": int(j), "firing_rate": float(rates[j]), **r}
            for j, r in zip(chosen, probe_features(inputs, latent_columns(sae, acts, chosen, chunk_tokens), split, cfg, rng,
                                                   controls))]
    column = {key: [r.get(key) for r in rows] for key in ("probe", "unseen_probe", "unseen_token_lookup", *CONTROLS)}
    n_boot = cfg.n_bootstrap
    result = {
        "features": {"width": int(sae.cfg.d_sae), "dead": counts["n_dead"], "too_few_positives": counts["n_too_few"],
                     "fire_everywhere": counts["n_everywhere"], "eligible": int(len(counts["eligible"])),
                     "probed": len(rows), "requested": bool(requested),
                     # sparsity on the validation tokens, and how often the probed features fire
                     "l0_val": float(fired["l0_val"]),
                     "probed_firing_rate_median": float(np.median(rates[chosen]))},
        "probe": accuracy_summary(column["probe"], n_boot, rng),
        "train_loss": _mean_std([r["train_loss"] for r in rows]),
        "val_loss": _mean_std([r["val_loss"] for r in rows]),
        "not_converged": [r["feature"] for r in rows if not r["converged"]],
        "controls": {key: accuracy_summary(column[key], n_boot, rng)
                     for key in ("token_lookup", "context_lookup", "unseen_probe", "unseen_token_lookup",
                                 *(("shuffled", "position") if controls else ()))},
        "per_feature": rows,
    }
    probe = np.asarray(column["probe"], float)
    result["tests"] = {f"probe_minus_{key}": paired_difference(probe, np.asarray(column[key], float), n_boot, rng)
                       for key in ("token_lookup", "context_lookup")}
    seen = [(r["unseen_probe"], r["probe"]) for r in rows if r["unseen_probe"] is not None]
    result["tests"]["unseen_minus_seen"] = paired_difference(*map(np.asarray, zip(*seen)), n_boot, rng) if seen else None
    return result


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None}


def train_here(acts: np.ndarray, index: np.ndarray, sae_cfg, scratch: Path, identity: dict, metadata: dict, device: str):
    """An SAE trained with the project's trainer on ``acts[index]``, kept in ``scratch`` once done."""
    from darkmatter.sae.io import load_sae
    from darkmatter.sae.train import to_inference_sae, train

    if (scratch / "cfg.json").exists():
        return load_sae(scratch), json.loads((scratch / "training.json").read_text())
    training_sae, metrics = train(acts, index, sae_cfg, scratch.parent / f"{scratch.name}-checkpoints", identity, device)
    sae = to_inference_sae(training_sae, metrics["input_scale"], metadata)
    sae.save_model(str(scratch))
    (scratch / "training.json").write_text(json.dumps(metrics))
    return sae.eval(), metrics


def map_and_residual(inputs_x0: np.ndarray, y: np.ndarray, ids: np.ndarray, fit: np.ndarray, held: np.ndarray, cfg) -> tuple[dict, np.ndarray]:
    """Fit the affine map on ``fit`` tokens; held-out R² (and the token-mean reference); the residual everywhere."""
    from darkmatter.probes.affine import fit_adam, fit_ridge, predict, r_squared, token_means

    if cfg.map_solver == "ridge":
        w, b = fit_ridge(inputs_x0[fit], y[fit], cfg.ridge_alpha)
    else:
        w, b = fit_adam(inputs_x0[fit], y[fit], cfg.adam_lr, cfg.adam_epochs, cfg.seed)
    pred = predict(inputs_x0, w, b)
    report = {"solver": cfg.map_solver, "fit_tokens": int(len(fit)), "heldout_tokens": int(len(held)),
              "r2": r_squared(y[held], pred[held]), "r2_train": r_squared(y[fit], pred[fit]),
              "r2_token_mean": r_squared(y[held], token_means(ids[fit], y[fit], ids[held]))}
    return report, y - pred


def run_probes(run, cache, subject, run_sae, scratch: Path, out: Path) -> dict:
    """Both experiments for every probed layer; returns the metrics (per-feature rows go to ``out``)."""
    from darkmatter.hashing import fingerprint
    from darkmatter.probes.controls import ProbeInputs, standardise
    from darkmatter.probes.paired import capture, previous_ids, probe_rows, split_tokens
    from darkmatter.stats import paired_difference

    cfg = run.probes
    t0 = time.perf_counter()
    context = cache.meta["context_length"]
    train_rows, val_rows = probe_rows(cache.meta["n_rows"], run.sae.heldout_fraction, cfg.n_tokens // context,
                                      cfg.val_fraction, cfg.seed)
    rows = np.concatenate([train_rows, val_rows])
    layers = [run.layer, *cfg.extra_layers]
    share = cfg.sae_train_tokens / run.sae.train_tokens  # the short SAEs keep the recipe's warm-up shares
    sae_cfg = run.sae.replace(width=cfg.sae_width, train_tokens=cfg.sae_train_tokens, sparsity="quadratic",
                              target_l0=cfg.sae_target_l0, l0_coefficient=cfg.sae_l0_coefficient, curve_tokens=(),
                              batch_size=cfg.sae_batch_size, lr=cfg.sae_lr,
                              l0_warm_up_tokens=round(run.sae.l0_warm_up_tokens * share),
                              lr_warm_up_tokens=round(run.sae.lr_warm_up_tokens * share))
    scratch = scratch / fingerprint({"cache": cache.meta["fingerprint"], "rows": rows.tolist(), "layers": layers,
                                     "site": run.subject.site, "sae": repr(sae_cfg), "map": [cfg.map_solver, cfg.ridge_alpha,
                                     cfg.adam_lr, cfg.adam_epochs]})
    scratch.mkdir(parents=True, exist_ok=True)

    ids_rows = np.asarray(cache.tokens).reshape(-1, context)[rows]
    acts_file = scratch / "paired.npz"
    if acts_file.exists():
        paired = {k if k == "layer0" else int(k): v for k, v in np.load(acts_file).items()}
    else:
        paired = capture(subject, ids_rows, layers, run.subject.site, cfg.batch_size)
        np.savez(scratch / "paired.tmp.npz", **{str(k): v for k, v in paired.items()})
        (scratch / "paired.tmp.npz").rename(acts_file)
    special = np.asarray(cache.special).reshape(-1, context)[rows].reshape(-1)
    ids = ids_rows.reshape(-1)
    is_val = np.repeat(np.arange(len(rows)) >= len(train_rows), context)
    split = split_tokens(ids, ~special, is_val, cfg.heldout_type_fraction, cfg.seed)
    fit_tokens = np.flatnonzero(~special & ~is_val)          # the map and the SAEs: every training-row token
    held_tokens = np.flatnonzero(~special & is_val)
    inputs = ProbeInputs(x0=standardise(paired["layer0"], split.train), ids=ids, prev_ids=previous_ids(ids_rows),
                         positions=np.tile(np.arange(context), len(rows)), context=context)
    rng = np.random.default_rng(cfg.seed)
    report = {"run": run.name, "model": run.model.name, "layer0_hook": "blocks.0.hook_resid_pre",
              # no absolute position embedding (Gemma: rotary): layer 0 is the token's embedding alone
              "layer0_is_token_function": subject.model.cfg.positional_embedding_type != "standard",
              "data": {"rows_train": int(len(train_rows)), "rows_val": int(len(val_rows)), "context": context,
                       "tokens_train": int(len(split.train)), "tokens_val": int(len(split.val)),
                       "tokens_unseen_types": int(len(split.unseen)), "token_types": split.n_types,
                       "heldout_types": int(len(split.heldout_types))},
              "layers": {}, "seed_claims": SEED_CLAIMS}
    budget = run.residual.latent_budget_mb << 20
    for layer in layers:
        y = paired[layer]
        meta = {"model_name": cache.meta["model"], "hook_name": f"blocks.{layer}.hook_{run.subject.site}",
                "context_size": context, "prepend_bos": True, "trained_by": "darkmatter.probes (project trainer)"}
        identity = {"cache": cache.meta["fingerprint"], "layer": layer}
        device = subject.device
        map_report, residual = map_and_residual(paired["layer0"], y, ids, fit_tokens, held_tokens, cfg)
        baseline, base_train = train_here(y, fit_tokens, sae_cfg, scratch / f"sae-{layer}-baseline", identity | {"on": "acts"}, meta, device)
        resid_sae, resid_train = train_here(residual, fit_tokens, sae_cfg, scratch / f"sae-{layer}-residual",
                                            identity | {"on": "residual"}, meta | {"input": "layer-L minus affine(layer 0)"}, device)
        own = layer == run.layer
        exp1 = probe_sae(f"layer {layer} {'run SAE' if own else 'SAE'}", run_sae if own else baseline, y, inputs, split, cfg,
                         rng, budget, cfg.features if own else ())
        base = probe_sae(f"layer {layer} baseline", baseline, y, inputs, split, cfg, rng, budget, controls=False) if own else dict(exp1)
        base_rates = np.array([r["firing_rate"] for r in base["per_feature"]])
        resid = probe_sae(f"layer {layer} residual", resid_sae, residual, inputs, split, cfg, rng, budget, controls=False,
                          match_rates=base_rates)
        n_pairs = len(resid["per_feature"])
        accuracy = {k: np.array([r["probe"] for r in d["per_feature"][:n_pairs]]) for k, d in (("baseline", base), ("residual", resid))}
        lookup = {k: np.array([r["token_lookup"] for r in d["per_feature"][:n_pairs]]) for k, d in (("baseline", base), ("residual", resid))}
        report["layers"][str(layer)] = {
            "hook": meta["hook_name"], "sae": "run" if own else "baseline (trained here)",
            "experiment1": exp1,
            "experiment2": {
                "map": map_report,
                "sae": {"width": cfg.sae_width, "train_tokens": cfg.sae_train_tokens, "target_l0": cfg.sae_target_l0,
                        "fit_tokens": int(len(fit_tokens)),
                        "baseline_final_batch": base_train["final_batch"], "residual_final_batch": resid_train["final_batch"]},
                "baseline": base, "residual": resid,
                # pairs of features at the same firing rate (a feature's density bounds how well it can be predicted)
                "residual_minus_baseline": paired_difference(accuracy["residual"], accuracy["baseline"], cfg.n_bootstrap, rng),
                "token_lookup_residual_minus_baseline": paired_difference(lookup["residual"], lookup["baseline"],
                                                                          cfg.n_bootstrap, rng),
            },
        }
        for name, sae in (("baseline", baseline), ("residual", resid_sae)):
            sae.save_model(str(out / f"sae-{layer}-{name}"))
    report["seconds"] = time.perf_counter() - t0
    return report


def split_per_feature(report: dict) -> tuple[dict, dict]:
    """(metrics without per-feature rows, the per-feature rows by layer: experiment 1, baseline, residual)."""
    rows = {}
    for layer, entry in report["layers"].items():
        e2 = entry["experiment2"]
        rows[layer] = {"experiment1": entry["experiment1"].pop("per_feature"),
                       "baseline": e2["baseline"].pop("per_feature"), "residual": e2["residual"].pop("per_feature")}
    return report, rows


LABELS = {"probe": "probe", "unseen_probe": "probe,\nunseen types", "token_lookup": "token\nlookup",
          "context_lookup": "prev+cur\nlookup", "position": "position", "shuffled": "shuffled\nlabels"}


def plot(per_feature: dict, report: dict, stem: Path) -> None:
    """Accuracy per feature: the probe against its controls per layer, and experiment 2's SAEs."""
    from darkmatter.figures import save_figure, subplots

    layers = list(report["layers"])
    fig, axes = subplots(1, len(layers) + 1, figsize=(4.2 * (len(layers) + 1), 3.4), sharey=True)
    rng = np.random.default_rng(0)
    for ax, layer in zip(axes, layers):
        rows = per_feature[layer]["experiment1"]
        data = [[r[k] for r in rows if r.get(k) is not None] for k in LABELS]
        _strips(ax, data, list(LABELS.values()), rng)
        ax.set_title(f"layer {layer}: {report['layers'][layer]['sae']} SAE")
    ax = axes[-1]
    data, names = [], []
    for layer in layers:
        for kind in ("baseline", "residual"):
            data.append([r["probe"] for r in per_feature[layer][kind]])
            names.append(f"L{layer}\n{kind}")
    _strips(ax, data, names, rng)
    ax.set_title("experiment 2: SAE on acts vs on residual")
    axes[0].set_ylabel("balanced accuracy (validation)")
    save_figure(fig, stem)


def _strips(ax, data: list[list[float]], names: list[str], rng) -> None:
    for i, values in enumerate(data):
        if values:
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=6, alpha=0.5)
            ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="k")
    ax.axhline(0.5, ls=":", color="grey")
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(0.3, 1.02)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_run_subject
    from darkmatter.sae.io import check_compatible, load_sae, to_device

    parser = argparse.ArgumentParser(description="Dataset-geometry probes: layer-L SAE features from layer 0, with controls.")
    add_run_arguments(parser)
    for name in ("--cache", "--weights", "--sae", "--out", "--metrics", "--figures"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--scratch", type=Path, default=Path("data/scratch/probes"))
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cache = ActivationCache.open(args.cache)
    run_sae = load_sae(args.sae)
    check_compatible(run_sae, cache)
    check_requested(run.probes.features, run_sae.cfg.d_sae)
    subject = load_run_subject(run, args.weights)
    run_sae = to_device(run_sae, run.subject.device)  # its firing counts stream on the device (latent_counts)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    report = run_probes(run, cache, subject, run_sae, args.scratch / run.name, args.out)
    report, rows = split_per_feature(report)
    (args.out / "per_feature.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, report, args.figures / "probes")
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(args.scratch / run.name, ignore_errors=True)
    print(json.dumps({k: report[k] for k in ("data", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
