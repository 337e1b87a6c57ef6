"""Autointerp: explain each unit from its top contexts, then score the explanation by detection.

Units come from the examples stage: ``autointerp.n_ica_units`` ICA components (a uniform sample
over the kurtosis ranking when fewer than all), each with its density-matched SAE feature,
``autointerp.n_random_units`` random units of the same whitened space (an explanation of a random
unit should detect no better than chance), and every calibration unit (token classes of known
meaning, :mod:`darkmatter.interp.calibration`).

- **Explain** from the train rows only: the ``explain_top`` highest-activating train contexts,
  marked at the activating token with its activation (``prompts/explain_*.txt``).
- **Detect** on the held-out rows only: ``detect_positives`` activating contexts spread over the
  quantiles of the held-out rows' own activations, and ``detect_negatives`` non-activating ones
  (``calibration_contexts`` of each for the calibration units' ceiling and its control);
  no detection context shares a row, a document or a token window with a shown one (the
  examples stage guarantees and checks it; a context from a train row here is refused). Each
  context is scored one of two ways (``autointerp.scorer``), both naming the marked token:

  - ``likelihood`` (the default): the judge's mean log-probability per token of the explanation
    written after the excerpt (``prompts/score.txt``), centred on the unit's own contexts. A
    likelihood reading of the judge as a language model, the idea of delphi's surprisal scorer
    (Paulo et al. 2024) from the other side: PMI(explanation; context) is the same either way.
    On the default run's calibration units (``bench/bench_judges.py``), SmolLM2-135M given the
    true explanations is weakly above chance this way and at chance answering Yes/No: a 135M
    model models language better than it follows an instruction;
  - ``yes_no``: the judge answers whether the unit fires (``prompts/detect_*.txt``); the score
    is log P(Yes) − log P(No) where the backend gives log-probabilities (local), and the Messages
    API's answers alone otherwise.

  Calibration units are detected three times: with the judge's explanation (the whole chain,
  like every other unit), with their true one (detection alone: the judge's ceiling), and with
  another calibration unit's true one (the same contexts: does the judge read the explanation?).
- **Metrics per unit:** AUC of the score where there is one; balanced accuracy (chance 0.5) at a
  cut-off on that score chosen on the calibration units with their true explanations (a judge
  that leans to "Yes" is not judged at a cut-off of 0; a calibration unit's own cut-off leaves it
  out); balanced accuracy and F1 of the answers as given (Yes/No judges only).
- **Per group:** mean with a bootstrap CI over units (none below ``stats.MIN_N_FOR_CI`` units).
  ICA vs SAE is a *paired* comparison (each component against its own density-matched feature:
  mean paired difference, bootstrap CI over pairs, sign-flip permutation and Wilcoxon p-values);
  every group against the random units is unpaired (difference of means, bootstrap CI,
  permutation p-value), on AUC and on the calibrated balanced accuracy; the calibration units'
  true explanations against the wrong ones is paired (the same contexts). Permutation p-values
  are (1 + #{≥ observed}) / (1 + B).
- **The gate:** ``judge_separates_calibration`` is true when calibration units explained by the
  judge beat random units (CI above 0 and p < 0.05 on the first tested metric). When it is false
  the chain (explainer and detector) cannot find known structure, and the paper declines to rank
  the groups; the ceiling and the wrong-explanation control say which of the two fails.

Prompt templates live in ``src/darkmatter/interp/prompts/`` under version control; every
response is cached (``darkmatter.interp.llm``), so reruns and reviewers pay nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from darkmatter.errors import UserError, cli
from darkmatter.interp.judges import AUTO_FLAG, chosen_by_cpu, judge_names, resolve
from darkmatter.interp.llm import TOKEN_KINDS, CachedLLM, Request
from darkmatter.stats import mean_with_ci, paired_difference, unpaired_difference

PROMPTS = Path(__file__).with_name("prompts")
GROUPS = ("ica", "sae", "random", "calibration", "calibration_given", "calibration_shuffled")
#: The calibration rows that measure the judge itself (true and wrong explanation), on
#: ``calibration_contexts`` contexts per class rather than the other groups' counts.
CEILING_GROUPS = ("calibration_given", "calibration_shuffled")
#: Backends behind a network API: requests run concurrently, and one model explains and judges.
REMOTE = ("anthropic", "openai")


def template(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text().strip()


def marked(ctx: dict) -> str:
    """The context's text with its activating token marked <<like this>>."""
    tokens = list(ctx["tokens"])
    tokens[ctx["focus"]] = f"<<{tokens[ctx['focus']]}>>"
    return "".join(tokens).replace("\n", " ").strip()


