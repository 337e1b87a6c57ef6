"""What a feature's firing counts say, defined once for every stage.

A feature is *dead* if it never fires on the held-out rows' non-special tokens (``sae_eval``
and the residual stage both report this), *dense* if it fires on more than
``sae_eval.dense_threshold`` of them, and *active* (the kurtosis gap, density matching) if it
fires on more than ``compare.active_frequency`` of the held-out analysed tokens.
"""

from __future__ import annotations

import numpy as np


def dead_fraction(fires_heldout_nonspecial: np.ndarray) -> float:
    """Fraction of features with no firing on the held-out rows' non-special tokens."""
    return float((np.asarray(fires_heldout_nonspecial) == 0).mean())
