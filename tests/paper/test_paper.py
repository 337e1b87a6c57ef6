"""The paper: every quoted number is generated from metrics, and the PDF follows the metrics."""

import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO

from darkmatter.config import load_params
from darkmatter.errors import UserError
from darkmatter.paper.build import build
from darkmatter.paper.format import fmt_about, fmt_count, fmt_p, fmt_pct, fmt_sci, fmt_sig, p_side
from darkmatter.paper.generate import generate

#: The paper's templates (tests that copy only metrics/ render with the checkout's).
SECTIONS = REPO / "paper" / "sections"
#: Digits that may appear in hand-written LaTeX: names and definitions, never results.
ALLOWED_DIGITS = [
    r"Gemma(~| )3", r"GPT-2", r"Q4\\_K\\_M", r"float32", r"R\^2", r"\^\{-1/2\}", r"\^\{1/2\}",
    r"\[x,1\]", r"90\\%",  # "PCs for 90% of the variance" is the definition of the reported count
    r"[Pp]osition 0", r"[Ll]ayer(-|~| )0\b", r"\bL0\b", r"float64", r"\|\^2",
    r"Scope(~| )2", r"\b(270M|1B|4B|12B)\b",  # model and release names
    r"\(1\+\\#\\\{.*?\\\}\)/\(1\+B\)", r"\$1/p\$",  # the Monte-Carlo p-value formula; a sparse code's kurtosis ~1/p
    r"\\mathcal\{N\}\(0,", r"\\beta_2",  # notation: a zero-mean Gaussian, Adam's second-moment decay
]
#: Commands whose arguments are not prose (files, keys, options).
NON_PROSE = r"\\(documentclass|usepackage|includegraphics|input|cite[pt]?|label|ref|bibliography|bibliographystyle|graphicspath|begin|end)(\[[^\]]*\])?(\{[^}]*\})+"


