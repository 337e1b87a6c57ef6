"""The paper's generated files: metrics JSON + ``paper/sections`` templates -> ``paper/generated/*.tex``
(the ``paper_tables`` stage).

From the metrics files alone (``metrics/runs/<run>/``, the main run's and whatever other runs
exist, and ``metrics/sae_axes.json``), each generated file is its template under
``paper/sections`` rendered with a context from :mod:`darkmatter.paper.context` (one module per
section: numbers formatted by :mod:`darkmatter.paper.format`, verdicts as keys whose wordings
the templates hold; :mod:`darkmatter.paper.templates`):

- ``macros.tex``: a ``\\dm...`` command for every number the prose quotes, and the
  data-dependent words (``\\dmNovelVerdict`` is "exceeds" or "does not exceed", ...), worded by the
  ``macros_*.tex.j2`` templates from verdicts computed here, so the text never claims more than
  the metrics show;
- booktabs tables (``tab_*.tex``); rows whose run has no metrics say "not run";
- ``sec_*.tex`` for the later experiments (autointerp, probes, causal): their results when
  their metrics exist, otherwise a paragraph saying the experiment was not run in this build;
- ``provenance.tex``: the stage behind each figure and table (:mod:`darkmatter.paper.provenance`).

Every verdict is worded from a p-value adjusted for the paper's whole family of verdict tests
(:class:`darkmatter.paper.format.Family`): the files are rendered twice, the first pass collecting the
family, the second wording each verdict from its adjusted p (``tab_family.tex`` lists them).

Every output is rewritten on each run, so a number from an older run can never survive. A
missing required metrics file stops generation with one line naming the stage to run, before
anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from darkmatter.errors import UserError, cli
from darkmatter.paper import context
from darkmatter.paper.context.headline import MODEL_NAMES, REQUIRED
from darkmatter.paper.format import FAMILY, Family, tex_escape
from darkmatter.paper.provenance import (RECORDER, Recorder, included_figures, note_absent, provenance_tex, read_lock,
                                         resolve_figure, track)
from darkmatter.paper.templates import SECTIONS, Templates

#: Metrics the paper words as "not run" when absent (the later experiments, and the ellipticity test).
LATER = ("autointerp", "probes", "causal", "ellipticity")
#: Committed bench results the paper quotes (repository-relative): measured outside ``dvc repro``, labelled so.
DETECTION = "bench/detection.json"
K_SWEEP = "bench/k_sweep.json"
BENCH_RESULTS = (DETECTION, K_SWEEP)


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


# ---- macros and the runs of the tables --------------------------------------------------------

def macros(templates: Templates, params, main: dict, corpus: dict, ladder: list, axes: dict,
           limits: dict | None = None, ks: dict | None = None) -> dict[str, str]:
    """Every ``\\dm`` macro: the numbers, and the wordings the ``macros_*.tex.j2`` templates choose."""
    ev, train = main["sae_eval"], main["sae"]
    numbers = {**context.headline.macro_numbers(main, params.main, corpus), **context.headline.ladder_numbers(ladder),
               **context.instrument.macro_numbers(ev, train, axes), **family_numbers()}
    words = {**templates.words("macros_headline.tex.j2", context.headline.macro_context(main, limits, ks)),
             **templates.words("macros_instrument.tex.j2", context.instrument.macro_context(ev, train, axes))}
    both = sorted(numbers.keys() & words.keys())
    if both:
        raise ValueError(f"macros {both} are defined both as numbers and in a template; keep one")
    return numbers | words


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






def family(recorder: Recorder | None = None) -> Family:
    """The verdict family of this render: complete on the second pass, still collecting (empty) on the first.
    ``recorder`` notes the metrics files its tests come from as read (the family table's provenance)."""
    current = FAMILY.get()
    if not current.complete:
        return Family().adjusted()
    if recorder is not None:
        for key, _, _ in current.members():
            recorder.read(key.split(": ", 1)[0], (), True)
    return current


def family_numbers() -> dict[str, str]:
    return context.family.macro_numbers(family())


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
    templates = Templates(sections or metrics_root.resolve().parent / SECTIONS)
    # Pass 1 collects the family of verdict tests (its reads go to a scratch recorder); pass 2 words
    # every verdict from the family's adjusted p-values (format.Family).
    collected = Family()
    for scratch, verdicts in ((Recorder(), collected), (recorder, None)):
        token, family_token = RECORDER.set(scratch), FAMILY.set(verdicts or collected.adjusted())
        try:
            files = _render(params, metrics_root, scratch, templates)
        finally:
            RECORDER.reset(token)
            FAMILY.reset(family_token)
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
        # Bench results the paper quotes, committed (not stage outputs: too slow for the default build).
        limits, ks = (track(json.loads(path.read_text()), name) if (path := metrics_root.resolve().parent / name).exists()
                      else None for name in (DETECTION, K_SWEEP))
    builders = {
        "macros.tex": lambda: templates.render("macros.tex.j2", {"macros": macros(templates, params, main, corpus, ladder,
                                                                                  axes, limits, ks)}),
        "tab_dark_matter.tex": lambda: templates.render("tab_dark_matter.tex.j2", context.tables.dark_matter(main["residual"])),
        "tab_compare.tex": lambda: templates.render("tab_compare.tex.j2", context.tables.compare(main["compare"])),
        "tab_ladder.tex": lambda: templates.render("tab_ladder.tex.j2", context.tables.ladder(
            MODEL_NAMES.get(params.main.model.name, params.main.model.name), main, [*controls, *ladder])),
        "tab_layers.tex": lambda: templates.render("tab_layers.tex.j2", context.tables.layers(layer_runs(params, metrics_root))),
        "tab_sae.tex": lambda: templates.render("tab_sae.tex.j2", context.instrument.axes_table(axes, main["sae_eval"], main["sae"])),
        "tab_chain.tex": lambda: templates.render("tab_chain.tex.j2", context.instrument.chain_table(axes)),
        "tab_splice.tex": lambda: templates.render("tab_splice.tex.j2", context.instrument.splice_table(main["sae_eval"])),
        "tab_family.tex": lambda: templates.render("tab_family.tex.j2", context.family.table(family(recorder))),
        "tab_autointerp.tex": lambda: templates.render("tab_autointerp.tex.j2",
                                                       context.autointerp.autointerp_table(main["autointerp"])),
        "sec_autointerp.tex": lambda: section("autointerp", main["autointerp"], context.autointerp.autointerp),
        "sec_causal.tex": lambda: section("causal", main["causal"], context.causal.causal),
        "tab_causal.tex": lambda: section("causal", main["causal"], context.causal.causal_table, table=True),
        "sec_probes.tex": lambda: section("probes", main["probes"], context.probes.probes),
        "tab_probes.tex": lambda: section("probes", main["probes"], context.probes.probes_table, table=True),
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
