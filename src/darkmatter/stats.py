"""Statistics shared by the analysis stages: summaries, random directions, and the uncertainty
every comparison in the paper carries.

Conventions, in one place so every stage reports alike:

- intervals are percentile bootstrap intervals at :data:`CI_LEVEL`; with fewer than
  :data:`MIN_N_FOR_CI` values no interval is given (``None``: report n, say it is too few);
- Monte-Carlo p-values are ``(1 + #{null ≥ observed}) / (1 + B)`` (Phipson & Smyth 2010), never 0;
- paired designs get paired tests (sign-flip permutation of the differences), unpaired ones a
  permutation of the pooled values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
#: Confidence level of every interval reported.
CI_LEVEL = 0.95
#: Fewer values than this get no bootstrap interval: a percentile bootstrap of 2-4 values is noise.
MIN_N_FOR_CI = 5


def summary(values: np.ndarray) -> dict:
    """Mean, quantiles and extremes of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    q = np.quantile(v, QUANTILES)
    return {"n": int(len(v)), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "quantiles": {str(k): float(x) for k, x in zip(QUANTILES, q)}}


def random_unit_directions(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` directions uniform on the unit sphere in R^d, as rows."""
    g = np.random.default_rng(seed).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def random_rotation(k: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed k × k orthogonal matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))[None, :]


def monte_carlo_p(null: np.ndarray, observed: float) -> float:
    """One-sided p of ``observed`` against draws ``null`` (large is extreme): (1 + #≥) / (1 + B)."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def percentile_interval(draws: np.ndarray) -> list[float]:
    tail = (1 - CI_LEVEL) / 2
    return [float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))]


def bootstrap_ci(values, statistic: Callable[[np.ndarray], float], n_boot: int,
                 rng: np.random.Generator) -> list[float] | None:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (None below MIN_N_FOR_CI)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < MIN_N_FOR_CI:
        return None
    draws = np.array([statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)])
    return percentile_interval(draws)


def mean_with_ci(values, n_boot: int, rng: np.random.Generator) -> dict:
    """``{"mean", "ci", "n"}`` with the bootstrap interval of the mean (None when too few values)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"mean": None, "ci": None, "n": 0}
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    ci = percentile_interval(means) if len(values) >= MIN_N_FOR_CI else None
    return {"mean": float(values.mean()), "ci": ci, "n": int(len(values))}


def unpaired_difference(a, b, n_boot: int, rng: np.random.Generator, statistic=np.mean) -> dict:
    """``statistic(a) − statistic(b)`` for independent groups: bootstrap CI (each group resampled)
    and a two-sided permutation p-value of the pooled values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not len(a) or not len(b):
        return {"difference": None, "ci": None, "p_permutation": None, "n": [len(a), len(b)], "paired": False}
    observed = float(statistic(a) - statistic(b))
    ci = None
    if min(len(a), len(b)) >= MIN_N_FOR_CI:
        boots = [statistic(a[rng.integers(0, len(a), len(a))]) - statistic(b[rng.integers(0, len(b), len(b))])
                 for _ in range(n_boot)]
        ci = percentile_interval(np.array(boots))
    pooled = np.concatenate([a, b])
    null = np.empty(n_boot)
    for i in range(n_boot):
        perm = rng.permutation(pooled)
        null[i] = statistic(perm[: len(a)]) - statistic(perm[len(a):])
    return {"difference": observed, "ci": ci, "p_permutation": monte_carlo_p(np.abs(null), abs(observed)),
            "n": [int(len(a)), int(len(b))], "paired": False}


def paired_difference(a, b, n_boot: int, rng: np.random.Generator) -> dict:
    """Mean of the paired differences ``a − b``: bootstrap CI over pairs, a two-sided sign-flip
    permutation p-value, and the Wilcoxon signed-rank p-value (scipy) as a rank-based check."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b):
        raise ValueError(f"paired groups differ in size: {len(a)} vs {len(b)}")
    if not len(a):
        return {"difference": None, "ci": None, "p_permutation": None, "p_wilcoxon": None, "n": 0, "paired": True}
    d = a - b
    observed = float(d.mean())
    ci = bootstrap_ci(d, np.mean, n_boot, rng)
    signs = rng.choice([-1.0, 1.0], size=(n_boot, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    nonzero = d[d != 0]
    p_wilcoxon = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= MIN_N_FOR_CI else None
    return {"difference": observed, "ci": ci, "p_permutation": monte_carlo_p(null, abs(observed)),
            "p_wilcoxon": p_wilcoxon, "n": int(len(d)), "paired": True}


def linked_clusters(groups_per_row: list[np.ndarray]) -> np.ndarray:
    """Cluster label per row: rows that share any group id (a document) are one cluster, transitively."""
    parent = list(range(len(groups_per_row)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_row: dict[int, int] = {}
    for row, groups in enumerate(groups_per_row):
        for g in np.unique(groups):
            if int(g) in first_row:
                parent[root(row)] = root(first_row[int(g)])
            else:
                first_row[int(g)] = row
    roots = [root(i) for i in range(len(groups_per_row))]
    return np.unique(roots, return_inverse=True)[1]


def cluster_bootstrap_means(values: np.ndarray, clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws [n_boot, k] of the row means of ``values`` ([k, rows]), whole clusters resampled.

    Rows in one cluster (e.g. rows cut from the same document) are not independent, so the unit
    of resampling is the cluster: each draw takes as many clusters as there are, with replacement,
    and averages every row they hold.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_clusters = int(clusters.max()) + 1
    sums = np.stack([np.bincount(clusters, weights=v, minlength=n_clusters) for v in values], axis=1)  # [C, k]
    counts = np.bincount(clusters, minlength=n_clusters).astype(np.float64)
    weights = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(np.float64)
    return (weights @ sums) / (weights @ counts)[:, None]


def cluster_mean_with_ci(values, clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """``{"mean", "ci", "n", "n_clusters"}``: the mean over rows with a cluster-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    n_clusters = int(clusters.max()) + 1 if len(values) else 0
    ci = (percentile_interval(cluster_bootstrap_means(values, clusters, n_boot, rng)[:, 0])
          if n_clusters >= MIN_N_FOR_CI else None)
    return {"mean": float(values.mean()) if len(values) else None, "ci": ci, "n": int(len(values)), "n_clusters": n_clusters}


def cluster_ratio_with_ci(numerator, denominator, clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """mean(numerator) / mean(denominator) over rows, with a cluster-bootstrap interval."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    n_clusters = int(clusters.max()) + 1
    ci = None
    if n_clusters >= MIN_N_FOR_CI:
        draws = cluster_bootstrap_means(np.stack([numerator, denominator]), clusters, n_boot, rng)
        ci = percentile_interval(draws[:, 0] / draws[:, 1])
    return {"value": float(numerator.mean() / denominator.mean()), "ci": ci, "n": int(len(numerator)), "n_clusters": n_clusters}


def cluster_paired_difference(a, b, clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """Mean of the paired row differences ``a − b``: cluster-bootstrap CI and a two-sided p-value from
    flipping the sign of whole clusters' differences (rows of one cluster are not independent)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    out = cluster_mean_with_ci(d, clusters, n_boot, rng)
    cluster_sums = np.bincount(clusters, weights=d)
    null = np.abs(rng.choice([-1.0, 1.0], size=(n_boot, len(cluster_sums))) @ cluster_sums) / len(d)
    return {"difference": out["mean"], "ci": out["ci"], "p_permutation": monte_carlo_p(null, abs(out["mean"])),
            "n": out["n"], "n_clusters": out["n_clusters"], "paired": True}