def sum_costs(costs) -> float | None:
    """Total USD, None when any part is unpriced."""
    costs = list(costs)
    return None if any(c is None for c in costs) else float(sum(costs))


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
                   template("explain_user").format(examples="\n".join(lines)),
                   # The prompt asks for at most 15 words; a longer answer is a small judge rambling
                   # (and every detection scores the whole explanation).
                   max_tokens=24)


def detection_set(unit: dict, n_pos: int, n_neg: int) -> list[tuple[dict, int]]:
    """Held-out contexts: activating ones across quantiles (label 1) and non-activating (0)."""
    chosen = [(c, 1) for c in spread(unit["quantiles"], n_pos)] + [(c, 0) for c in spread(unit["non_activating"], n_neg)]
    leaked = [c["token_index"] for c, _ in chosen if c["split"] != "heldout"]
    if leaked or any(c["split"] != "train" for c in unit["top"]):
        raise UserError(f"{unit_name(unit)}: detection contexts must come from held-out rows and explanations from train "
                        f"rows (tokens {leaked[:3]} do not); rerun the examples stage (`dvc repro examples@<run>`)")
    return chosen


def detect_request(name: str, explanation: str, ctx: dict, i: int, scorer: str) -> Request:
    """``yes_no``: the judge is asked whether the unit fires on the marked token. ``likelihood``:
    the explanation is scored as the continuation of the excerpt and its marked token."""
    token = json.dumps(ctx["tokens"][ctx["focus"]], ensure_ascii=False)
    if scorer == "likelihood":
        return Request(f"{name}/detect{i}", "", template("score").format(excerpt=marked(ctx), token=token),
                       max_tokens=0, continuation=" " + (" ".join(explanation.split()) or "nothing"))
    return Request(f"{name}/detect{i}", template("detect_system").format(explanation=explanation),
                   template("detect_user").format(excerpt=marked(ctx), token=token), max_tokens=3, want_logprobs=True)


def answer(text: str) -> int:
    return int(text.strip().lower().startswith("yes"))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of ``predictions`` [..., n] against ``labels`` [n] (both classes present)."""
    y = np.asarray(labels, bool)
    p = np.asarray(predictions, bool)
    return 0.5 * (p[..., y].mean(-1) + (~p[..., ~y]).mean(-1))


def best_threshold(labels, scores) -> float:
    """The cut-off c on ``scores`` (predict "Yes" where score > c) with the best balanced accuracy;
    the middle one where several tie. Midpoints between observed scores, and below all of them."""
    s = np.unique(np.asarray(scores, float))
    cuts = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2])
    acc = balanced_accuracy(labels, np.asarray(scores, float)[None, :] > cuts[:, None])
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(cuts[best[len(best) // 2]])


def unit_scores(labels: list[int], predictions: list[int] | None, scores: list[float] | None,
                threshold: float | None) -> dict:
    """Balanced accuracy and F1 of the answers as given (none from a likelihood judge, which
    answers nothing) and, with scores, balanced accuracy at ``threshold`` and AUC."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(labels)
    out = {"n": int(len(y)), "balanced_accuracy": None, "balanced_accuracy_calibrated": None, "threshold": threshold,
           "f1": None, "auc": None}
    if predictions is not None:
        p = np.asarray(predictions)
        out |= {"balanced_accuracy": float(balanced_accuracy(y, p)), "f1": float(f1_score(y, p, zero_division=0))}
    if scores is not None:
        out["auc"] = float(roc_auc_score(y, scores))
        if threshold is not None:
            out["balanced_accuracy_calibrated"] = float(balanced_accuracy(y, np.asarray(scores) > threshold))
    return out


def select_units(units: list[dict], n_ica: int, n_random: int) -> list[dict]:
    """``n_ica`` ICA units spread evenly over the kurtosis ranking, the SAE feature matched to each
    (the pairs), the first ``n_random`` random units, and every calibration unit."""
    ica = spread([u for u in units if u["kind"] == "ica"], n_ica)
    sae = {u["matched_to_ica"]: u for u in units if u["kind"] == "sae"}
    missing = [u["id"] for u in ica if u["id"] not in sae]
    if missing:
        raise UserError(f"ICA components {missing[:5]} have no density-matched SAE feature in the examples; "
                        "rerun the examples stage")
    calibration = [u for u in units if u["kind"] == "calibration"]
    if not calibration:
        raise UserError("the examples hold no calibration units (token classes of known meaning); rerun the examples "
                        "stage (`dvc repro examples@<run>`)")
    return ica + [sae[u["id"]] for u in ica] + [u for u in units if u["kind"] == "random"][:n_random] + calibration