def _prose(tex: str) -> str:
    tex = re.sub(r"(?<!\\)%.*", "", tex)
    tex = re.sub(r"\\graphicspath\{.*?\}\}", "", tex)
    return re.sub(NON_PROSE, "", tex)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of paper/, figures/ and metrics/ that tests may modify."""
    root = tmp_path_factory.mktemp("paper")
    for name in ("paper", "figures", "metrics"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("main.pdf", "generated"))
    return root


def _generate_and_build(root):
    params = load_params(REPO / "params.yaml")
    generate(params, root / "metrics", root / "paper" / "generated")
    pdf = build(root / "paper")
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def test_every_macro_in_the_text_is_generated(workspace):
    generate(load_params(REPO / "params.yaml"), workspace / "metrics", workspace / "paper/generated")
    generated = [workspace / "paper/generated" / name for name in ("macros.tex", "provenance.tex")]
    defined = {m for path in generated for m in re.findall(r"\\newcommand\{\\(dm[A-Za-z]+)\}", path.read_text())}
    main_tex = (REPO / "paper/main.tex").read_text()
    defined |= set(re.findall(r"\\providecommand\{\\(dm[A-Za-z]+)\}", main_tex))  # the commit, set by the build
    used = set(re.findall(r"\\(dm[A-Za-z]+)", main_tex))
    assert used and used <= defined, f"undefined: {sorted(used - defined)}"


def test_no_number_is_typed_by_hand():
    prose = _prose((REPO / "paper/main.tex").read_text())
    for pattern in ALLOWED_DIGITS:
        prose = re.sub(pattern, "", prose)
    typed = re.findall(r".{0,30}\d.{0,30}", prose)
    assert not typed, f"numbers typed in main.tex: {typed}"


def test_pdf_follows_the_metrics(workspace):
    text = _generate_and_build(workspace)
    residual = json.loads((workspace / "metrics/runs/gemma-3-270m-l9/residual.json").read_text())
    assert f"{residual['dark_matter_fraction']:.3f}" in text
    assert "not run" in text, "ladder rows without metrics say so"

    old = residual["dark_matter_fraction"]
    residual["dark_matter_fraction"] = 0.4321
    (workspace / "metrics/runs/gemma-3-270m-l9/residual.json").write_text(json.dumps(residual))
    compare = json.loads((workspace / "metrics/runs/gemma-3-270m-l9/compare.json").read_text())
    for novel in [compare["rotation_null"]["novel_fraction"], *(f["novel_fraction"] for f in compare["ica_fits"])]:
        novel["p_more"], novel["p_fewer"] = 0.001, 0.999  # as if every ICA fit found more novel directions than rotations do
    gap = compare["kurtosis_gap"]["like_for_like"]
    gap["difference"], gap["ci"] = -1.5, [-2.0, -1.0]  # and SAE pre-activations lighter-tailed than the sources
    (workspace / "metrics/runs/gemma-3-270m-l9/compare.json").write_text(json.dumps(compare))
    changed = " ".join(_generate_and_build(workspace).split())
    assert "0.432" in changed and f"{old:.3f}" not in changed.split("FVU")[0]
    assert "exceeds what random rotations of the same whitened space give" in changed, "the wording follows the numbers"
    assert "so they are less heavy-tailed than the ICA sources" in changed, "... and their uncertainty"


def test_a_ladder_row_appears_when_its_metrics_exist(workspace, tmp_path):
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    rows = {line.split(" & ")[0]: line for line in (out / "tab_ladder.tex").read_text().splitlines() if " & " in line}
    assert "not run" in rows["GPT-2 small"] and "planned" in rows["Gemma 3 12B (262k)"]
    assert "\\newcommand{\\dmLadderDone}{0}" in (out / "macros.tex").read_text()

    shutil.copytree(metrics / "runs/gemma-3-270m-l9", metrics / "runs/gpt2-small")
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    rows = {line.split(" & ")[0]: line for line in (out / "tab_ladder.tex").read_text().splitlines() if " & " in line}
    assert "not run" not in rows["GPT-2 small"] and "not run" in rows["Gemma 3 1B (16k)"]
    assert "\\newcommand{\\dmLadderDone}{1}" in (out / "macros.tex").read_text()


def test_ica_verdicts_are_stated_only_where_every_fit_agrees(workspace, tmp_path):
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    path = metrics / "runs/gemma-3-270m-l9/compare.json"
    compare = json.loads(path.read_text())

    def fit(name, p_closer):
        return {"fit": name, "median_max_cos": {"p_closer": p_closer, "p_farther": 1 - p_closer},
                "novel_fraction": {"p_more": 0.4, "p_fewer": 0.6},
                "ica_vs_random_whitened": {"difference": 0.2, "ci": [0.1, 0.3]}}

    # strong enough to survive the family's adjustment (two-sided 0.001 and 0.002 among ~50 tests)
    compare["ica_fits"] = [fit("reference", 0.0005), fit("seed 1", 0.001), fit("resample 1", 0.5)]
    path.write_text(json.dumps(compare))
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    macros = (out / "macros.tex").read_text()
    assert "\\newcommand{\\dmCloserVerdict}{not robustly closer to or farther from}" in macros
    assert ("\\newcommand{\\dmCloserFits}{the 3 ICA fits disagree (2 of 3 fits: closer to; "
            "1 of 3 fits: no closer to and no farther from)}") in macros
    assert "\\newcommand{\\dmIcaVsRandomVerdict}{more heavy-tailed than}" in macros
    assert "\\newcommand{\\dmIcaVsRandomFits}{the same in each of the 3 ICA fits}" in macros
    assert "\\newcommand{\\dmNovelVerdict}{does not differ significantly from}" in macros

    compare["ica_fits"] = compare["ica_fits"][:1]
    path.write_text(json.dumps(compare))
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    macros = (out / "macros.tex").read_text()
    assert "\\newcommand{\\dmCloserVerdict}{closer to}" in macros
    assert "\\newcommand{\\dmCloserFits}{one ICA fit, not checked on restarts or resamples}" in macros


def test_missing_metrics_fail_clearly_and_write_nothing(tmp_path):
    (tmp_path / "metrics/runs/gemma-3-270m-l9").mkdir(parents=True)
    out = tmp_path / "generated"
    with pytest.raises(UserError, match=r"metrics/runs/gemma-3-270m-l9/activations.json is missing; "
                                        r"run `dvc repro activations@gemma-3-270m-l9`"):
        generate(load_params(REPO / "params.yaml"), tmp_path / "metrics", out, sections=SECTIONS)
    assert not out.exists()


def test_a_latex_error_names_the_line_and_leaves_no_pdf(tmp_path):
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "main.tex").write_text("\\documentclass{article}\\begin{document}\n\\dmUndefined\n\\end{document}\n")
    with pytest.raises(UserError, match=r"Undefined control sequence.*l\.2"):
        build(paper)
    assert not (paper / "main.pdf").exists()


def test_formatting_rules():
    assert fmt_count(262144) == "262{,}144"
    assert fmt_pct(0.1269) == "12.7\\%"
    assert fmt_sig(246.13) == "246" and fmt_sig(0.0123456) == "0.0123"
    assert fmt_sci(1e-4) == "\\ensuremath{10^{-4}}" and fmt_sci(3e-5) == "\\ensuremath{3.0\\times10^{-5}}"
    assert fmt_p(0.2) == "0.200" and fmt_p(3.27e-16) == "\\ensuremath{3.3\\times10^{-16}}"
    assert fmt_p(0.000999) == "\\ensuremath{10^{-3}}" and fmt_sci(9.96e-5) == "\\ensuremath{10^{-4}}"  # no "10.0×10^-5"
    assert [fmt_about(n) for n in (351, 350, 764, 99, 1234)] == ["350", "350", "760", "99", "1{,}200"]


def test_the_readme_and_the_citation_name_the_paper_s_title():
    title = re.search(r"\\title\{(.*?)\}\n", (REPO / "paper/main.tex").read_text()).group(1).replace("\\\\ ", " ")
    assert title in (REPO / "README.md").read_text().splitlines()[0]
    assert f'title: "{title}"' in (REPO / "CITATION.cff").read_text()


def test_a_verdict_is_two_sided_at_five_percent():
    """Either side is accepted only where twice its one-sided p is below 0.05: a one-sided 0.03 is a
    two-sided 0.06, no verdict."""
    def side(p_high, p_low, **kw):
        return p_side({"p_high": p_high, "p_low": p_low}, "p_high", "p_low", **kw)

    assert side(0.02, 0.98) == "high" and side(0.98, 0.02) == "low"
    assert side(0.03, 0.97) == "neither" and side(0.97, 0.03) == "neither"
    assert side(0.03, 0.97, alpha=0.1) == "high"


def test_the_pdf_is_byte_reproducible(workspace):
    import hashlib

    _generate_and_build(workspace)
    first = hashlib.sha256((workspace / "paper/main.pdf").read_bytes()).hexdigest()
    _generate_and_build(workspace)
    assert hashlib.sha256((workspace / "paper/main.pdf").read_bytes()).hexdigest() == first


def _autointerp_report(separates: bool, ceiling_above_chance: bool = True) -> dict:
    entry = {"mean": 0.71, "ci": [0.66, 0.76], "n": 64}
    chance = {"mean": 0.5, "ci": [0.45, 0.55], "n": 16}
    ceiling = {"mean": 0.93, "ci": [0.88, 0.97], "n": 8} if ceiling_above_chance else {"mean": 0.52, "ci": [0.41, 0.63], "n": 8}
    metrics = ("balanced_accuracy", "balanced_accuracy_calibrated", "f1", "auc")
    group = lambda n, e, **extra: {"n_units": n, "contexts_per_unit": 16, **dict.fromkeys(metrics, e), **extra}  # noqa: E731
    tests = {"ica_vs_random": {"difference": 0.21, "ci": [0.12, 0.3], "p_permutation": 0.0005, "n": [64, 16]},
             "ica_vs_sae": {"difference": 0.0, "ci": [-0.08, 0.08], "p_permutation": 0.97, "n": 64, "paired": True},
             "calibration_vs_random": ({"difference": 0.3, "ci": [0.2, 0.4], "p_permutation": 0.0005, "n": [8, 16]} if separates
                                       else {"difference": 0.01, "ci": [-0.1, 0.12], "p_permutation": 0.8, "n": [8, 16]}),
             "given_vs_shuffled": {"difference": 0.43, "ci": [0.35, 0.5], "p_permutation": 0.008, "n": 8, "paired": True}}
    return {"backend": "local", "model": "Qwen2.5-Coder-1.5B-Instruct", "explainer": "SmolLM2-135M-Instruct",
            "scorer": "likelihood",
            "groups": {"ica": group(64, entry), "ica_stable": group(2, entry, auc=None), "sae": group(16, entry),
                       "random": group(16, chance), "calibration": group(8, entry), "calibration_given": group(8, ceiling, contexts_per_unit=40),
                       "calibration_shuffled": group(8, chance, balanced_accuracy=None, f1=None, contexts_per_unit=40)},
            "tests": {"auc": tests, "balanced_accuracy_calibrated": tests}, "primary_metric": "auc",
            "judge_separates_calibration": separates}


@pytest.mark.parametrize("separates", [True, False])
def test_autointerp_results_fill_the_table_and_the_wording(workspace, tmp_path, separates):
    """The judge's ceiling and its wrong-explanation control are printed; the groups are ranked only
    when the judge separates its own calibration units from random ones."""
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    (metrics / "runs/gemma-3-270m-l9/autointerp.json").write_text(json.dumps(_autointerp_report(separates)))
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    table = (out / "tab_autointerp.tex").read_text()
    assert "0.71 [0.66, 0.76]" in table and "0.50 [0.45, 0.55]" in table and "not run" not in table
    assert "true explanations (ceiling) & 8 & 0.93 [0.88, 0.97]" in table
    prose = (out / "sec_autointerp.tex").read_text()
    assert "Explanations are written by SmolLM2-135M-Instruct and detection is judged by Qwen2.5-Coder-1.5B-Instruct" in prose
    assert "the judge reaches AUC 0.93 [0.88, 0.97]" in prose and "the ceiling of what this judge can see" in prose
    assert "scored on 40 held-out contexts each (the other groups on 16)" in prose
    assert "another unit's explanation & 8 & 0.50 [0.45, 0.55]" in table
    assert ("another calibration unit's explanation on the same contexts it scores AUC 0.50 [0.45, 0.55] (mean paired "
            "difference 0.430" in prose) and "it reads the explanation" in prose
    assert "log-probability per token of the explanation" in prose and "digits, closing brackets" in prose
    if separates:
        assert "ICA components are detected better than random units of the same whitened space" in prose
        assert "not detected significantly differently from their density-matched SAE features" in prose
        assert "mean paired difference over 64 pairs" in prose and "do not rank" not in prose
    else:
        assert "It does not separate the calibration units it explained from random units" in prose
        assert "we do not rank the groups" in prose and "detected better than" not in prose
        assert "the explanations written for it do not carry that structure" in prose, "the ceiling is above chance"


@pytest.mark.parametrize(("chosen_by_cpu", "numerics", "expected", "absent"), [
    ("amx_bf16", "bfloat16", "run locally on CPU in bfloat16 (the default picks this judge where the CPU multiplies "
     "bfloat16 in AMX units, as this build's does; elsewhere it falls back to SmolLM2-135M-Instruct", "without AMX"),
    ("no amx_bf16", "float32", "run locally on CPU in float32 (the default picks this judge on CPUs without AMX",
     "AMX units"),
    (None, "float32", "run locally on CPU in float32. Each unit", "AMX"),   # params named the judge
])
def test_the_judge_s_numerics_and_what_picked_it_are_said(workspace, tmp_path, chosen_by_cpu, numerics, expected, absent):
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    report = _autointerp_report(True) | {"explainer": "Qwen2.5-Coder-1.5B-Instruct", "numerics": numerics,
                                          "chosen_by_cpu": chosen_by_cpu}
    (metrics / "runs/gemma-3-270m-l9/autointerp.json").write_text(json.dumps(report))
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    prose = " ".join((out / "sec_autointerp.tex").read_text().split())
    assert "The judge is Qwen2.5-Coder-1.5B-Instruct, " + expected in prose and absent not in prose


def test_a_judge_blind_even_to_true_explanations_is_called_so(workspace, tmp_path):
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    report = _autointerp_report(False, ceiling_above_chance=False)
    report["tests"]["auc"]["given_vs_shuffled"] = {"difference": 0.02, "ci": [-0.1, 0.13], "p_permutation": 0.7, "n": 8}
    (metrics / "runs/gemma-3-270m-l9/autointerp.json").write_text(json.dumps(report))
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    prose = (out / "sec_autointerp.tex").read_text()
    assert "it does not demonstrably read the explanation" in prose
    assert "it cannot find structure that is known to be there" in prose and "do not carry" not in prose


def test_causal_results_fill_the_table_and_the_wording_follows_the_intervals(workspace, tmp_path):
    """Planted causal metrics: the prose says "more than" / "less than" / "no differently from"
    exactly where the intervals say so, and the m = k identity check is reported."""
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)

    def mean(m, lo, hi, n=8):
        return {"mean": m, "ci": [lo, hi], "n": n}

    def ratio(v):
        return {"value": v, "ci": [v - 0.01, v + 0.01], "n": 8}

    def test(d, lo, hi):
        return {"difference": d, "ci": [lo, hi], "p_permutation": 0.01 if lo > 0 or hi < 0 else 0.6}

    def same(worst):  # the m = k identity check (causal.stage.identity_check)
        return {"same_subspace": True, "max_abs_difference": worst, "tolerance": 1e-4, "agree": worst <= 1e-4}

    sub = {str(m): {"ica": {"loss_ratio": ratio(r)}, "pca": {"loss_ratio": ratio(p)}, "random": {"loss_ratio": ratio(q)},
                    "ica_minus_pca": t1, "ica_minus_random": t2}
           for m, r, p, q, t1, t2 in ((8, 1.5, 1.2, 1.01, test(0.3, 0.2, 0.4), test(0.5, 0.4, 0.6)),
                                      (64, 2.0, 2.0, 2.0, same(1e-6), same(2e-6)))}
    x_sub = {m: {**row, "ica_minus_pca": test(-0.3, -0.4, -0.2)} if m == "8" else row for m, row in sub.items()}

    def band(lo, hi, share, delta):
        return {"pcs": [lo, hi], "variance_share": share, "delta_loss": mean(delta, delta - 0.01, delta + 0.01),
                "delta_loss_per_percent": {"mean": delta / (100 * share), "ci": [(delta - 0.01) / (100 * share),
                                                                                 (delta + 0.01) / (100 * share)]}}

    report = {
        "rows": {"attribution": 8, "exact": 8, "positions_per_row": 32}, "ablation": "mean", "primary_space": "r",
        "clean_loss": mean(3.9, 3.3, 4.5),
        "spaces": {
            "r": {"exact_groups": {"ica": mean(0.2, 0.1, 0.3, 12), "sae": mean(0.05, 0.02, 0.08, 12),
                                   "random": mean(0.01, 0.0, 0.02, 12)},
                  "tests": {"ica_vs_sae": test(0.15, 0.05, 0.25), "ica_vs_random": test(-0.01, -0.05, 0.03)},
                  "ranking_agreement": {"spearman": 0.8, "p": 1e-5, "n_units": 36}, "subspaces": sub},
            "x": {"exact_groups": {"ica": mean(0.4, 0.3, 0.5, 12), "sae": mean(0.6, 0.5, 0.7, 12),
                                   "random": mean(0.02, 0.0, 0.04, 12)},
                  "tests": {"ica_vs_sae": test(-0.2, -0.3, -0.1), "ica_vs_random": test(0.38, 0.3, 0.46)},
                  "ranking_agreement": {"spearman": 0.7, "p": 1e-4, "n_units": 36}, "subspaces": x_sub}},
        "spectrum": [band(0, 8, 0.10, 0.50), band(8, 16, 0.05, 0.05), band(16, 640, 0.85, 0.17)],
        "error_node_split": {"sae_only": mean(1.7, 1.1, 2.2), "sae_plus_r": mean(0.0, 0.0, 0.0),
                             "minus_ica_part": mean(0.03, 0.01, 0.05), "ica_share": ratio(0.018)},
        "attribution": {"top_k": 10, "groups": {g: {"share_of_top_k": s, "share_of_units": 1 / 3}
                                                for g, s in (("ica", 0.5), ("sae", 0.3), ("random", 0.2))}},
    }
    (metrics / "runs/gemma-3-270m-l9/causal.json").write_text(json.dumps(report))
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    prose = (out / "sec_causal.tex").read_text()
    # the dark-matter (r-space) edits lead; the x-space edits follow with their own verdicts
    assert prose.index("from the dark matter $r=x-\\mathrm{SAE}(x)$ alone") < prose.index("from the activation $x$")
    assert "ICA components matter more than their matched SAE features (mean paired difference 0.150" in prose
    assert "no differently from random directions (difference of means -0.010" in prose
    assert ("costs 0.400 [0.300, 0.500] (ICA), 0.600 [0.500, 0.700] (SAE) and 0.020 [0.000, 0.040] (random): ICA components "
            "matter less than their matched SAE features") in prose
    assert "$m=8$: ICA above PCA, above random (paired over rows); from $x$: $m=8$: ICA below PCA, above random" in prose
    assert "The cheap ranking agreed with the exact ablations (Spearman $\\rho=0.80$" in prose
    assert "their loss ratios agree, as they must" in prose
    assert "the top band (PCs 1--8, 10.0\\% of var$(r)$) costs 0.500 [0.490, 0.510] nats, 0.050 [0.049, 0.051] per percent" in prose
    assert "largest in PCs 1--8, and from the top band to the bottom one it falls" in prose
    assert "a share 0.018" in prose and "not run" not in prose
    table = (out / "tab_causal.tex").read_text()
    assert "1.500 [1.490, 1.510]" in table and "\n64 & 2.000" in table
    assert table.index("removed from $r$") < table.index("removed from $x$") < table.index("PCs of $r$")
    assert "17--640 & 85.0\\% & 0.170 [0.160, 0.180] & 0.002 [0.002, 0.002]" in table
    sub["64"]["ica_minus_random"] = same(0.05)  # a removal that is not the same subspace: a bug, said so
    (metrics / "runs/gemma-3-270m-l9/causal.json").write_text(json.dumps(report))
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    assert "DISAGREE, which signals a bug" in (out / "sec_causal.tex").read_text()


def test_the_detection_limits_are_quoted_with_the_sae_they_were_measured_on(workspace, tmp_path):
    """bench/detection.json, when committed, gives each firing rate's boundary, and says whether it was
    measured on this build's SAE; without it the paper says the limits were not measured."""
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    out = tmp_path / "generated"
    params = load_params(REPO / "params.yaml")
    generate(params, metrics, out, sections=SECTIONS)
    assert "What this ICA would have detected was not measured" in (out / "macros.tex").read_text()
    run = metrics / "runs" / params.main_run
    ev, ica = (json.loads((run / name).read_text()) for name in ("sae_eval.json", "ica.json"))
    cells = [{"share": share, "rate": rate} for rate in (0.001, 0.01) for share in (0.001, 0.003, 0.03)]
    limits = {"identity": {"run": params.main_run, "sae_fvu": ev["fvu"], "sae_l0": ev["l0"], "ica_k": ica["n_components"]},
              "cells": cells, "boundary": {"0.001": None, "0.01": 0.003}, "commit": "abc1234", "k": 64, "threshold": 0.9,
              "n_sources": 3, "n_tokens": 65536}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/detection.json").write_text(json.dumps(limits))
    generate(params, metrics, out, sections=SECTIONS)
    text = (out / "macros.tex").read_text()
    assert "on this build's SAE" in text
    assert "firing on 0.1\\% of tokens, not even at 3.0\\%; firing on 1.0\\% of tokens, 0.3\\% (shares planted: 0.1\\%" in text
    limits["identity"]["sae_fvu"] += 0.01  # measured on another SAE: labelled, not passed off as this one's
    (tmp_path / "bench/detection.json").write_text(json.dumps(limits))
    generate(params, metrics, out, sections=SECTIONS)
    assert "on the SAE of an earlier build" in (out / "macros.tex").read_text()


