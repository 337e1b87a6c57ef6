"""Small statistics shared by the analysis stages: summaries and random directions."""

from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


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
