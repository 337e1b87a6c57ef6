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
(μ = 0 for projection; for an edit of the dark matter, r_p = x_p − SAE(x_p) and its mean in place
of x_p and μ); units are ranked by the magnitude Σ_p |·| (see ``predicted_effects``). Activation × gradient attributions, f_u(p) · (g_p · d_u) summed over a
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
    residual: "torch.Tensor | None" = None  # noqa: F821  [b, T, d] r = x − SAE(x), where an edit needs it


def with_residual(data: list[Batch], sae, chunk_tokens: int) -> list[Batch]:
    """The batches with r = x − SAE(x) attached (computed once per batch, not once per edit)."""
    import torch

    from darkmatter.analysis.stream import reconstruct

    for batch in data:
        with torch.no_grad():
            flat = batch.resid.reshape(-1, batch.resid.shape[-1])
            batch.residual = (flat - reconstruct(sae, flat, chunk_tokens)).reshape(batch.resid.shape)
    return data


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


def loss_and_kl(subject, finals, targets, vocab_chunk: int = 16384):
    """Next-token loss of every prediction of each variant, and its KL(clean ‖ variant), streaming the vocabulary.

    ``finals`` is ``[k, n, d_model]`` (final-layer residuals of ``k`` variants of the same ``n``
    predictions, variant 0 the clean one); ``targets`` is ``[n]``; returns two ``[k, n]`` float64
    tensors. The unembedding runs one vocabulary slice at a time for all variants together (one
    GEMM per slice, W_U read once), keeping online sums in float64 like a streaming softmax: per
    prediction the running max m and s = Σ exp(z − m) (so logsumexp = m + log s), and per variant
    T_q = Σ exp(z_clean − m_clean)·z_q. Then loss = logsumexp(z) − z_target and, with p the clean
    distribution, KL(p ‖ q) = (T_clean − T_q)/s_clean − logsumexp(z_clean) + logsumexp(z_q).
    No vocabulary-wide tensor is ever built: fresh 262k-wide tensors cost page faults and several
    passes each, which made a full log-softmax and KL per variant ~2× slower on CPU.
    """
    import torch

    k, n, d = finals.shape
    normed = subject.normalise_final(finals.reshape(k * n, d))
    vocab = subject.model.cfg.d_vocab_out
    dev = normed.device
    running_max = torch.full((k * n,), -torch.inf, dtype=torch.float64, device=dev)
    sum_exp = torch.zeros(k * n, dtype=torch.float64, device=dev)
    clean_dot = torch.zeros(k, n, dtype=torch.float64, device=dev)
    target_logit = torch.zeros(k * n, dtype=torch.float64, device=dev)
    target = targets.to(dev).repeat(k)
    width = min(vocab_chunk, vocab)
    z_buf = torch.empty(k * n, width, device=dev, dtype=normed.dtype)
    e_buf = torch.empty_like(z_buf)
    for lo in range(0, vocab, width):
        hi = min(lo + width, vocab)
        z = subject.unembed(normed, slice(lo, hi), out=z_buf[:, : hi - lo])
        new_max = torch.maximum(running_max, z.amax(dim=1).double())
        rescale = torch.exp(running_max - new_max)
        e = torch.sub(z, new_max[:, None].to(z.dtype), out=e_buf[:, : hi - lo]).exp_()
        sum_exp = sum_exp * rescale + e.sum(dim=1).double()
        clean_weights = e[:n]
        clean_dot = clean_dot * rescale[:n] + torch.stack(
            [torch.linalg.vecdot(clean_weights, z[q * n : (q + 1) * n]).double() for q in range(k)]
        )
        running_max = new_max
        rows = ((target >= lo) & (target < hi)).nonzero()[:, 0]
        target_logit[rows] = z[rows, target[rows] - lo].double()
    lse = (running_max + sum_exp.log()).reshape(k, n)
    expected = clean_dot / sum_exp[:n]  # E_p[z_q] per variant
    return lse - target_logit.reshape(k, n), (expected[0] - lse[0]) - (expected - lse)


Edit = Callable[["torch.Tensor", Batch], "torch.Tensor"]  # noqa: F821


