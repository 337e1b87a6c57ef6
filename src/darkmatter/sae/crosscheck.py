"""``sae_eval`` checked against SAELens's own evaluation code, on the same held-out rows.

The numbers every later stage rests on (explained variance, L0, the loss with the SAE spliced
in, KL) come from this project's code: the reconstruction streamed over cached activations
(:func:`darkmatter.sae.reconstruction.reconstruction_stats`) and the forward continued from the cached
layer-L activations with the splice applied (:mod:`darkmatter.causal.effects`,
:mod:`darkmatter.sae.splice`). SAELens computes the same quantities independently: its
``get_sparsity_and_variance_metrics`` reruns the model to the hook and applies ``SAE.encode`` /
``decode``; its ``get_recons_loss`` runs full forwards with its own replacement and
zero-ablation hooks. This module runs both on the same rows under SAELens's conventions and
reports the differences:

- tokens: SAELens ignores special token ids (BOS/EOS/PAD); every row of the cache starts with
  BOS, so that is the cache's own special mask;
- CE loss and KL: over the predictions made at non-special tokens (SAELens masks the input
  token), at every position but a row's last (whose next token is not in the row; SAELens's KL
  covers it too, so its per-token KL is read without it);
- zero ablation: every position, special ones included (SAELens's hook ignores the mask);
- the CE-loss score (SAELens's "loss recovered"): (CE_zero − CE_SAE) / (CE_zero − CE_clean).

SAELens's ``run_evals`` wants an ``ActivationsStore``; its metric functions only ever call the
store's ``get_batch_tokens``, so :class:`RowStore` serves the held-out rows through that one
method.
"""

from __future__ import annotations

import numpy as np

#: |ours − SAELens| allowed on each metric.
TOLERANCE = 1e-3


class RowStore:
    """The one method of SAELens's ``ActivationsStore`` its metric functions call: ``get_batch_tokens``."""

    def __init__(self, tokens: np.ndarray):
        self.tokens, self.next = tokens, 0

    def get_batch_tokens(self, n: int):
        import torch

        batch = self.tokens[self.next : self.next + n]
        self.next += n
        return torch.from_numpy(batch.astype(np.int64))


def saelens_metrics(sae, model, tokens: np.ndarray, special_ids: list[int], batch_rows: int) -> dict:
    """SAELens's explained variance, L0, CE losses and KL on ``tokens`` ([rows, T])."""
    import torch
    from sae_lens.evals import get_recons_loss, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    scaler = ActivationScaler()
    n_batches = -(-len(tokens) // batch_rows)
    sparsity, _ = get_sparsity_and_variance_metrics(
        sae, model, RowStore(tokens), scaler, n_batches=n_batches, compute_l2_norms=False, compute_sparsity_metrics=True,
        compute_variance_metrics=True, compute_featurewise_density_statistics=False, eval_batch_size_prompts=batch_rows,
        model_kwargs={}, ignore_tokens=special_ids)
    sums = {"ce_loss_with_sae": 0.0, "ce_loss_without_sae": 0.0, "ce_loss_with_ablation": 0.0, "kl_div_with_sae": 0.0}
    n = 0
    store = RowStore(tokens)
    for _ in range(n_batches):
        batch = store.get_batch_tokens(batch_rows)
        with torch.no_grad():
            out = get_recons_loss(sae, model, scaler, batch, compute_kl=True, compute_ce_loss=True, ignore_tokens=special_ids)
        keep = ~torch.isin(batch, torch.tensor(special_ids))[:, :-1]
        for name in sums:
            sums[name] += float(out[name].float().cpu()[:, : keep.shape[1]][keep].sum())
        n += int(keep.sum())
    ce = {name: sums[name] / n for name in ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")}
    return {"explained_variance": sparsity["explained_variance"], "l0": sparsity["l0"], **ce,
            "ce_loss_score": (ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"]) / (ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"]),
            "kl_div_with_sae": sums["kl_div_with_sae"] / n}


def our_metrics(subject, sae, cache, rows: np.ndarray, layer: int, site: str, batch_rows: int) -> dict:
    """The same quantities from this project's code, under SAELens's conventions (module docstring)."""
    import torch

    from darkmatter.causal.effects import batches, prediction_effects
    from darkmatter.data.split import row_tokens
    from darkmatter.sae.reconstruction import reconstruction_stats
    from darkmatter.sae.splice import splice_edits

    context = cache.meta["context_length"]
    special = np.asarray(cache.special).reshape(-1, context)[rows]
    recon = reconstruction_stats(sae, cache.acts, np.asarray(cache.special), row_tokens(rows, context), 0.5)
    positions = np.arange(context - 1)
    edits = splice_edits(sae, None, float("inf"), 0, ("nonspecial",))
    edits["zero_everywhere"] = lambda resid, batch: torch.zeros_like(resid)
    effects = prediction_effects(subject, layer, site, list(batches(cache, rows, batch_rows, positions, subject.device)),
                                 edits, "SAELens cross-check (ours)")
    keep = ~special[:, positions]
    ce = {"ce_loss_with_sae": float(effects["nonspecial"]["loss"][keep].mean()),
          "ce_loss_without_sae": float(effects["clean_loss"][keep].mean()),
          "ce_loss_with_ablation": float(effects["zero_everywhere"]["loss"][keep].mean())}
    return {"explained_variance": recon["explained_variance"], "l0": recon["l0"], **ce,
            "ce_loss_score": (ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"]) / (ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"]),
            "kl_div_with_sae": float(effects["nonspecial"]["kl"][keep].mean())}


def crosscheck(subject, sae, cache, rows: np.ndarray, layer: int, site: str, batch_rows: int,
               special_ids: list[int] | None = None) -> dict:
    """Both sides on the cache's ``rows``, their differences, and whether each is within :data:`TOLERANCE`.

    ``special_ids``: the token ids SAELens ignores (default: the cache's special token ids).
    """
    context = cache.meta["context_length"]
    tokens = np.asarray(cache.tokens).reshape(-1, context)[rows]
    special_ids = list(cache.meta["special_token_ids"] if special_ids is None else special_ids)
    theirs = saelens_metrics(sae, subject.model, tokens, special_ids, batch_rows)
    ours = our_metrics(subject, sae, cache, rows, layer, site, batch_rows)
    compared = ("explained_variance", "l0", "ce_loss_score", "kl_div_with_sae")
    differences = {name: abs(ours[name] - theirs[name]) for name in compared}
    return {"rows": [int(r) for r in rows], "tolerance": TOLERANCE, "ours": ours, "saelens": theirs,
            "abs_difference": differences, "agree": all(d <= TOLERANCE for d in differences.values())}