def test_probes_wording_follows_the_intervals(workspace, tmp_path):
    """The probes section's verdicts (probe vs token lookup, held-out types, residual vs activations
    SAE) flip exactly where the planted intervals do; the seed's claims stay labelled as the seed's."""
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    path = metrics / "runs/gemma-3-270m-l9/probes.json"
    report = json.loads(path.read_text())
    layer = next(iter(report["layers"]))
    e1, e2 = report["layers"][layer]["experiment1"], report["layers"][layer]["experiment2"]
    out = tmp_path / "generated"

    def plant(lookup, unseen, residual):
        e1["tests"]["probe_minus_token_lookup"] |= {"difference": lookup[0], "ci": list(lookup[1:])}
        e1["controls"]["unseen_probe"] |= {"mean": unseen[0], "ci": list(unseen[1:])}
        e2["residual_minus_baseline"] |= {"difference": residual[0], "ci": list(residual[1:]), "p_permutation": 0.5}
        path.write_text(json.dumps(report))
        generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
        return (out / "sec_probes.tex").read_text()

    prose = plant((-0.02, -0.03, -0.01), (0.52, 0.49, 0.55), (0.004, -0.01, 0.02))
    assert f"At layer {layer}" in prose and "the probe falls below it (paired difference -0.020 [-0.030, -0.010]" in prose
    assert "no evidence that the probe predicts beyond memorised identity" in prose
    assert "no difference is resolved" in prose
    prose = plant((0.05, 0.03, 0.07), (0.7, 0.6, 0.8), (-0.15, -0.2, -0.1))
    assert "the probe exceeds it" in prose and "carries part of the prediction beyond memorised identity" in prose
    assert "the residual SAE's features are less predictable from layer 0" in prose
    assert "Those are the seed's numbers, not measurements of this paper" in prose
    table = (out / "tab_probes.tex").read_text()
    assert "0.8554" in table and "47/83" in table and "(no test)" in table


