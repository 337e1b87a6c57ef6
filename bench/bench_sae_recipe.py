"""The SAE recipe, one change at a time: what each lever does to the main run's SAE.

    python bench/bench_sae_recipe.py            # every step (~6 min each on 2 cores); needs `dvc repro activations`
    python bench/bench_sae_recipe.py --only gemma-scope,batch-256

Each step trains an SAE on the main run's cache with the ``sae`` section of params.yaml
overridden by that step's settings *and all the steps before it*, starting from the Gemma Scope
recipe as this project first ran it (batch 1024, learning rate 2e-3, 1M token presentations, random
decoder, Gemma Scope's 0.001 thresholds, β2 = 0.999); each alternative is the last step with one
more change (a lever tried and kept or not by what it did). Each is evaluated as ``eval_sae`` does:
held-out FVU, L0 and dead fraction, and ΔLM with the SAE spliced in (the default splice and zero
ablation, the run's ``sae_eval`` rows and positions, intervals that resample documents).
Results accumulate in ``bench/sae_recipe.json`` (a step is retrained only when its settings
change) and the table goes to ``bench/RESULTS.md``, "SAE recipe ablation".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORE = Path(__file__).with_name("sae_recipe.json")

#: (name, what changes, settings): each step keeps every setting of the steps before it ...
STEPS = (
    ("gemma-scope", "the Gemma Scope recipe as first run here (batch 1024, lr 2e-3, 1M presentations)",
     {"batch_size": 1024, "lr": 0.002, "train_tokens": 1_000_000, "l0_warm_up_tokens": 100_000,
      "lr_warm_up_tokens": 50_000, "init_firing_rate": None, "adam_beta2": 0.999,
      "bandwidth": 0.001, "init_threshold": 0.001, "pre_act_loss_coefficient": None, "aux_loss_coefficient": None, "l0_coefficient": 1e-4,
      "curve_tokens": []}),
    ("batch-256", "batch 256: 4x the steps at the same presentations", {"batch_size": 256}),
    ("2M-tokens", "2M presentations (warm-ups 200k and 100k tokens)", {"train_tokens": 2_000_000, "l0_warm_up_tokens": 200_000,
                                                                        "lr_warm_up_tokens": 100_000}),
    ("lr-3e-4", "learning rate 3e-4 (the default)", {"lr": 0.0003}),
)
#: ... and each alternative is the last step with one more change, kept or not by what it did.
ALTERNATIVES = (
    ("4M-tokens", "4M presentations: twice the training", {"train_tokens": 4_000_000}),
    ("8M-tokens", "8M presentations: four times the training (the FVU bar's extrapolated cost)", {"train_tokens": 8_000_000}),
    ("lr-1e-4", "learning rate 1e-4 instead", {"lr": 0.0001}),
    ("lambda-5e-5", "λ 5e-5 instead of 1e-4", {"l0_coefficient": 5e-5}),
    ("bandwidth-3e-3", "bandwidth and initial threshold 3e-3", {"bandwidth": 0.003, "init_threshold": 0.003}),
    ("adam-beta2", "Adam β2 0.9999", {"adam_beta2": 0.9999}),
    ("pre-act-loss", "Anthropic's pre-activation loss on dead features, 1e-5", {"pre_act_loss_coefficient": 1e-5}),
    ("auxk", "the TopK auxiliary loss on dead features (Gao et al.), 1/32", {"aux_loss_coefficient": 1 / 32}),
    ("init-rate", "thresholds initialised to fire each feature on 1% of tokens", {"init_firing_rate": 0.01}),
    ("quadratic", "Gemma Scope 2's quadratic L0 penalty, target 25 (coefficient 3e-3)",
     {"sparsity": "quadratic", "target_l0": 25.0, "l0_coefficient": 3e-3}),
    ("resample", "dead features resampled every 250k tokens up to 1.5M (Bricken et al., JumpReLU thresholds)",
     {"resample_every_tokens": 250_000, "resample_until_tokens": 1_500_000}),
    ("width-2048", "width 2048: half the dictionary", {"width": 2048}),
    ("width-1024", "width 1024: a quarter of the dictionary", {"width": 1024}),
)


def run_step(name: str, settings: dict, rows: int | None) -> dict:
    import dataclasses

    from darkmatter.config import load_params
    from darkmatter.data.activations import ActivationCache
    from darkmatter.data.models import load_run_subject
    from darkmatter.data.split import split_rows, token_index
    from darkmatter.sae.evaluate import evaluate_saes, headline
    from darkmatter.sae.train import to_inference_sae, train

    params = load_params(REPO / "params.yaml")
    run = params.main
    cfg = dataclasses.replace(run.sae, **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    cache = ActivationCache.open(REPO / "data/runs" / run.name / "activations")
    train_rows, _ = split_rows(cache.meta["n_rows"], cfg.heldout_fraction)
    start = time.perf_counter()
    training_sae, metrics = train(cache.acts, token_index(cache, train_rows), cfg, REPO / "data/scratch/bench-recipe",
                                  {"bench": name}, "cpu")
    seconds = time.perf_counter() - start
    sae = to_inference_sae(training_sae, metrics["input_scale"], {"hook_name": cache.meta["hook_name"]})
    subject = load_run_subject(run, REPO / "data/runs" / run.name / "model")
    return {"settings": settings, "train_seconds": seconds, "steps": metrics["steps"],
            **headline(evaluate_saes(subject, {name: sae}, cache, run, lm_rows_override=rows)[name])}


def row(name: str, what: str, r: dict) -> str:
    ci = r["delta_loss_ci"]
    return (f"| {name} | {what} | {r['steps']:,} | {r['l0']:.1f} | {r['fvu']:.3f} | {100 * r['dead_fraction']:.0f}% | "
            f"{r['delta_loss']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | {r['loss_recovered']:.3f} | {r['train_seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None, help="comma-separated step names to (re)train")
    parser.add_argument("--lm-rows", type=int, default=None, help="override sae_eval.lm_rows")
    args = parser.parse_args()
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    only = set(args.only.split(",")) if args.only else None
    settings: dict = {}
    plan = []
    for name, what, change in STEPS:
        settings = {**settings, **change}
        plan.append((name, what, settings))
    plan += [(name, what, {**settings, **change}) for name, what, change in ALTERNATIVES]
    for name, _, step_settings in plan:
        if (only is None or name in only) and store.get(name, {}).get("settings") != step_settings:
            store[name] = run_step(name, step_settings, args.lm_rows)
            STORE.write_text(json.dumps(store, indent=1) + "\n")
    lines = ["| step | change | steps | L0 | FVU | dead | ΔLM [95% CI] | loss recovered | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [row(name, what, store[name]) for name, what, _ in plan[: len(STEPS)] if name in store]
    lines += ["| | *alternatives: the last step with one change* | | | | | | | |"]
    lines += [row(name, what, store[name]) for name, what, _ in plan[len(STEPS):] if name in store]
    body = (
        "Each step keeps every change above it; each alternative is the last step with one change. Held-out rows of the main run, evaluated as `eval_sae` does "
        "(ΔLM: the default splice, intervals resample documents). Bars: FVU ≤ 0.08, dead ≤ 15%, ΔLM ≤ 0.6 nats "
        "with its interval, loss recovered ≥ 0.97, at L0 15–40.\n\n" + "\n".join(lines))
    print(body)
    write_section("SAE recipe ablation", body)


if __name__ == "__main__":
    main()
