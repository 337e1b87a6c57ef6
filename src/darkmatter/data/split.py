"""Train and held-out rows of an activation cache: every stage splits the same way.

Rows are packed from an already shuffled corpus, so the last ``heldout_fraction`` of rows is a
random sample of documents; held-out contexts stay whole for the LM-loss evaluation. The SAE is
trained on the train rows only; every held-out number uses the held-out rows only.
"""

from __future__ import annotations

import numpy as np

from darkmatter.errors import UserError


def split_rows(n_rows: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out row ids: the last ``heldout_fraction`` of rows is held out."""
    n_heldout = max(1, round(n_rows * heldout_fraction))
    if n_heldout >= n_rows:
        raise UserError(f"sae.heldout_fraction {heldout_fraction} leaves no training rows out of {n_rows}")
    return np.arange(n_rows - n_heldout), np.arange(n_rows - n_heldout, n_rows)


def row_tokens(rows: np.ndarray, context: int) -> np.ndarray:
    """Flat token ids of every token in ``rows`` (row r holds tokens r*T .. r*T+T-1)."""
    return (rows[:, None] * context + np.arange(context)[None, :]).reshape(-1)


def token_index(cache, rows: np.ndarray) -> np.ndarray:
    """Flat token ids of the non-special tokens in ``rows`` of an activation cache."""
    flat = row_tokens(rows, cache.meta["context_length"])
    return flat[~np.asarray(cache.special)[flat]]
