"""What an edit of the layer-L residual does to the model's next-token predictions.

The forward continues from the cached layer-L activations (``SubjectModel.logprobs_from``): the
layers up to L are never recomputed. For each batch of held-out rows the clean continuation is
computed once, then every edit; per row we keep the mean next-token loss and the mean
KL(clean ‖ edited) over the *scored* predictions: those made at a non-special position for a
non-special target, so special tokens are out of the loss as they are out of the edits.

Edits apply at every position; the loss is read out at ``causal.positions_per_row`` positions
spread over each row (an unbiased subsample of the row's predictions). The unembedding
(d_model × 262k for Gemma 3) and the full-vocabulary softmax and KL are most of a forward from
a middle layer, so reading out a quarter of the positions makes each edit about 3× cheaper.

The cheap ranking is attribution patching: one forward and backward pass gives g = ∂loss/∂x at
the hook, and removing direction v̂ changes each row's loss by about −Σ_p ((x_p − μ)·v̂)(g_p·v̂)
(μ = 0 for projection); units are ranked by the magnitude Σ_p |·| (see ``predicted_effects``). Activation × gradient attributions, f_u(p) · (g_p · d_u) summed over a
row, use the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from darkmatter.errors import NonFiniteError


def scored_positions(context: int, n: int) -> np.ndarray:
    """``n`` prediction positions spread evenly over a row (position p predicts token p + 1)."""
    return np.unique(np.linspace(1, context - 2, min(n, context - 2)).round().astype(np.int64))


@dataclass
class Batch:
    rows: np.ndarray  # cache row ids
    resid: "torch.Tensor"  # noqa: F821  [b, T, d] cached layer-L activations
    edit: "torch.Tensor"  # noqa: F821  [b, T] bool: non-special positions (edited)
    positions: "torch.Tensor"  # noqa: F821  [P] the prediction positions read out
    targets: "torch.Tensor"  # noqa: F821  [b, P] next tokens at those positions
    scored: "torch.Tensor"  # noqa: F821  [b, P] bool: non-special position and target (in the loss)


def batches(cache, rows: np.ndarray, batch_rows: int, positions: np.ndarray, device: str) -> Iterator[Batch]:
    """Held-out ``rows`` of the cache in batches, with their activations, targets and masks."""
    import torch

    context = cache.meta["context_length"]
    tokens = np.asarray(cache.tokens).reshape(-1, context)
    special = np.asarray(cache.special).reshape(-1, context)
    for lo in range(0, len(rows), batch_rows):
        ids = rows[lo : lo + batch_rows]
        flat = (ids[:, None] * context + np.arange(context)[None, :]).reshape(-1)
        acts = np.asarray(cache.acts[flat], dtype=np.float32).reshape(len(ids), context, -1)
        edit = ~special[ids]
        scored = edit[:, positions] & edit[:, positions + 1]
        yield Batch(ids, torch.from_numpy(acts).to(device), torch.from_numpy(edit).to(device),
                    torch.from_numpy(positions).to(device),
                    torch.from_numpy(tokens[ids][:, positions + 1].astype(np.int64)).to(device),
                    torch.from_numpy(scored).to(device))


def forward(subject, resid, layer: int, site: str, batch: Batch, grad: bool = False):
    """Log-probabilities [b, P, vocab] at the batch's prediction positions, from the layer-L residual."""
    return subject.logprobs_from(resid, layer, site, positions=batch.positions, grad=grad)


def row_loss(logp, batch: Batch):
    """Mean next-token cross-entropy per row over the scored predictions."""
    nll = -logp.gather(-1, batch.targets[..., None])[..., 0]
    return (nll * batch.scored).sum(1) / batch.scored.sum(1).clamp_min(1)


def row_kl(clean_p, clean, logp, batch: Batch):
    """Mean KL(clean ‖ edited) per row over the scored predictions (``clean_p`` = exp(clean))."""
    kl = (clean_p * (clean - logp)).sum(-1)
    return (kl * batch.scored).sum(1) / batch.scored.sum(1).clamp_min(1)


Edit = Callable[["torch.Tensor", Batch], "torch.Tensor"]  # noqa: F821


