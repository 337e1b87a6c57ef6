"""Detection limits: what the ICA of the dark matter would have found, measured by planting.

A null ("ICA's directions are no more novel than random rotations", "1 of 64 components is
stable") means something only beside what the method could have found. Here sparse, heavy-tailed
sources are planted into the run's own r, on the ICA's own fitting tokens, and the ICA stage's
method runs on the result: PCA-whitening to the run's k components (of the planted data), then
its backend, restarts and tolerance (``darkmatter.analysis.ica``). A planted source is
*recovered* when every fit has a mixing direction within |cos| > ``threshold`` of it, which also
makes it stable across the restarts; the *detection boundary* of a firing rate is the smallest
variance share from which every planted source of every larger share is recovered.

A planted source s·v: v a random unit direction of activation space (the planted directions of a
cell orthonormal), s zero on a fraction 1 − rate of tokens and Laplace-distributed on the rest (a
sparse code's heavy tail), scaled so that var(s) is the given share of r's total variance.
Several sources share one planting (independent trials at the cost of one set of fits).

scikit-learn and python-picard fit ICA; neither plants nor scores, so this module adds only
that, around the ICA stage's own functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sparse_source(n: int, rate: float, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Zero on a fraction 1 − ``rate`` of ``n`` tokens, Laplace on the rest, variance ``variance``."""
    active = rng.random(n) < rate
    if active.sum() < 2:
        active[rng.choice(n, 2, replace=False)] = True
    s = np.where(active, rng.laplace(size=n), 0.0)
    return s * np.sqrt(variance / s.var())


def plant(t: np.ndarray, directions: np.ndarray, share: float, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``t`` [n, d] plus one sparse source along each row of ``directions`` [m, d] (unit), each
    holding ``share`` of ``t``'s total variance."""
    total = float(((t - t.mean(0)) ** 2).sum(1).mean())
    out = np.array(t, dtype=np.float64, copy=True)
    for v in directions:
        out += np.outer(sparse_source(len(t), rate, share * total, rng), v)
    return out


def whitener_of(t: np.ndarray, k: int):
    """The ICA stage's whitening, from the PCA of ``t`` itself (the planted data's own top k)."""
    from darkmatter.analysis.ica import Whitener
    from darkmatter.analysis.residual import pca

    eigenvalues, eigenvectors = pca(np.cov(t, rowvar=False))
    return Whitener.from_pca(t.mean(0), eigenvalues, eigenvectors, k), float(eigenvalues.sum())


def random_orthonormal(m: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` orthonormal random unit directions [m, d]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, m)))
    return q.T


@dataclass(frozen=True)
class Cell:
    """One planting: a variance share and a firing rate; per fit and source, the best |cos|."""

    share: float
    rate: float
    best_cos: np.ndarray  # [fits, sources]
    in_span: np.ndarray  # [sources] the share of each planted direction inside the top-k principal span
    threshold: float

    @property
    def recovered(self) -> np.ndarray:
        """[sources]: recovered in every fit."""
        return (self.best_cos > self.threshold).all(0)

    def as_dict(self) -> dict:
        return {"share": self.share, "rate": self.rate, "best_cos": self.best_cos.tolist(), "in_span": self.in_span.tolist(),
                "recovered": int(self.recovered.sum()), "sources": int(self.best_cos.shape[1]),
                "all_recovered": bool(self.recovered.all())}


def run_cell(t: np.ndarray, k: int, share: float, rate: float, n_sources: int, cfg, seed: int,
             threshold: float = 0.9) -> Cell:
    """Plant ``n_sources`` sources at (share, rate) into ``t``, whiten to ``k``, fit ``cfg.seeds`` restarts."""
    from darkmatter.analysis.ica import abs_cos, run_parallel, to_components

    rng = np.random.default_rng(seed)
    directions = random_orthonormal(n_sources, t.shape[1], rng)
    planted = plant(t, directions, share, rate, rng)
    whitener, total = whitener_of(planted, k)
    z = whitener(planted)
    runs = run_parallel([(z, cfg.seed + i) for i in range(cfg.seeds)], cfg, desc=f"ICA, {share:.2%} at rate {rate:.1%}")
    fits = [to_components(run.unmixing_white, whitener, z, total) for run in runs]
    best = np.array([abs_cos(directions, fit.mixing).max(1) for fit in fits])
    in_span = ((directions @ whitener.basis) ** 2).sum(1)
    return Cell(share, rate, best, in_span, threshold)


def boundary(cells: list[Cell], rate: float) -> float | None:
    """The smallest share at ``rate`` from which every larger share's sources are all recovered (None
    where the largest share's are not)."""
    at_rate = sorted((c for c in cells if c.rate == rate), key=lambda c: c.share)
    found = None
    for cell in reversed(at_rate):
        if not cell.recovered.all():
            break
        found = cell.share
    return found


def detection_limits(t: np.ndarray, k: int, shares: list[float], rates: list[float], n_sources: int, cfg,
                     seed: int = 0, threshold: float = 0.9) -> dict:
    """Every (share, rate) cell and each rate's boundary."""
    cells = [run_cell(t, k, share, rate, n_sources, cfg, seed + i, threshold)
             for i, (rate, share) in enumerate((r, s) for r in rates for s in shares)]
    return {"threshold": threshold, "k": k, "n_tokens": int(len(t)), "n_sources": n_sources, "fits": cfg.seeds,
            "cells": [c.as_dict() for c in cells], "boundary": {str(rate): boundary(cells, rate) for rate in rates}}
