"""Autointerp: explain each unit from its top contexts, then score the explanation by detection.

Units come from the examples stage: ``autointerp.n_ica_units`` ICA components (a uniform sample
over the kurtosis ranking when fewer than all), each with its density-matched SAE feature, and
``autointerp.n_random_units`` random units of the same whitened space (the critical baseline: an
explanation of a random unit should detect no better than chance).

- **Explain** from the train rows only: the ``explain_top`` highest-activating train contexts,
  marked at the activating token with its activation (``prompts/explain_*.txt``).
- **Detect** on the held-out rows only: ``detect_positives`` activating contexts spread over the
  quantiles of the held-out rows' own activations, and ``detect_negatives`` non-activating ones;
  no detection context shares a row, a document or a token window with a shown one (the
  examples stage guarantees and checks it; a context from a train row here is refused). The LLM
  answers Yes/No per context (``prompts/detect_*.txt``).
- **Metrics per unit:** balanced accuracy (chance 0.5), F1, and AUC from log P(Yes) − log P(No)
  where the backend gives log-probabilities.
- **Per group:** mean with a bootstrap CI over units (none below ``stats.MIN_N_FOR_CI`` units).
  ICA vs SAE is a *paired* comparison (each component against its own density-matched feature:
  mean paired difference, bootstrap CI over pairs, sign-flip permutation and Wilcoxon p-values);
  ICA vs random is unpaired (difference of means, bootstrap CI, permutation p-value).
  Permutation p-values are (1 + #{≥ observed}) / (1 + B).

Prompt templates live in ``src/darkmatter/prompts/`` under version control; every response is
cached (``darkmatter.interp.llm``), so reruns and reviewers pay nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli
from darkmatter.interp.llm import CachedLLM, Request
from darkmatter.stats import mean_with_ci, paired_difference, unpaired_difference

PROMPTS = Path(__file__).with_name("prompts")
GROUPS = ("ica", "sae", "random")


def template(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text().strip()


def marked(ctx: dict) -> str:
    """The context's text with its activating token marked <<like this>>."""
    tokens = list(ctx["tokens"])
    tokens[ctx["focus"]] = f"<<{tokens[ctx['focus']]}>>"
    return "".join(tokens).replace("\n", " ").strip()


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced through ``items`` (all of them if fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def unit_name(unit: dict) -> str:
    return f"{unit['kind']}-{unit['id']}"


def explain_request(unit: dict, n_top: int) -> Request:
    lines = [f"{i + 1}. {marked(c)} [{c['activation']:.2f}]" for i, c in enumerate(unit["top"][:n_top])]
    return Request(unit_name(unit), template("explain_system"),
                   template("explain_user").format(examples="\n".join(lines)), max_tokens=40)


def detection_set(unit: dict, n_pos: int, n_neg: int) -> list[tuple[dict, int]]:
    """Held-out contexts: activating ones across quantiles (label 1) and non-activating (0)."""
    chosen = [(c, 1) for c in spread(unit["quantiles"], n_pos)] + [(c, 0) for c in spread(unit["non_activating"], n_neg)]
    leaked = [c["token_index"] for c, _ in chosen if c["split"] != "heldout"]
    if leaked or any(c["split"] != "train" for c in unit["top"]):
        raise UserError(f"{unit_name(unit)}: detection contexts must come from held-out rows and explanations from train "
                        f"rows (tokens {leaked[:3]} do not); rerun the examples stage (`dvc repro examples@<run>`)")
    return chosen


def detect_request(unit: dict, explanation: str, ctx: dict, i: int) -> Request:
    return Request(f"{unit_name(unit)}/detect{i}", template("detect_system").format(explanation=explanation),
                   template("detect_user").format(excerpt=marked(ctx)), max_tokens=3, want_logprobs=True)


def answer(text: str) -> int:
    return int(text.strip().lower().startswith("yes"))


def unit_scores(labels: list[int], predictions: list[int], scores: list[float] | None) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    y, p = np.asarray(labels), np.asarray(predictions)
    out = {"n": int(len(y)), "balanced_accuracy": float(balanced_accuracy_score(y, p)),
           "f1": float(f1_score(y, p, zero_division=0)), "auc": None}
    if scores is not None and len(set(y)) == 2:
        out["auc"] = float(roc_auc_score(y, scores))
    return out


def select_units(units: list[dict], n_ica: int, n_random: int) -> list[dict]:
    """``n_ica`` ICA units spread evenly over the kurtosis ranking, the SAE feature matched to each
    (the pairs), and the first ``n_random`` random units."""
    ica = spread([u for u in units if u["kind"] == "ica"], n_ica)
    sae = {u["matched_to_ica"]: u for u in units if u["kind"] == "sae"}
    missing = [u["id"] for u in ica if u["id"] not in sae]
    if missing:
        raise UserError(f"ICA components {missing[:5]} have no density-matched SAE feature in the examples; "
                        "rerun the examples stage")
    return ica + [sae[u["id"]] for u in ica] + [u for u in units if u["kind"] == "random"][:n_random]


def run(units: list[dict], llm: CachedLLM, cfg) -> tuple[list[dict], dict]:
    explanations = llm.run([explain_request(u, cfg.explain_top) for u in units], desc="explain")
    requests, owners = [], []
    for u, e in zip(units, explanations):
        for i, (ctx, label) in enumerate(detection_set(u, cfg.detect_positives, cfg.detect_negatives)):
            requests.append(detect_request(u, e.text, ctx, i))
            owners.append((unit_name(u), label))
    answers = llm.run(requests, desc="detect")
    per_unit: dict[str, dict] = {unit_name(u): {"labels": [], "pred": [], "score": []} for u in units}
    for (name, label), resp in zip(owners, answers):
        rec = per_unit[name]
        rec["labels"].append(label)
        rec["pred"].append(answer(resp.text))
        rec["score"].append(None if resp.logprobs is None else resp.logprobs["yes"] - resp.logprobs["no"])
    rows = []
    for u, e in zip(units, explanations):
        rec = per_unit[unit_name(u)]
        has_scores = all(s is not None for s in rec["score"])
        scores = unit_scores(rec["labels"], rec["pred"], rec["score"] if has_scores else None)
        rows.append({"unit": unit_name(u), "kind": u["kind"], "stable": u.get("stable"), "explanation": e.text, **scores})
    return rows, summarise(rows, units, cfg)


def summarise(rows: list[dict], units: list[dict], cfg) -> dict:
    rng = np.random.default_rng(cfg.seed)
    groups = {k: [r for r in rows if r["kind"] == k] for k in GROUPS}
    groups["ica_stable"] = [r for r in rows if r["kind"] == "ica" and r["stable"]]
    summary = {}
    for name, rs in groups.items():
        entry = {"n_units": len(rs)}
        for metric in ("balanced_accuracy", "f1", "auc"):
            values = [r[metric] for r in rs if r[metric] is not None]
            entry[metric] = mean_with_ci(values, cfg.n_bootstrap, rng) if values else None
        summary[name] = entry
    score = {r["unit"]: r["balanced_accuracy"] for r in rows}
    pairs = [(u["id"], u["matched_sae_feature"]) for u in units if u["kind"] == "ica"]
    ica_paired = np.array([score[f"ica-{i}"] for i, _ in pairs])
    sae_paired = np.array([score[f"sae-{f}"] for _, f in pairs])
    random = np.array([r["balanced_accuracy"] for r in groups["random"]])
    tests = {"ica_vs_sae": paired_difference(ica_paired, sae_paired, cfg.n_bootstrap, rng),
             "ica_vs_random": unpaired_difference(ica_paired, random, cfg.n_bootstrap, rng)}
    return {"groups": summary, "tests": tests}


def plot(rows: list[dict], out_dir: Path) -> None:
    from darkmatter.figures import save_figure, subplots

    fig, ax = subplots(figsize=(4.2, 3.0))
    for i, kind in enumerate(GROUPS):
        values = [r["balanced_accuracy"] for r in rows if r["kind"] == kind]
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(values))
        ax.scatter(np.full(len(values), i) + jitter, values, s=8, alpha=0.6)
        if values:
            ax.plot([i - 0.3, i + 0.3], [np.mean(values)] * 2, color="k")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(GROUPS)), ["ICA", "SAE (density-matched)", "random"])
    ax.set_ylabel("detection balanced accuracy")
    save_figure(fig, out_dir / "autointerp")