def test_a_judge_without_log_probabilities_is_described_by_its_answers(workspace, tmp_path):
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    report = _autointerp_report(False) | {"scorer": "yes_no", "backend": "anthropic", "primary_metric": "balanced_accuracy"}
    report["tests"] = {"balanced_accuracy": report["tests"]["auc"]}
    (metrics / "runs/gemma-3-270m-l9/autointerp.json").write_text(json.dumps(report))
    out = tmp_path / "generated"
    generate(load_params(REPO / "params.yaml"), metrics, out, sections=SECTIONS)
    prose = (out / "sec_autointerp.tex").read_text()
    assert "its answers are scored as given" in prose and "log P" not in prose and "run locally" not in prose


def test_the_ellipticity_verdict_follows_its_intervals(workspace, tmp_path):
    """Without the stage's metrics the paper says the test did not run; with them, "elliptical" and
    "not elliptical" follow the two readings' intervals."""
    from darkmatter.analysis.ellipticity import verdict

    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics, ignore=shutil.ignore_patterns("ellipticity.json"))
    out = tmp_path / "generated"
    params = load_params(REPO / "params.yaml")
    generate(params, metrics, out, sections=SECTIONS)
    assert "Whether $r$ is elliptical was not tested in this build" in (out / "macros.tex").read_text()

    def reading(ci):
        return {"observed": 0.5, "null_mean": 0.45, "null_sd": 0.01, "difference": 0.05, "ci": ci, "p_two_sided": 0.2,
                "n_tokens": 26000, "n_clusters": 60, "n_surrogates": 200}

    for ci, words in (([-0.02, 0.1], "consistent with an elliptical distribution"), ([0.02, 0.1], "So $r$ is not elliptical")):
        e = {"k": 64, "predicted": 0.45, "random_mean": 0.45, "sphere_kurtosis": -6 / 66,
             "norms_kept": reading(ci), "radial_removed": reading(ci)}
        e["verdict"] = verdict(e)
        (metrics / "runs" / params.main_run / "ellipticity.json").write_text(json.dumps(e))
        generate(params, metrics, out, sections=SECTIONS)
        text = (out / "macros.tex").read_text()
        assert words in text and "difference 0.05, \\dmCILevel{} CI " + f"[{ci[0]:.2f}, {ci[1]:.2f}]" in text


