"""The paper's numbers: metrics JSON -> ``paper/generated/*.tex`` (the ``paper_tables`` stage).

From the metrics files alone (``metrics/runs/<run>/``, the main run's and whatever other runs
exist), this writes:

- ``macros.tex``: a ``\\dm...`` command for every number the prose quotes, and the
  data-dependent words (``\\dmNovelVerdict`` is "exceeds" or "does not exceed", ...), chosen
  here from the numbers so the text never claims more than the metrics show;
- booktabs tables (``tab_*.tex``); rows whose run has no metrics say "not run";
- ``sec_*.tex`` for the later experiments (autointerp, probes, causal): their results when
  their metrics exist, otherwise a paragraph saying the experiment was not run in this build.

All formatting and rounding lives in :mod:`darkmatter.paper.format`. Every output is rewritten
on each run, so a number from an older run can never survive. A missing required metrics file
stops generation with one line naming the stage to run, before anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from darkmatter.errors import UserError, cli
from darkmatter.paper.format import ci_word, fmt_about, fmt_ci, fmt_count, fmt_fixed, fmt_p, fmt_pct, fmt_sci, fmt_sig, p_word, table
from darkmatter.paper.provenance import (RECORDER, Recorder, included_figures, note_absent, provenance_tex, read_lock,
                                         resolve_figure, track)
from darkmatter.paper.templates import SECTIONS, Templates
from darkmatter.stats import CI_LEVEL
from darkmatter.paper import context
import darkmatter.paper.context.autointerp  # noqa: F401
import darkmatter.paper.context.causal  # noqa: F401
import darkmatter.paper.context.headline  # noqa: F401
import darkmatter.paper.context.instrument  # noqa: F401
import darkmatter.paper.context.tables  # noqa: F401

REQUIRED = ("activations", "sae", "sae_eval", "residual", "ica", "compare")
LATER = ("autointerp", "probes", "causal")
MODEL_NAMES = {"gemma-3-270m": "Gemma 3 270M", "smollm2-135m": "SmolLM2 135M"}
NOT_RUN = "\\textit{not run}"
PLANNED = "\\textit{planned}"


# ---- inputs ---------------------------------------------------------------------------------

def read_run(metrics_dir: Path, required: bool) -> dict | None:
    """The metrics of one run, ``metrics_dir`` = ``metrics/runs/<run>`` (``None`` if absent and not required)."""
    out = {}
    for name in REQUIRED:
        path = metrics_dir / f"{name}.json"
        if not path.exists():
            if required:
                stage = {"sae_eval": "eval_sae"}.get(name, name)
                raise UserError(f"{path} is missing; run `dvc repro {stage}@{metrics_dir.name}` before generating the paper")
            return None
        out[name] = track(json.loads(path.read_text()), _source(path))
    for name in LATER:
        path = metrics_dir / f"{name}.json"
        out[name] = track(json.loads(path.read_text()), _source(path)) if path.exists() else note_absent(_source(path))
    return out


def _source(path: Path) -> str:
    """A metrics file's path as dvc.lock names it (``metrics/runs/<run>/<name>.json``)."""
    return "metrics/" + "/".join(path.parts[path.parts.index("runs"):] if "runs" in path.parts else path.parts[-1:])


# ---- macros and tables ------------------------------------------------------------------------

def macros(templates: Templates, params, main: dict, corpus: dict, ladder: list, axes: dict) -> dict[str, str]:
    """Every ``\\dm`` macro: the numbers, and the wordings the ``macros_*.tex.j2`` templates choose."""
    ev, train = main["sae_eval"], main["sae"]
    numbers = {**context.headline.macro_numbers(main, params.main, corpus), **context.headline.ladder_numbers(ladder),
               **context.instrument.macro_numbers(ev, train, axes)}
    words = {**templates.words("macros_headline.tex.j2", context.headline.macro_context(main)),
             **templates.words("macros_instrument.tex.j2", context.instrument.macro_context(ev, train, axes))}
    both = sorted(numbers.keys() & words.keys())
    if both:
        raise ValueError(f"macros {both} are defined both as numbers and in a template; keep one")
    return numbers | words