def make_llm(cfg, cache_dir: Path, judge_weights: Path) -> CachedLLM:
    from darkmatter.interp.llm import (AnthropicBackend, LocalBackend, LocalPrompts, ReplayBackend, ResponseCache,
                                       anthropic_params)

    cache = ResponseCache(cache_dir)
    if cfg.backend == "anthropic":
        backend = AnthropicBackend(cfg.model, base_url=cfg.base_url)
    elif cfg.backend == "local":
        backend = LocalBackend(cfg.local_model, judge_weights)
    elif cfg.replay_of == "anthropic":
        backend = ReplayBackend(cfg.model, "anthropic", lambda req: anthropic_params(cfg.model, req))
    else:
        prompts = LocalPrompts(judge_weights)
        backend = ReplayBackend(cfg.local_model, "local", lambda req: prompts.payload(cfg.local_model, req))
    return CachedLLM(backend, cache, concurrency=cfg.concurrency if cfg.backend == "anthropic" else 1,
                     use_batches=cfg.use_batches)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args

    parser = argparse.ArgumentParser(description="Explain and detection-score ICA components vs SAE features vs random directions.")
    add_run_arguments(parser)
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="response cache directory (DVC, persist)")
    parser.add_argument("--judge", type=Path, default=Path("data/models/smollm2-135m"), help="local judge weights")
    parser.add_argument("--out", type=Path, required=True, help="per-unit results JSON")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = run_from_args(args).autointerp
    if not args.examples.exists():
        raise UserError(f"{args.examples} not found; run the examples stage first")
    units = select_units(json.loads(args.examples.read_text())["units"], cfg.n_ica_units, cfg.n_random_units)
    llm = make_llm(cfg, args.cache, args.judge)
    rows, summary = run(units, llm, cfg)
    report = {"backend": cfg.backend if cfg.backend != "replay" else f"replay of {cfg.replay_of}",
              "model": llm.backend.model, "judge_is_weak": llm.backend.name == "local", **summary,
              "usage": llm.stats, "cost_usd": llm.cost_usd(),
              # What the responses cost when first made (equal to usage on a run with no cache hits).
              "usage_recorded": llm.recorded, "cost_usd_recorded": llm.cost_usd(llm.recorded),
              "tokens_per_unit": (llm.recorded["input_tokens"] + llm.recorded["output_tokens"]) / max(len(units), 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("backend", "usage", "cost_usd")} | {"groups": {
        k: v["balanced_accuracy"] for k, v in report["groups"].items()}}, indent=2))


if __name__ == "__main__":
    main()
