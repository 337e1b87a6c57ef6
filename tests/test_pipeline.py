"""The stage map (dvc.yaml) as DVC reads it: each per-run stage written once, editing one run
touches only that run, and a typo in params.yaml fails before any output is touched.

The pipeline runs here with every stage's command but ``validate`` replaced by one that only
creates the stage's outputs, so these tests exercise DVC's own dependency tracking on the real
dvc.yaml and params.yaml in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from darkmatter.paper.generate import BENCH_RESULTS

MAIN, SECOND = "gemma-3-270m-l9", "gemma-3-270m-l6"
PER_RUN = ("corpus", "model", "activations", "sae", "eval_sae", "residual", "ica", "compare", "ellipticity",
           "examples", "causal", "probes", "dashboard", "autointerp")

TOUCH = '''import sys
from pathlib import Path
files, dirs = sys.argv[1].split(","), sys.argv[2].split(",")
for d in filter(None, dirs):
    Path(d).mkdir(parents=True, exist_ok=True)
    (Path(d) / "made").write_text(d)
for f in filter(None, files):
    Path(f).parent.mkdir(parents=True, exist_ok=True)
    Path(f).write_text(f)
'''


def _env():
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


def dvc(ws, *args, check=True):
    proc = subprocess.run(["dvc", *args], cwd=ws, env=_env(), capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


def _foreach_values(expr: str, params: dict) -> list:
    """The items of a ``foreach: ${a.b}`` over params (a list, or a dict's keys)."""
    value = params
    for key in expr.strip("${}").split("."):
        value = value[key]
    return list(value)


def _stub(dvc_yaml: dict, params: dict) -> dict:
    """dvc.yaml with each command (but validate's) replaced by one that creates the stage's outputs.

    An output directory gets every file that some stage depends on inside it (docs.jsonl, stats.npz ...):
    for a per-run stage, with the run as ``${item}``; for a single stage, once per item of the
    depending stage's ``foreach`` (the seed chain reads each point's SAE from the axes' folder).
    """
    stages = dvc_yaml["stages"]
    deps = [(d, s.get("foreach")) for s in stages.values() for d in (s.get("do", s).get("deps") or [])]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        if name == "validate":
            continue
        files, dirs = [], []
        for out in _outs(body):
            if "do" in stage:
                inside = [d.replace("${main_run}", "${item}") for d, _ in deps
                          if d.replace("${main_run}", "${item}").startswith(out + "/")]
            else:
                inside = [d.replace("${item}", str(item)) for d, over in deps if d.startswith(out + "/")
                          for item in (_foreach_values(over, params) if "${item}" in d else [None])]
            if inside:
                files += inside
            elif "." in out.rsplit("/", 1)[-1]:
                files.append(out)
            else:
                dirs.append(out)
        body["cmd"] = f"python touch.py '{','.join(files)}' '{','.join(dirs)}'"
    return dvc_yaml


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The real stage map with two runs of the default model, reproduced with stub commands."""
    ws = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "paper").mkdir()
    for name in ("main.tex", "refs.bib"):
        shutil.copy(REPO / "paper" / name, ws / "paper" / name)
    shutil.copytree(REPO / "paper" / "sections", ws / "paper" / "sections")
    for result in BENCH_RESULTS:  # committed bench results paper_tables depends on (not stage outputs)
        (ws / result).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / result, ws / result)
    (ws / "touch.py").write_text(TOUCH)
    stubbed = _stub(yaml.safe_load((REPO / "dvc.yaml").read_text()), yaml.safe_load((REPO / "params.yaml").read_text()))
    (ws / "dvc.yaml").write_text(yaml.safe_dump(stubbed, sort_keys=False))
    params = (REPO / "params.yaml").read_text().replace(f"runs: [{MAIN}]", f"runs: [{MAIN}, {SECOND}]", 1)
    assert params != (REPO / "params.yaml").read_text()
    (ws / "params.yaml").write_text(params)
    dvc(ws, "init", "--no-scm", "-q")
    dvc(ws, "repro")
    assert "up to date" in dvc(ws, "status").stdout
    return ws


def _stage_names(ws, runs: list[str]) -> list[str]:
    text = (ws / "params.yaml").read_text()
    start = text.index("runs: [")
    end = text.index("]", start) + 1
    (ws / "params.yaml").write_text(text[:start] + f"runs: [{', '.join(runs)}]" + text[end:])
    try:
        return dvc(ws, "stage", "list", "--name-only").stdout.split()
    finally:
        (ws / "params.yaml").write_text(text)


def test_adding_a_run_adds_exactly_one_instance_of_each_per_run_stage(pipeline):
    one = _stage_names(pipeline, [MAIN])
    two = _stage_names(pipeline, [MAIN, SECOND])
    added = sorted(set(two) - set(one))
    assert added == sorted(f"{stage}@{SECOND}" for stage in PER_RUN)
    assert set(one) <= set(two) and len(two) == len(one) + len(PER_RUN)
    for stage in PER_RUN:
        assert f"{stage}@{MAIN}" in one


def _changed(ws) -> set[str]:
    return set(json.loads(dvc(ws, "status", "--json").stdout))


@pytest.mark.parametrize(("old", "new", "expected"), [
    # one section's size override of the second run: exactly the stages reading it
    ("label: Gemma 3 270M, layer 6\n    subject: {model: gemma-3-270m, layer: 6, site: resid_post}\n"
     "    data: {corpus: offline, context_length: 128}\n    sae: {source: train}\n    sizes: *cpu",
     "label: Gemma 3 270M, layer 6\n    subject: {model: gemma-3-270m, layer: 6, site: resid_post}\n"
     "    data: {corpus: offline, context_length: 128}\n    sae: {source: train}\n"
     "    sizes: {activations: {}, sae: {}, sae_eval: {}, residual: {}, ica: {seeds: 5}, compare: {}, examples: {},"
     " autointerp: {}}",
     {f"ica@{SECOND}", f"examples@{SECOND}"}),
    # the second run's layer: its chain from the activations on, not its corpus or model
    ("subject: {model: gemma-3-270m, layer: 6, site: resid_post}",
     "subject: {model: gemma-3-270m, layer: 5, site: resid_post}",
     {f"activations@{SECOND}", f"eval_sae@{SECOND}"}),
])
def test_editing_one_run_changes_only_that_runs_stages(pipeline, old, new, expected):
    text = (pipeline / "params.yaml").read_text()
    assert old in text
    (pipeline / "params.yaml").write_text(text.replace(old, new, 1))
    try:
        changed = _changed(pipeline)
    finally:
        (pipeline / "params.yaml").write_text(text)
    # validate reads the whole file; paper_tables reads every run's label (and every run's metrics).
    others = changed - {"validate", "paper_tables"}
    assert expected <= others, changed
    assert all(name.endswith(f"@{SECOND}") for name in others), changed
    assert _changed(pipeline) == set()


def test_a_typo_fails_before_any_output_is_touched(pipeline):
    """`ica.backend: foo` used to cost the ICA outputs of every run; now validate stops it first."""
    text = (pipeline / "params.yaml").read_text()
    assert "  backend: picard" in text
    ica_out = pipeline / f"data/runs/{MAIN}/ica/made"
    before = ica_out.read_text()
    (pipeline / "params.yaml").write_text(text.replace("  backend: picard", "  backend: foo", 1))
    try:
        proc = dvc(pipeline, "repro", check=False)
        assert proc.returncode != 0
        assert "ica.backend: 'foo' is not allowed; allowed: 'picard', 'python-picard' or 'fastica'" in proc.stdout + proc.stderr
        assert ica_out.read_text() == before, "the ICA outputs were not deleted"
    finally:
        (pipeline / "params.yaml").write_text(text)
    proc = dvc(pipeline, "repro")
    assert "Running stage" not in proc.stdout.replace("Running stage 'validate'", ""), proc.stdout
    assert _changed(pipeline) == set()
