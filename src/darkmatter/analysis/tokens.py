"""Which tokens an analysis uses: token classes and the train / held-out rows.

Every cached token is one of three classes:

- ``SPECIAL``: BOS/EOS/PAD and position 0 (|x| ~ 1e5), never analysed;
- ``OUTLIER``: a non-special token whose ‖x‖ exceeds ``residual.outlier_norm_factor`` times the
  median ‖x‖ of non-special tokens (~0.03% of tokens here, mostly apostrophes, at ~10x the
  median): analysed or not as ``residual.exclude_outliers`` says;
- ``ORDINARY``: everything else.

The *analysed* tokens are the ordinary ones, plus the outliers when they are not excluded. The
residual stage decides the classes once and stores them in ``stats.npz``; every later stage
reads them from there. Fits (ridge, PCA whitening, ICA, density matching) use analysed tokens
of the train rows; reported statistics use analysed tokens of the held-out rows, which no fit
and no explanation has seen.
"""

from __future__ import annotations

import numpy as np

from darkmatter.data.split import row_tokens, split_rows

SPECIAL, OUTLIER, ORDINARY = 0, 1, 2
CLASS_NAMES = {SPECIAL: "special", OUTLIER: "outlier", ORDINARY: "ordinary"}


def classify(special: np.ndarray, x_norm: np.ndarray, norm_factor: float) -> tuple[np.ndarray, dict]:
    """Token classes (int8) and the rule that made them (median norm, threshold, counts)."""
    median = float(np.median(x_norm[~special])) if (~special).any() else 0.0
    threshold = norm_factor * median
    classes = np.full(len(special), ORDINARY, dtype=np.int8)
    classes[(~special) & (x_norm > threshold)] = OUTLIER
    classes[special] = SPECIAL
    counts = {CLASS_NAMES[c]: int((classes == c).sum()) for c in CLASS_NAMES}
    return classes, {"norm_factor": norm_factor, "median_norm_nonspecial": median, "threshold": threshold,
                     "counts": counts}


def analysed_classes(exclude_outliers: bool) -> tuple[int, ...]:
    return (ORDINARY,) if exclude_outliers else (OUTLIER, ORDINARY)


def analysed(classes: np.ndarray, exclude_outliers: bool) -> np.ndarray:
    """Mask of the tokens the analysis uses."""
    return np.isin(classes, analysed_classes(exclude_outliers))


def heldout_token_mask(n_rows: int, context: int, heldout_fraction: float) -> np.ndarray:
    """True at every token of the held-out rows."""
    mask = np.zeros(n_rows * context, dtype=bool)
    mask[row_tokens(split_rows(n_rows, heldout_fraction)[1], context)] = True
    return mask


def analysed_tokens(stats: dict, heldout: np.ndarray, split: str) -> np.ndarray:
    """Flat ids of the analysed tokens of the ``train`` or ``heldout`` rows (``stats``: stats.npz)."""
    keep = analysed(stats["token_class"], bool(stats["outliers_excluded"]))
    return np.flatnonzero(keep & (heldout if split == "heldout" else ~heldout))
