"""Paired data: the layer-0 residual and layer-L activations on the same tokens, and the token split.

Layer 0 is ``blocks.0.hook_resid_pre``. For Gemma it is the scaled token embedding, a function of
the token id alone (positions enter later, through rotary attention); for GPT-2 it adds the
learned position embedding. So "predictable from layer 0" can only mean "predictable from the
token (and, for GPT-2, its position)": :mod:`darkmatter.probes.controls` measures exactly that.

Rows: the probes' training rows are drawn from the cache's train rows and their validation rows
from its held-out rows, so no row is shared between a fit and its evaluation (and the run's SAE
never saw a validation row). One forward pass over those rows captures layer 0 and every probed
layer. Special tokens (BOS, position 0) are out of everything.

Token types: a seeded fraction of the token ids present is held out of every probe's training.
A probe is evaluated on validation tokens of seen types (the seed's number) and of held-out
types: a lookup table of token ids cannot score there, geometry of the embedding might.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from darkmatter.config import hook_name
from darkmatter.data.split import split_rows
from darkmatter.errors import UserError

LAYER0_HOOK = "blocks.0.hook_resid_pre"


def probe_rows(n_cache_rows: int, heldout_fraction: float, n_rows: int, val_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded training rows (from the cache's train rows) and validation rows (from its held-out rows)."""
    train_pool, heldout_pool = split_rows(n_cache_rows, heldout_fraction)
    n_val = max(1, round(n_rows * val_fraction))
    n_train = n_rows - n_val
    if n_train < 1 or n_train > len(train_pool) or n_val > len(heldout_pool):
        raise UserError(f"probes.n_tokens asks for {n_train} training and {n_val} validation rows, but the cache has "
                        f"{len(train_pool)} train and {len(heldout_pool)} held-out rows; lower probes.n_tokens "
                        "(or probes.val_fraction) or cache more tokens")
    rng = np.random.default_rng(seed)
    return (np.sort(rng.choice(train_pool, n_train, replace=False)),
            np.sort(rng.choice(heldout_pool, n_val, replace=False)))


@dataclass(frozen=True)
class TokenSplit:
    """Flat token indices into the paired rows (non-special only)."""

    train: np.ndarray   # training rows, seen types
    val: np.ndarray     # validation rows, seen types
    unseen: np.ndarray  # validation rows, held-out types
    heldout_types: np.ndarray
    n_types: int


def split_tokens(ids: np.ndarray, keep: np.ndarray, is_val: np.ndarray, heldout_type_fraction: float,
                 seed: int) -> TokenSplit:
    """Hold out a seeded fraction of the token types present; split the kept tokens three ways."""
    types = np.unique(ids[keep])
    rng = np.random.default_rng(seed)
    n_out = max(1, round(len(types) * heldout_type_fraction))
    heldout = np.sort(rng.choice(types, n_out, replace=False))
    unseen_type = np.isin(ids, heldout)
    return TokenSplit(train=np.flatnonzero(keep & ~is_val & ~unseen_type),
                      val=np.flatnonzero(keep & is_val & ~unseen_type),
                      unseen=np.flatnonzero(keep & is_val & unseen_type),
                      heldout_types=heldout, n_types=int(len(types)))


def capture(subject, tokens: np.ndarray, layers: list[int], site: str, batch_rows: int) -> dict[int | str, np.ndarray]:
    """``{"layer0": [N, d], L: [N, d] for L in layers}`` (float32) from one forward over ``tokens`` [rows, T]."""
    import torch

    hooks = {LAYER0_HOOK: "layer0", **{hook_name(layer, site): layer for layer in layers}}
    stop = max(layers) + 1
    n_rows, context = tokens.shape
    out = {key: np.empty((n_rows * context, subject.d_model), dtype=np.float32) for key in hooks.values()}
    for start in tqdm(range(0, n_rows, batch_rows), desc="paired forward", unit="batch"):
        batch = torch.as_tensor(tokens[start:start + batch_rows], dtype=torch.long, device=subject.device)
        with torch.inference_mode():
            _, cache = subject.model.run_with_cache(batch, names_filter=list(hooks), stop_at_layer=stop)
        rows = slice(start * context, (start + len(batch)) * context)
        for name, key in hooks.items():
            out[key][rows] = cache[name].float().reshape(-1, subject.d_model).cpu().numpy()
    return out


def previous_ids(ids_rows: np.ndarray) -> np.ndarray:
    """The previous token's id at every position of ``[rows, T]`` (-1 at position 0), flattened."""
    prev = np.full_like(ids_rows, -1)
    prev[:, 1:] = ids_rows[:, :-1]
    return prev.reshape(-1)