def scorings(units: list[dict], explanations: list[str]) -> list[tuple[str, str, dict, str]]:
    """(row name, group, unit, explanation) for each detection run: every unit with the judge's
    explanation; each calibration unit again with its true one (``calibration_given``: the
    ceiling) and with the next calibration unit's true one (``calibration_shuffled``: the same
    contexts, a wrong explanation; a judge that reads the explanation falls to chance there, one
    that reacts to the excerpt alone does not)."""
    out = [(unit_name(u), u["kind"], u, e) for u, e in zip(units, explanations)]
    calibration = [u for u in units if u["kind"] == "calibration"]
    out += [(f"{unit_name(u)}/given", "calibration_given", u, u["explanation"]) for u in calibration]
    if len(calibration) > 1:
        out += [(f"{unit_name(u)}/shuffled", "calibration_shuffled", u, calibration[(i + 1) % len(calibration)]["explanation"])
                for i, u in enumerate(calibration)]
    return out


def thresholds(records: dict[str, dict], rows: list[tuple[str, str, dict, str]]) -> dict[str, float | None]:
    """The cut-off per row, chosen on the calibration units given their true explanations: for a
    calibration row, on the *other* calibration units (so its own score is out of sample)."""
    given = {unit_name(u): records[name] for name, group, u, _ in rows if group == "calibration_given"}
    if any(s is None for rec in given.values() for s in rec["score"]):
        return dict.fromkeys((name for name, *_ in rows), None)

    def fit(exclude: str | None) -> float:
        kept = [rec for unit, rec in given.items() if unit != exclude]
        return best_threshold(np.concatenate([r["labels"] for r in kept]), np.concatenate([r["score"] for r in kept]))

    everyone = fit(None)
    return {name: fit(unit_name(u)) if u["kind"] == "calibration" and len(given) > 1 else everyone
            for name, _, u, _ in rows}


def run(units: list[dict], explainer: CachedLLM, detector: CachedLLM, cfg) -> tuple[list[dict], dict]:
    """Explain every unit (``explainer``), then score each explanation by detection (``detector``)."""
    explanations = [r.text for r in explainer.run([explain_request(u, cfg.explain_top) for u in units], desc="explain")]
    rows = scorings(units, explanations)
    requests, owners = [], []
    for name, group, u, explanation in rows:
        n_pos, n_neg = ((cfg.calibration_contexts,) * 2 if group in CEILING_GROUPS
                        else (cfg.detect_positives, cfg.detect_negatives))
        for i, (ctx, label) in enumerate(detection_set(u, n_pos, n_neg)):
            requests.append(detect_request(name, explanation, ctx, i, cfg.scorer))
            owners.append((name, label))
    answers = detector.run(requests, desc="detect")
    likelihood = cfg.scorer == "likelihood"  # a likelihood judge scores, it does not answer
    records = {name: {"labels": [], "pred": None if likelihood else [], "score": []} for name, *_ in rows}
    for (name, label), resp in zip(owners, answers):
        rec = records[name]
        rec["labels"].append(label)
        if likelihood:
            rec["score"].append(resp.logprobs["continuation"])
        else:
            rec["pred"].append(answer(resp.text))
            rec["score"].append(None if resp.logprobs is None else resp.logprobs["yes"] - resp.logprobs["no"])
    if likelihood:
        # Centred on the unit's own detection contexts (labels unseen): an explanation's prior
        # log-probability (its length, its words) is the same on every context, and would move a
        # cut-off shared across units; the AUC within a unit does not change.
        for rec in records.values():
            rec["score"] = list(np.asarray(rec["score"]) - np.mean(rec["score"]))
    cut = thresholds(records, rows)
    out = []
    for name, group, u, explanation in rows:
        rec = records[name]
        scores = [float(x) for x in rec["score"]] if all(x is not None for x in rec["score"]) else None
        out.append({"unit": name, "kind": group, "stable": u.get("stable"), "explanation": explanation,
                    **unit_scores(rec["labels"], rec["pred"], scores, cut[name])})
    return out, summarise(out, units, cfg)


#: The metrics of a group; the tests run on those with a score behind them.
METRICS = ("balanced_accuracy", "balanced_accuracy_calibrated", "f1", "auc")