def edit_effects(subject, layer: int, site: str, data: list[Batch], edits: dict[str, Edit], desc: str) -> dict:
    """Per-row clean loss, and per edit the per-row Δloss and KL, over the batches ``data``."""
    import torch

    out = {"clean_loss": [], **{name: {"delta_loss": [], "kl": []} for name in edits}}
    with tqdm(total=len(data) * len(edits), desc=desc, unit="edit") as bar:
        for batch in data:
            clean = forward(subject, batch.resid, layer, site, batch)
            clean_p = clean.exp()
            clean_loss = row_loss(clean, batch)
            out["clean_loss"].append(clean_loss.cpu().numpy())
            for name, edit in edits.items():
                with torch.inference_mode():
                    logp = forward(subject, edit(batch.resid, batch), layer, site, batch)
                    loss, kl = row_loss(logp, batch), row_kl(clean_p, clean, logp, batch)
                if not (torch.isfinite(loss).all() and torch.isfinite(kl).all()):
                    bad = int(batch.rows[int((~torch.isfinite(loss) | ~torch.isfinite(kl)).nonzero()[0])])
                    raise NonFiniteError(f"NaN/inf in the forward with {name} ablated, cache row {bad}; "
                                         "check the direction (a zero or NaN vector) and the cached activations")
                out[name]["delta_loss"].append((loss - clean_loss).cpu().numpy())
                out[name]["kl"].append(kl.cpu().numpy())
                bar.update(1)
    out["clean_loss"] = np.concatenate(out["clean_loss"])
    for name in edits:
        out[name] = {key: np.concatenate(values) for key, values in out[name].items()}
    return out


@dataclass
class Gradients:
    """x and g = ∂(row mean loss)/∂x at the hook, for every batch of the attribution rows."""

    batches: list[Batch]
    grads: list["torch.Tensor"]  # noqa: F821


def gradients(subject, layer: int, site: str, data: list[Batch]) -> Gradients:
    grads = []
    for batch in tqdm(data, desc="attribution (forward + backward)", unit="batch"):
        x = batch.resid.clone().requires_grad_(True)
        logp = forward(subject, x, layer, site, batch, grad=True)
        row_loss(logp, batch).sum().backward()
        grads.append(x.grad.detach() * batch.edit[..., None])
    return Gradients(data, grads)


def predicted_effects(g: Gradients, directions: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attribution patching of removing each unit direction: per row [rows, n], the first-order
    Δloss −Σ_p ((x_p − μ)·v̂)(g_p·v̂), and its magnitude Σ_p |((x_p − μ)·v̂)(g_p·v̂)|.

    The magnitude ranks units. The signed sum is near zero for any direction a calibrated model
    uses: the expected gradient of the log loss vanishes at its optimum, so the gains on confident
    tokens and the losses on surprising ones cancel to first order (``tests/causal``); the exact
    ablations carry the sign and size of the effect.
    """
    import torch

    signed, magnitude = [], []
    for batch, grad in zip(g.batches, g.grads):
        dirs = torch.as_tensor(directions, dtype=grad.dtype, device=grad.device)
        x = batch.resid if mean is None else batch.resid - torch.as_tensor(mean, dtype=grad.dtype, device=grad.device)
        terms = ((x * batch.edit[..., None]) @ dirs.T) * (grad @ dirs.T)
        signed.append((-terms.sum(1)).cpu().numpy())
        magnitude.append(terms.abs().sum(1).cpu().numpy())
    return np.concatenate(signed), np.concatenate(magnitude)


def attributions(g: Gradients, group, sae) -> np.ndarray:
    """Activation × gradient per row and unit: Σ_p f_u(p) (g_p · w_u), with f_u what unit u reads
    from (x, r = x − SAE(x)) and w_u what it writes (``darkmatter.causal.units``)."""
    import torch

    out = []
    for batch, grad in zip(g.batches, g.grads):
        with torch.no_grad():
            flat = batch.resid.reshape(-1, batch.resid.shape[-1])
            r = flat - sae.decode(sae.encode(flat))
            acts = group.read(flat, r).reshape(*batch.resid.shape[:2], -1)
            w = torch.as_tensor(group.write, dtype=grad.dtype, device=grad.device)
            out.append((acts * batch.edit[..., None] * (grad @ w.T)).sum(1).cpu().numpy())
    return np.concatenate(out)
