"""Two builds of the paper compared: moves, their size, and whether each stays inside its own CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from darkmatter.paper.diff import compare, main, render
from darkmatter.paper.format import fmt_sig
from darkmatter.stats import mean_with_ci, paired_difference


def _build(root: Path, metrics: dict, tex: str) -> Path:
    (root / "metrics/runs/r").mkdir(parents=True)
    (root / "paper/generated").mkdir(parents=True)
    (root / "metrics/runs/r/stats.json").write_text(json.dumps(metrics))
    (root / "paper/generated/macros.tex").write_text(tex)
    return root


def _stage(x: np.ndarray) -> tuple[dict, str]:
    """A miniature stage: statistics with bootstrap CIs (the project's own), a count, and their LaTeX."""
    metrics = {
        "kurtosis": mean_with_ci(x[:, 0] ** 4, 500, np.random.default_rng(0)),
        "gap": paired_difference(x[:, 0] ** 2, x[:, 1] ** 2, 500, np.random.default_rng(1)),
        "n_large": int((np.abs(x) > 2.5).sum()),
    }
    tex = (f"\\newcommand{{\\dmK}}{{{fmt_sig(metrics['kurtosis']['mean'])}}}\n"
           f"\\newcommand{{\\dmN}}{{{metrics['n_large']}}}\n")
    return metrics, tex


def test_planted_moves_are_classified(tmp_path):
    a = {"fvu": 0.2, "auc": {"mean": 0.6, "ci": [0.55, 0.65], "n": 32}, "gap": {"difference": 0.1, "ci": [0.05, 0.15]},
         "counts": [3, 4], "label": "x", "throughput": {"seconds": 50.0}}
    b = {"fvu": 0.21, "auc": {"mean": 0.62, "ci": [0.57, 0.67], "n": 32}, "gap": {"difference": 0.2, "ci": [0.15, 0.25]},
         "counts": [3, 5], "label": "y", "new": 1, "throughput": {"seconds": 41.0}}
    c = compare(_build(tmp_path / "a", a, "FVU 0.200\nsame\n"), _build(tmp_path / "b", b, "FVU 0.210\nsame\n"))
    moves = {m.key: m for m in c.moves}
    assert moves["auc.mean"].within_ci is True and moves["gap.difference"].within_ci is False
    assert moves["fvu"].within_ci is None and abs(moves["fvu"].relative - 0.05) < 1e-12
    assert moves["counts[1]"].delta == 1 and "auc.n" not in moves
    assert [m.key for m in c.outside_ci] == ["gap.difference"]
    assert moves["throughput.seconds"].is_timing and "throughput.seconds" not in {m.key for m in c.results}
    assert c.only_in["B"] == ["metrics/runs/r/stats.json: new"]
    assert c.text == {"macros.tex": [("FVU 0.200", "FVU 0.210")]}
    report = render(c, 0.0)
    assert report.index("gap.difference") < report.index("auc.mean")  # what left its CI comes first
    assert "throughput.seconds" not in report and "timings and judge usage (not results): 1 moved" in report
    assert "throughput.seconds" in render(c, 0.0, timings=True)


def test_a_build_from_inputs_perturbed_at_1e_12_moves_only_within_its_intervals(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((4000, 2))
    perturbed = x * (1 + 1e-12 * np.random.default_rng(1).standard_normal(x.shape))
    build_a = _build(tmp_path / "a", *_stage(x))
    build_b = _build(tmp_path / "b", *_stage(perturbed))
    c = compare(build_a, build_b)
    assert c.moves, "a 1e-12 perturbation should move the float statistics a little"
    assert all(m.relative < 1e-9 for m in c.moves) and not c.outside_ci
    assert not c.text  # at 3 significant digits the paper reads the same
    assert compare(build_a, build_b, rtol=1e-9).moves == []
    main([str(build_a), str(build_b), "--fail-outside-ci"])  # exits 0: nothing left its interval
    assert "numbers moved" in capsys.readouterr().out