def tex_escape(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")


def ladder_rows(params, metrics_root: Path) -> list[tuple[str, dict, dict | None | str]]:
    """(label, SAE, metrics) per run definition with a pretrained SAE: metrics, None (not run) or "planned"."""
    rows = []
    for name, d in params.run_definitions.items():
        if d.sae.source != "pretrained":
            continue
        sae = {"release": tex_escape(d.sae.release), "sae_id": tex_escape(d.sae.sae_id)}
        found = "planned" if d.planned else read_run(metrics_root / "runs" / name, False)
        rows.append((tex_escape(d.label), sae, found))
    return rows


def control_rows(params, metrics_root: Path) -> list[tuple[str, None, dict | None]]:
    """(label, None: an SAE trained here, metrics or None) per run definition of a random-weights control model."""
    from darkmatter.config import MODELS

    return [(tex_escape(d.label), None, read_run(metrics_root / "runs" / name, False))
            for name, d in params.run_definitions.items() if MODELS[d.subject.model].random_weights_seed is not None]




def ci_cell(entry: dict | None, digits: int = 2, no_ci: str = "(too few)") -> str:
    """``mean [lo, hi]`` of a ``mean_with_ci`` entry (``no_ci`` in place of the interval when there
    is none); ``--`` when missing."""
    if not entry or entry.get("mean") is None:
        return "--"
    return f"{fmt_fixed(entry['mean'], digits)} {fmt_ci(entry['ci'], digits) if entry['ci'] else no_ci}".strip()


# ---- dataset-geometry probes ----------------------------------------------------------------

def _mean_ci(entry: dict | None, digits: int = 3) -> str:
    return ci_cell(entry, digits, no_ci="")


def _at_least(entry: dict, threshold: str = "0.85") -> str:
    t = entry["at_least"][threshold]
    return f"{t['count']}/{entry['n']}" + (f" {fmt_ci(t['ci'], 2)}" if t["ci"] else "")


def probes_table(p: dict | None) -> str:
    """Experiment 1 (probe and controls) and 2 (map, baseline vs residual SAE) per layer, next to the seed."""
    if p is None:
        return table("l", ["probes stage not run"], [])
    layers = list(p["layers"])
    seed = p["seed_claims"]
    header = ["", *(f"layer {layer}" for layer in layers), "seed (Gemma 2 2B, L20)"]

    def row(label: str, cell, seed_cell: str = "--") -> list[str]:
        return [label, *(cell(p["layers"][layer]) for layer in layers), seed_cell]

    def e1(key: str):
        return lambda entry: _mean_ci(entry["experiment1"]["controls"].get(key))

    rows = [
        row("probe on layer 0 (seen types)", lambda e: _mean_ci(e["experiment1"]["probe"]), fmt_fixed(seed["probe_mean_accuracy"], 4)),
        row(r"\quad features $\geq$ 85\%", lambda e: _at_least(e["experiment1"]["probe"]),
            f"{seed['at_least']['0.85']}/{seed['probed']}"),
        row("probe, held-out token types", e1("unseen_probe")),
        row("token-id lookup", e1("token_lookup")),
        row("previous + current token lookup", e1("context_lookup")),
        row("position only", e1("position")),
        row("shuffled labels", e1("shuffled")),
        None,
        row("affine map: held-out $R^2$", lambda e: fmt_fixed(e["experiment2"]["map"]["r2"]["fve"], 3), fmt_fixed(seed["map_r2"], 4)),
        row(r"\quad per-dimension mean $R^2$", lambda e: fmt_fixed(e["experiment2"]["map"]["r2"]["uniform"], 3)),
        row("per-token means: held-out $R^2$", lambda e: fmt_fixed(e["experiment2"]["map"]["r2_token_mean"]["fve"], 3)),
        row("SAE on activations: probe", lambda e: _mean_ci(e["experiment2"]["baseline"]["probe"]),
            fmt_fixed(seed["baseline_sae_mean_accuracy"], 4)),
        row("SAE on residual: probe", lambda e: _mean_ci(e["experiment2"]["residual"]["probe"]),
            fmt_fixed(seed["residual_sae_mean_accuracy"], 4)),
        row("residual $-$ activations (paired)", lambda e: _difference(e["experiment2"]["residual_minus_baseline"]),
            fmt_fixed(seed["residual_sae_mean_accuracy"] - seed["baseline_sae_mean_accuracy"], 3) + " (no test)"),
    ]
    return table("l" + "r" * (len(layers) + 1), header, rows)


def _difference(test: dict) -> str:
    if test["difference"] is None:
        return "--"
    return f"{fmt_fixed(test['difference'], 3)} {fmt_ci(test['ci'], 3) if test['ci'] else ''}, $p={fmt_p(test['p_permutation'])}$"


def probes_section(p: dict | None) -> str:
    """Results prose for the probes stage, worded from its intervals."""
    if p is None:
        return not_run_section("probes")
    d = p["data"]
    layers = list(p["layers"])
    first = p["layers"][layers[0]]["experiment1"]
    seed = p["seed_claims"]
    layer0 = ("In Gemma, layer 0 (\\texttt{blocks.0.hook\\_resid\\_pre}) is the scaled token embedding, a function of the "
              "token id alone, so a probe on it can recover at most a function of the token, and many SAE features are "
              "largely unigram features~\\citep{dooms2025tokenized}. " if p["layer0_is_token_function"] else
              "Here layer 0 holds the token and position embeddings, a function of the token and its position. ")
    parts = [
        "% Generated by darkmatter.paper from the probes metrics.\n",
        f"Seed plan 002 claims that layer-20 Gemma Scope features of Gemma 2 2B are {fmt_pct(seed['probe_mean_accuracy'], 2)} "
        f"predictable from layer-0 embeddings by logistic probes ({seed['at_least']['0.85']} of {seed['probed']} probed features "
        f"at $\\geq$85\\%), that an affine layer-0$\\to$20 map has $R^2={fmt_fixed(seed['map_r2'], 2)}$, and that an SAE trained on "
        f"that map's residual has less predictable features ({fmt_pct(seed['residual_sae_mean_accuracy'], 2)} against "
        f"{fmt_pct(seed['baseline_sae_mean_accuracy'], 2)}), read there as proof of emergence. Those are the seed's numbers, not "
        f"measurements of this paper; its run definition is in the ladder. {layer0}"
        f"We repeat both experiments with controls (Table~\\ref{{tab:probes}}, Figure~\\ref{{fig:probes}}): "
        f"{fmt_count(d['rows_train'])} training rows drawn from the cache's train rows and {fmt_count(d['rows_val'])} validation "
        f"rows from its held-out rows ({fmt_count(d['tokens_train'])} and {fmt_count(d['tokens_val'])} tokens of seen types; "
        f"special tokens out); {fmt_count(d['heldout_types'])} of the {fmt_count(d['token_types'])} token types present never "
        f"enter any probe's training and give the held-out-type evaluation ({fmt_count(d['tokens_unseen_types'])} tokens). Per SAE, "
        f"a seeded sample of features with enough positives (run SAE: {fmt_count(first['features']['probed'])} of "
        f"{fmt_count(first['features']['eligible'])} eligible; {fmt_count(first['features']['dead'])} of "
        f"{fmt_count(first['features']['width'])} never fire on these tokens and {fmt_count(first['features']['too_few_positives'])} "
        "have too few positives), balanced active against inactive, gets an L2 logistic probe on standardised layer 0; "
        "every control uses the same examples. Accuracies are balanced (chance 0.5), intervals bootstrap over features.\n\n",
    ]
    for layer in layers:
        e1 = p["layers"][layer]["experiment1"]
        c, t = e1["controls"], e1["tests"]
        verb = ci_word(t["probe_minus_token_lookup"], "exceeds", "falls below", "does not exceed")
        unseen = c["unseen_probe"]
        beyond = ("so the embedding's geometry carries part of the prediction beyond memorised identity"
                  if unseen.get("ci") and unseen["ci"][0] > 0.5 else
                  "no evidence that the probe predicts beyond memorised identity")
        not_conv = (f" Probes that did not converge: features {', '.join(map(str, e1['not_converged']))}."
                    if e1["not_converged"] else "")
        whose = "the run's SAE" if p["layers"][layer]["sae"] == "run" else "an SAE trained here"
        share = (c["token_lookup"]["mean"] - 0.5) / (e1["probe"]["mean"] - 0.5) if e1["probe"]["mean"] > 0.5 else None
        share_words = (f" The token-id lookup alone reaches {fmt_pct(share, 0)} of the probe's margin over chance."
                       if share is not None else "")
        parts.append(
            f"At layer {layer} ({whose}) the probe reaches {_mean_ci(e1['probe'])} "
            f"({_at_least(e1['probe'])} features $\\geq$85\\%; train / validation log-loss "
            f"{fmt_fixed(e1['train_loss']['mean'], 2)} / {fmt_fixed(e1['val_loss']['mean'], 2)}), and the token-id lookup "
            f"{_mean_ci(c['token_lookup'])} on the same examples: the probe {verb} it (paired difference "
            f"{_difference(t['probe_minus_token_lookup'])}). Adding the previous token gives {_mean_ci(c['context_lookup'])}; "
            f"position alone {_mean_ci(c.get('position'))}, shuffled labels {_mean_ci(c.get('shuffled'))}. On held-out token "
            f"types, where a lookup is at chance by construction, the probe scores {_mean_ci(unseen)} over "
            f"{fmt_count(unseen['n'])} features with enough positives there: {beyond}.{share_words}{not_conv}\n\n")
    for layer in layers:
        e2 = p["layers"][layer]["experiment2"]
        r2, diff = e2["map"]["r2"], e2["residual_minus_baseline"]
        verdict = ci_word(diff, "the residual SAE's features are more predictable from layer 0",
                          "the residual SAE's features are less predictable from layer 0",
                          "no difference is resolved")
        lookup_verdict = ci_word(e2["token_lookup_residual_minus_baseline"], "more", "less", "no more and no less")
        resid_ci = e2["residual"]["probe"].get("ci")
        above = ("Its features stay above chance, so they still depend on the token, nonlinearly. "
                 if resid_ci and resid_ci[0] > 0.5 else "")
        parts.append(
            f"Experiment 2, layer {layer}: the affine map from layer 0 ({e2['map']['solver']}, fitted on training rows) explains "
            f"{fmt_fixed(r2['fve'], 3)} of the held-out variance (mean per-dimension $R^2$ {fmt_fixed(r2['uniform'], 3)}); the "
            f"per-token means of the training tokens (a function of the id with no linearity assumed, noisy for rare ids) explain "
            f"{fmt_fixed(e2['map']['r2_token_mean']['fve'], 3)}. "
            f"SAEs trained here with the same recipe, width ({fmt_count(e2['sae']['width'])}), tokens "
            f"({fmt_count(e2['sae']['train_tokens'])}) and L0 target ({fmt_sig(e2['sae']['target_l0'], 2)}; held-out L0 "
            f"{fmt_sig(e2['baseline']['features']['l0_val'], 2)} and {fmt_sig(e2['residual']['features']['l0_val'], 2)}) on the "
            f"activations and on the map's residual give probe accuracies, over {fmt_count(diff['n'])} pairs of features matched "
            "by firing rate (a feature's density bounds how well it can be predicted), of "
            f"{_mean_ci(e2['baseline']['probe'])} and {_mean_ci(e2['residual']['probe'])}; residual minus activations, paired, "
            f"{_difference(diff)}: {verdict}. The residual SAE's features are {lookup_verdict} token-like by the lookup "
            f"({_difference(e2['token_lookup_residual_minus_baseline'])}). A lower linear predictability is what the construction "
            "makes likely, not evidence of emergence: on the training tokens the residual is uncorrelated with every linear "
            f"function of layer 0. {above}The seed's 1.3-point gap compared 30 with 100 features of SAEs trained differently, "
            "without a test.\n\n")
    return "".join(parts).rstrip() + "\n"


def not_run_section(name: str) -> str:
    """What a later experiment's section says when its metrics file does not exist."""
    title = {"autointerp": "automated interpretability", "probes": "dataset-geometry probes", "causal": "causal ablations"}[name]
    return (f"% Generated by darkmatter.paper: no metrics for {name}.\n"
            f"The {title} experiment was \\textit{{not run}} in this build: its metrics file does not exist, "
            "so this section reports nothing.\n")


# ---- stage ----------------------------------------------------------------------------------

def layer_runs(params, metrics_root: Path) -> dict[int, dict | None]:
    """The layer sweep: every listed run of the main run's model with an SAE trained here, by layer."""
    main = params.main
    same = [params.run(name) for name in params.runs]
    same = [r for r in same if r.model.name == main.model.name and r.sae_source.source == "train"]
    return {r.layer: read_run(metrics_root / "runs" / r.name, required=False) for r in sorted(same, key=lambda r: r.layer)}


def generate(params, metrics_root: Path, out: Path, recorder: Recorder | None = None,
             lock_path: Path | None = None, sections: Path | None = None) -> list[Path]:
    """Write every generated file; returns their paths. Raises before writing if inputs are missing.

    ``recorder`` (one is made if not given) collects what each file read of the metrics;
    ``provenance.tex`` maps each figure of ``paper/main.tex`` and each table to its stage in ``lock_path``
    (default: ``dvc.lock`` beside ``metrics_root``).
    """
    recorder = recorder or Recorder()
    token = RECORDER.set(recorder)
    try:
        files = _render(params, metrics_root, recorder, Templates(sections or metrics_root.resolve().parent / SECTIONS))
    finally:
        RECORDER.reset(token)
    repo_root = metrics_root.resolve().parent
    lock = read_lock(lock_path or repo_root / "dvc.lock")
    tex = [repo_root / "paper" / "main.tex"] if (repo_root / "paper" / "main.tex").exists() else []
    figures = {key: resolve_figure(key, params.main_run, repo_root) for key in included_figures(tex)}
    tables = {name.removesuffix(".tex"): sorted(recorder.files[name]) for name in files if name.startswith("tab_")}
    files["provenance.tex"] = provenance_tex(figures, tables, lock)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tex"):
        stale.unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


def _render(params, metrics_root: Path, recorder: Recorder, templates: Templates) -> dict[str, str]:
    """Each generated file's text, rendered with ``recorder`` attributing the metrics reads to it."""
    with recorder.reading("inputs"):
        main = read_run(metrics_root / "runs" / params.main_run, required=True)
        ladder = ladder_rows(params, metrics_root)
        controls = control_rows(params, metrics_root)
        axes_path = metrics_root / "sae_axes.json"
        if not axes_path.exists():
            raise UserError(f"{axes_path} is missing; run `dvc repro sae_axes` before generating the paper")
        axes = track(json.loads(axes_path.read_text()), "metrics/sae_axes.json")
        corpus_path = metrics_root / "runs" / params.main_run / "corpus.json"
        if not corpus_path.exists():
            raise UserError(f"{corpus_path} is missing; run `dvc repro corpus@{params.main_run}` before generating the paper")
        corpus = track(json.loads(corpus_path.read_text()), _source(corpus_path))
    builders = {
        "macros.tex": lambda: templates.render("macros.tex.j2", {"macros": macros(templates, params, main, corpus, ladder, axes)}),
        "tab_dark_matter.tex": lambda: templates.render("tab_dark_matter.tex.j2", context.tables.dark_matter(main["residual"])),
        "tab_compare.tex": lambda: templates.render("tab_compare.tex.j2", context.tables.compare(main["compare"])),
        "tab_ladder.tex": lambda: templates.render("tab_ladder.tex.j2", context.tables.ladder(
            MODEL_NAMES.get(params.main.model.name, params.main.model.name), main, [*controls, *ladder])),
        "tab_layers.tex": lambda: templates.render("tab_layers.tex.j2", context.tables.layers(layer_runs(params, metrics_root))),
        "tab_sae.tex": lambda: templates.render("tab_sae.tex.j2", context.instrument.axes_table(axes, main["sae_eval"], main["sae"])),
        "tab_splice.tex": lambda: templates.render("tab_splice.tex.j2", context.instrument.splice_table(main["sae_eval"])),
        "tab_autointerp.tex": lambda: templates.render("tab_autointerp.tex.j2",
                                                       context.autointerp.autointerp_table(main["autointerp"])),
        "sec_autointerp.tex": lambda: section("autointerp", main["autointerp"], context.autointerp.autointerp),
        "sec_causal.tex": lambda: section("causal", main["causal"], context.causal.causal),
        "tab_causal.tex": lambda: section("causal", main["causal"], context.causal.causal_table, table=True),
        "sec_probes.tex": lambda: probes_section(main["probes"]),
        "tab_probes.tex": lambda: probes_table(main["probes"]),
    }
    files = {}

    def section(name, metrics, build, table=False):
        """A later experiment's section or table: its template, or the "not run" one without metrics."""
        if metrics is None:
            return templates.render("tab_not_run.tex.j2" if table else "not_run.tex.j2", {"name": name})
        return templates.render(f"{'tab' if table else 'sec'}_{name}.tex.j2", build(metrics))

    for name, build in builders.items():
        with recorder.reading(name):
            files[name] = build()
    return files


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params

    parser = argparse.ArgumentParser(description="Generate the paper's tables, macros and wording from the metrics.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--out", type=Path, default=Path("paper/generated"))
    args = parser.parse_args(argv)
    files = generate(load_params(args.params), args.metrics, args.out)
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