def prediction_effects(subject, layer: int, site: str, data: list[Batch], edits: dict[str, Edit], desc: str,
                       variants_per_forward: int = 8) -> dict:
    """Every read-out prediction's clean loss, and per edit its loss and KL, over the batches ``data``.

    Returns ``clean_loss`` and ``scored`` ([rows, P]) and per edit ``{"loss", "kl"}`` ([rows, P]);
    unscored predictions are kept (``scored`` says which count), so a caller can read any subset.
    The clean and edited residuals of a batch continue through the model stacked,
    ``variants_per_forward`` at a time (larger GEMMs), and are unembedded together (:func:`loss_and_kl`).
    """
    import torch

    names = list(edits)
    out = {"clean_loss": [], "scored": [], **{name: {"loss": [], "kl": []} for name in names}}
    with tqdm(total=len(data) * (len(names) + 1), desc=desc, unit="variant") as bar:
        for batch in data:
            b, positions = len(batch.rows), batch.positions
            with torch.inference_mode():
                variants = [batch.resid] + [edits[name](batch.resid, batch) for name in names]
                finals = []
                for lo in range(0, len(variants), variants_per_forward):
                    group = variants[lo : lo + variants_per_forward]
                    finals.append(subject.final_residual(torch.cat(group), layer, site)[:, positions])
                    bar.update(len(group))
                finals = torch.cat(finals).reshape(len(variants), b * len(positions), -1)
                loss, kl = loss_and_kl(subject, finals, batch.targets.reshape(-1))
            loss, kl = loss.reshape(len(variants), b, -1), kl.reshape(len(variants), b, -1)
            finite = torch.isfinite(loss) & torch.isfinite(kl)
            bad = ~finite & batch.scored
            if bad.any():
                variant, row = (int(i) for i in bad.nonzero()[0, :2])
                raise NonFiniteError(f"NaN/inf in the forward with {(['clean'] + names)[variant]} applied, cache row "
                                     f"{int(batch.rows[row])}; check the edit (a zero or NaN vector) and the cached activations")
            out["clean_loss"].append(loss[0].float().cpu().numpy())
            out["scored"].append(batch.scored.cpu().numpy())
            for i, name in enumerate(names, start=1):
                out[name]["loss"].append(loss[i].float().cpu().numpy())
                out[name]["kl"].append(kl[i].float().cpu().numpy())
    for key in ("clean_loss", "scored"):
        out[key] = np.concatenate(out[key])
    for name in names:
        out[name] = {key: np.concatenate(values) for key, values in out[name].items()}
    return out


def per_row(values: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Mean over each row's scored predictions ([rows, P] -> [rows])."""
    return (values * scored).sum(1) / np.maximum(scored.sum(1), 1)


def edit_effects(subject, layer: int, site: str, data: list[Batch], edits: dict[str, Edit], desc: str) -> dict:
    """Per-row clean loss, and per edit the per-row Δloss and KL, over the batches ``data``."""
    effects = prediction_effects(subject, layer, site, data, edits, desc)
    scored = effects["scored"]
    clean = per_row(effects["clean_loss"], scored)
    return {"clean_loss": clean, **{name: {"delta_loss": per_row(effects[name]["loss"], scored) - clean,
                                           "kl": per_row(effects[name]["kl"], scored)} for name in edits}}


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


def predicted_effects(g: Gradients, directions: np.ndarray, mean: np.ndarray | None = None,
                      space: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """Attribution patching of removing each unit direction: per row [rows, n], the first-order
    Δloss −Σ_p ((v_p − μ)·v̂)(g_p·v̂), and its magnitude Σ_p |((v_p − μ)·v̂)(g_p·v̂)|, with v the
    edit space's vector (``x``, or ``r`` = x − SAE(x), attached by :func:`with_residual`) and μ its mean.

    The magnitude ranks units. The signed sum is near zero for any direction a calibrated model
    uses: the expected gradient of the log loss vanishes at its optimum, so the gains on confident
    tokens and the losses on surprising ones cancel to first order (``tests/causal``); the exact
    ablations carry the sign and size of the effect.
    """
    import torch

    signed, magnitude = [], []
    for batch, grad in zip(g.batches, g.grads):
        dirs = torch.as_tensor(directions, dtype=grad.dtype, device=grad.device)
        v = batch.resid if space == "x" else batch.residual
        x = v if mean is None else v - torch.as_tensor(mean, dtype=grad.dtype, device=grad.device)
        terms = ((x * batch.edit[..., None]) @ dirs.T) * (grad @ dirs.T)
        signed.append((-terms.sum(1)).cpu().numpy())
        magnitude.append(terms.abs().sum(1).cpu().numpy())
    return np.concatenate(signed), np.concatenate(magnitude)


def attributions(g: Gradients, group, sae, chunk_tokens: int) -> np.ndarray:
    """Activation × gradient per row and unit: Σ_p f_u(p) (g_p · w_u), with f_u what unit u reads
    from (x, r = x − SAE(x)) and w_u what it writes (``darkmatter.causal.units``); the SAE runs
    ``chunk_tokens`` rows at a time."""
    import torch

    from darkmatter.analysis.stream import reconstruct

    out = []
    for batch, grad in zip(g.batches, g.grads):
        with torch.no_grad():
            flat = batch.resid.reshape(-1, batch.resid.shape[-1])
            r = flat - reconstruct(sae, flat, chunk_tokens) if batch.residual is None else batch.residual.reshape(flat.shape)
            acts = group.read(flat, r).reshape(*batch.resid.shape[:2], -1)
            w = torch.as_tensor(group.write, dtype=grad.dtype, device=grad.device)
            out.append((acts * batch.edit[..., None] * (grad @ w.T)).sum(1).cpu().numpy())
    return np.concatenate(out)
