"""The paper cannot silently go stale, and each figure and table names the stage that made it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO

from darkmatter.config import load_params
from darkmatter.paper.build import build
from darkmatter.paper.check import check
from darkmatter.paper.generate import BENCH_RESULTS
from darkmatter.paper.provenance import Recorder, RECORDER, included_figures, input_hash, producer, read_lock, track

MAIN = "gemma-3-270m-l9"


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


@pytest.fixture
def workspace(tmp_path):
    """A copy of what the checks read: paper/, figures/, metrics/, dvc.lock and the committed bench results."""
    for name in ("paper", "figures", "metrics"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("main.pdf"))
    shutil.copy(REPO / "dvc.lock", tmp_path / "dvc.lock")
    for name in BENCH_RESULTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_the_committed_paper_is_what_the_committed_metrics_generate(params):
    report = check(REPO, params)
    assert report.ok, "\n".join(report.lines())
    assert report.pending == []  # every later experiment has run


def test_a_changed_metric_makes_the_paper_stale(workspace, params):
    assert check(workspace, params).ok
    path = workspace / f"metrics/runs/{MAIN}/residual.json"
    residual = json.loads(path.read_text())
    residual["dark_matter_fraction"] *= 1.5
    path.write_text(json.dumps(residual))
    assert {"macros.tex", "tab_dark_matter.tex"} <= set(check(workspace, params).stale)


def test_a_figure_the_latex_never_includes_is_reported(workspace, params):
    extra = workspace / f"figures/runs/{MAIN}/residual/unused.png"
    shutil.copy(workspace / f"figures/runs/{MAIN}/residual/kurtosis.png", extra)
    report = check(workspace, params)
    assert report.orphan_figures == [f"figures/runs/{MAIN}/residual/unused.png"]


def test_reads_of_missing_metrics_are_named(workspace, params):
    (workspace / f"metrics/runs/{MAIN}/autointerp.json").unlink()
    lock = read_lock(workspace / "dvc.lock")
    del lock[f"causal@{MAIN}"]
    (workspace / "dvc.lock").write_text(__import__("yaml").safe_dump({"schema": "2.0", "stages": lock}))
    report = check(workspace, params)
    assert report.unbuilt == [f"metrics/runs/{MAIN}/autointerp.json"]  # a stage writes it: rebuild
    assert f"metrics/runs/{MAIN}/causal.json" in report.unwritten  # read, but no stage writes it
    assert not report.ok


def test_tracked_metrics_record_files_and_absent_keys():
    recorder = Recorder()
    token = RECORDER.set(recorder)
    try:
        with recorder.reading("tab.tex"):
            metrics = track({"a": {"b": 1}, "rows": [{"c": 2}]}, "metrics/x.json")
            assert metrics["a"]["b"] == 1 and metrics["rows"][0]["c"] == 2
            assert metrics["a"].get("missing", 7) == 7
    finally:
        RECORDER.reset(token)
    assert recorder.files["tab.tex"] == {"metrics/x.json"}
    assert recorder.absent_keys["metrics/x.json"] == {"a.missing"}


def test_every_figure_and_table_names_its_stage_and_input_hash():
    lock = read_lock(REPO / "dvc.lock")
    text = (REPO / "paper/generated/provenance.tex").read_text()
    entries = dict(re.findall(r"\\@namedef\{dmprov@([^}]+)\}\{(.*)\}$", text, flags=re.M))
    main_tex = (REPO / "paper/main.tex").read_text()
    keys = set(included_figures([REPO / "paper/main.tex"])) | set(re.findall(r"\\input\{generated/(tab_\w+)\.tex\}", main_tex))
    assert keys == set(entries)
    assert set(re.findall(r"\\dmprovenance\{([^}]+)\}", main_tex)) >= keys - {"residual/pca_spectrum"}  # one line per float
    stage = producer(lock, f"figures/runs/{MAIN}/ica/ica_components.pdf")
    assert stage == f"ica@{MAIN}" and f"(inputs \\texttt{{{input_hash(lock[stage])}}})" in entries["ica/ica_components"]
    assert all("no dvc.lock entry" not in v for v in entries.values())


def test_the_pdf_carries_the_commit(workspace):
    build(workspace / "paper", commit="0123456789abcdef0123456789abcdef01234567")
    info = subprocess.run(["pdfinfo", str(workspace / "paper/main.pdf")], capture_output=True, text=True, check=True).stdout
    assert "commit 0123456789abcdef0123456789abcdef01234567" in info
    text = subprocess.run(["pdftotext", str(workspace / "paper/main.pdf"), "-"], capture_output=True, text=True).stdout
    assert text.count("commit 0123456789ab") >= 10  # a provenance line under each figure and table