def test_the_k_sweep_is_quoted_with_the_rule_and_the_sae_it_was_measured_on(workspace, tmp_path):
    """bench/k_sweep.json, when committed, gives the rule's uncapped k, each k's numbers and the k with the
    largest stable share, labelled by the SAE it ran on; without it the paper says ICA was not refitted."""
    metrics = tmp_path / "metrics"
    shutil.copytree(workspace / "metrics", metrics)
    out = tmp_path / "generated"
    params = load_params(REPO / "params.yaml")
    generate(params, metrics, out, sections=SECTIONS)
    assert "ICA was not refitted at other $k$ for this build" in (out / "macros.tex").read_text()
    ev = json.loads((metrics / "runs" / params.main_run / "sae_eval.json").read_text())

    def point(k, stable):
        return {"k": k, "variance_kept": k / 400, "n_stable": stable, "stable_fraction": stable / k, "novel_fraction": 0.5,
                "novel_null_mean": 0.55, "novel_p_two_sided": 0.3, "seconds": k / 2, "converged": k < 64}

    sweep = {"points": [point(32, 8), point(64, 8)], "k_run": 64, "auto_variance": 0.5, "k_auto_uncapped": 107,
             "max_components": 64, "n_tokens": 65536, "commit": "abc1234",
             "identity": {"run": params.main_run, "sae_fvu": ev["fvu"], "sae_l0": ev["l0"], "ica_k": 64}}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/k_sweep.json").write_text(json.dumps(sweep))
    generate(params, metrics, out, sections=SECTIONS)
    text = (out / "macros.tex").read_text()
    assert "holding 50\\% of its variance, 107 here, capped at 64: $k$ is the cap" in text
    assert "on this build's SAE" in text and "$k=32$ keeps 8\\% of the variance, 8 of its components are stable" in text
    assert "The largest stable share is at $k=32$ (25\\%)" in text
    assert "(rotations: 55\\%, $p=0.300$; 32~s of fits, not all converged)" in text
    sweep["identity"]["sae_l0"] += 1  # another SAE's sweep: labelled, not passed off as this build's
    (tmp_path / "bench/k_sweep.json").write_text(json.dumps(sweep))
    generate(params, metrics, out, sections=SECTIONS)
    assert "on the SAE of an earlier build" in (out / "macros.tex").read_text()