def summarise(rows: list[dict], units: list[dict], cfg) -> dict:
    """Group means with CIs; ICA vs SAE paired, everything else against the random units; and
    whether the judge separates calibration units (explained by itself) from random ones, which
    decides whether the groups may be ranked at all."""
    rng = np.random.default_rng(cfg.seed)
    groups = {k: [r for r in rows if r["kind"] == k] for k in GROUPS}
    groups["ica_stable"] = [r for r in rows if r["kind"] == "ica" and r["stable"]]
    summary = {}
    for name, rs in groups.items():
        entry = {"n_units": len(rs), "contexts_per_unit": int(np.median([r["n"] for r in rs])) if rs else None}
        for metric in METRICS:
            values = [r[metric] for r in rs if r[metric] is not None]
            entry[metric] = mean_with_ci(values, cfg.n_bootstrap, rng) if values else None
        summary[name] = entry
    by_unit = {r["unit"]: r for r in rows}
    pairs = [(u["id"], u["matched_sae_feature"]) for u in units if u["kind"] == "ica"]
    scored = [m for m in ("auc", "balanced_accuracy_calibrated") if all(r[m] is not None for r in rows)] or ["balanced_accuracy"]
    tests = {}
    for metric in scored:
        values = {g: np.array([r[metric] for r in rs]) for g, rs in groups.items()}
        tests[metric] = {
            "ica_vs_sae": paired_difference(np.array([by_unit[f"ica-{i}"][metric] for i, _ in pairs]),
                                            np.array([by_unit[f"sae-{f}"][metric] for _, f in pairs]), cfg.n_bootstrap, rng),
            **{f"{g}_vs_random": unpaired_difference(values[g], values["random"], cfg.n_bootstrap, rng)
               for g in ("ica", "sae", "calibration", "calibration_given")}}
        if groups["calibration_shuffled"]:
            tests[metric]["given_vs_shuffled"] = paired_difference(
                np.array([by_unit[f"{r['unit'].rsplit('/', 1)[0]}/given"][metric] for r in groups["calibration_shuffled"]]),
                np.array([r[metric] for r in groups["calibration_shuffled"]]), cfg.n_bootstrap, rng)
    gate = tests[scored[0]]["calibration_vs_random"]
    sees = gate["ci"] is not None and gate["ci"][0] > 0 and gate["p_permutation"] < 0.05
    return {"groups": summary, "tests": tests, "primary_metric": scored[0], "judge_separates_calibration": bool(sees)}


GROUP_LABELS = {"ica": "ICA", "sae": "SAE\n(matched)", "random": "random", "calibration": "calibration\n(judge expl.)",
                "calibration_given": "calibration\n(true expl.)",
                "calibration_shuffled": "calibration\n(wrong expl.)"}
METRIC_LABELS = {"auc": "detection AUC", "balanced_accuracy_calibrated": "balanced accuracy (calibrated cut-off)",
                 "balanced_accuracy": "detection balanced accuracy"}


def plot(rows: list[dict], metric: str, out_dir: Path) -> None:
    """Per-unit ``metric`` by group, with group means; chance at 0.5."""
    from darkmatter.figures import save_figure, subplots

    fig, ax = subplots(figsize=(5.4, 3.0))
    for i, kind in enumerate(GROUPS):
        values = [r[metric] for r in rows if r["kind"] == kind]
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(values))
        ax.scatter(np.full(len(values), i) + jitter, values, s=8, alpha=0.6)
        if values:
            ax.plot([i - 0.3, i + 0.3], [np.mean(values)] * 2, color="k")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(GROUPS)), [GROUP_LABELS[g] for g in GROUPS], fontsize=7)
    ax.set_ylabel(METRIC_LABELS[metric])
    save_figure(fig, out_dir / "autointerp")


def local_judges(cfg) -> bool:
    """Whether the responses are (or were, for a replay) the offline judges' own."""
    return cfg.backend == "local" or (cfg.backend == "replay" and cfg.replay_of == "local")


