"""Detection limits: a planted sparse source above the limit comes back in every ICA fit, one below
does not, and the boundary is read from the largest share down."""

import dataclasses

import numpy as np

from darkmatter.analysis.detection import Cell, boundary, detection_limits, sparse_source
from darkmatter.config import ICAConfig


def test_a_sparse_source_has_its_rate_and_variance():
    s = sparse_source(200_000, 0.01, 4.0, np.random.default_rng(0))
    assert abs((s != 0).mean() - 0.01) < 0.002 and abs(s.var() - 4.0) < 1e-9
    assert ((s - s.mean()) ** 4).mean() / s.var() ** 2 - 3 > 50  # heavy-tailed: a sparse code's kurtosis ~ 6/rate


def test_a_source_above_the_limit_comes_back_and_one_below_does_not():
    """Gaussian background with a decaying spectrum (d = 24, whitened to k = 8): a source holding 10%
    of the variance on 5% of tokens is recovered by every restart; one holding 0.05% is not (too weak
    to pull a principal component of its own, it is whitened away with the bottom 16)."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((20_000, 24)) * np.sqrt(np.geomspace(4.0, 0.5, 24))
    cfg = dataclasses.replace(ICAConfig(), seeds=2, max_iter=500)
    out = detection_limits(t, k=8, shares=[0.0005, 0.1], rates=[0.05], n_sources=2, cfg=cfg, seed=0)
    weak, strong = out["cells"]
    assert strong["all_recovered"] and min(min(f) for f in strong["best_cos"]) > 0.95
    assert weak["recovered"] == 0 and max(max(f) for f in weak["best_cos"]) < 0.9
    assert out["boundary"] == {"0.05": 0.1}


def _cell(share, recovered):
    return Cell(share, 0.01, np.array([[0.99 if recovered else 0.2]]), np.array([1.0]), 0.9)


def test_the_boundary_is_where_recovery_holds_from_there_up():
    assert boundary([_cell(0.001, False), _cell(0.01, True), _cell(0.1, True)], 0.01) == 0.01
    # a lucky small share below a failure does not lower the boundary
    assert boundary([_cell(0.001, True), _cell(0.01, False), _cell(0.1, True)], 0.01) == 0.1
    assert boundary([_cell(0.001, True), _cell(0.1, False)], 0.01) is None