def make_llms(cfg, cache_dir: Path, judges: Path) -> tuple[CachedLLM, CachedLLM]:
    """The explainer and the detection judge over one response cache (one object when they are
    the same model). Each request's key holds its model, so the two never share an entry."""
    from darkmatter import hardware
    from darkmatter.config import LOCAL_JUDGES
    from darkmatter.interp.llm import (AnthropicBackend, LocalBackend, LocalPrompts, ReplayBackend, ResponseCache,
                                       anthropic_params)
    from darkmatter.interp.openai_backend import OpenAIBackend, openai_params

    if chosen_by_cpu(cfg):
        raise ValueError("make_llms needs the judges resolved: pass judges.resolve(cfg, cpu_flags())")
    if cfg.backend == "local" and cfg.local_numerics == "bfloat16" and not hardware.has_bf16_units(hardware.cpu_flags()):
        raise UserError("autointerp.local_numerics is bfloat16, but this CPU has no bf16 units (amx_bf16 or avx512_bf16 "
                        "in /proc/cpuinfo), where bfloat16 runs slower than float32; set autointerp.local_numerics: float32")
    for name in judge_names(cfg) if local_judges(cfg) else ():
        if not (judges / name).is_dir():
            raise UserError(f"judge {name} is not prepared in {judges}: `auto` picks the judge by the CPU, and the "
                            f"judge_model stage ran where it picked another; run `dvc repro -f judge_model`")
    cache = ResponseCache(cache_dir)

    def backend(name: str):
        if cfg.backend == "anthropic":
            return AnthropicBackend(cfg.model, base_url=cfg.base_url, max_retries=cfg.max_retries)
        if cfg.backend == "openai":
            return OpenAIBackend(cfg.model, base_url=cfg.base_url, max_retries=cfg.max_retries)
        if cfg.backend == "local":
            return LocalBackend(LOCAL_JUDGES[name], judges / name, numerics=cfg.local_numerics)
        if cfg.replay_of == "anthropic":
            return ReplayBackend(cfg.model, "anthropic", lambda req: anthropic_params(cfg.model, req))
        if cfg.replay_of == "openai":
            return ReplayBackend(cfg.model, "openai", lambda req: openai_params(cfg.model, req))
        prompts = LocalPrompts(judges / name)
        return ReplayBackend(LOCAL_JUDGES[name], "local", lambda req: prompts.payload(LOCAL_JUDGES[name], req, cfg.local_numerics))

    def llm(b) -> CachedLLM:
        return CachedLLM(b, cache, concurrency=cfg.concurrency if cfg.backend in REMOTE else 1,
                         use_batches=cfg.use_batches)

    detector = llm(backend(cfg.local_model))
    same = cfg.backend in REMOTE or (cfg.backend == "replay" and cfg.replay_of in REMOTE) \
        or cfg.local_explainer == cfg.local_model
    return (detector if same else llm(backend(cfg.local_explainer))), detector


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.hardware import cpu_flags

    parser = argparse.ArgumentParser(description="Explain and detection-score ICA components vs SAE features vs random directions.")
    add_run_arguments(parser)
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="response cache directory (DVC, persist)")
    parser.add_argument("--judges", type=Path, default=Path("data/models/judges"),
                        help="prepared local judges, one folder per name (the judge_model stage)")
    parser.add_argument("--out", type=Path, required=True, help="per-unit results JSON")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--figures", type=Path, required=True)
    args = parser.parse_args(argv)
    asked, flags = run_from_args(args).autointerp, cpu_flags()
    cfg = resolve(asked, flags)
    if not args.examples.exists():
        raise UserError(f"{args.examples} not found; run the examples stage first")
    units = select_units(json.loads(args.examples.read_text())["units"], cfg.n_ica_units, cfg.n_random_units)
    explainer, detector = make_llms(cfg, args.cache, args.judges)
    local = local_judges(cfg)
    start = time.perf_counter()
    rows, summary = run(units, explainer, detector, cfg)
    llms = {"explainer": explainer, "detector": detector}
    recorded = {k: sum(llm.recorded[k] for llm in set(llms.values())) for k in TOKEN_KINDS}
    report = {"backend": cfg.backend if cfg.backend != "replay" else f"replay of {cfg.replay_of}",
              "model": detector.backend.model, "explainer": explainer.backend.model, "scorer": cfg.scorer,
              # the local judges' arithmetic (autointerp.local_numerics); None for a judge behind an API
              "numerics": cfg.local_numerics if local else None,
              # the CPU flag that resolved `auto` local judge settings; None where params named them
              "chosen_by_cpu": (AUTO_FLAG if AUTO_FLAG in flags else f"no {AUTO_FLAG}")
              if local and chosen_by_cpu(asked) else None,
              **summary,
              "usage": {role: llm.stats for role, llm in llms.items()},
              "cost_usd": sum_costs(llm.cost_usd() for llm in set(llms.values())),
              # What the responses cost when first made (equal to usage on a run with no cache hits).
              "usage_recorded": recorded,
              "cost_usd_recorded": sum_costs(llm.cost_usd(llm.recorded) for llm in set(llms.values())),
              "tokens_per_unit": (recorded["input_tokens"] + recorded["output_tokens"]) / max(len(units), 1),
              "seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, summary["primary_metric"], args.figures)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("backend", "model", "explainer", "scorer", "usage", "cost_usd", "seconds",
                                             "judge_separates_calibration")}
                     | {"groups": {k: v[summary["primary_metric"]] for k, v in report["groups"].items()}}, indent=2))


if __name__ == "__main__":
    main()
