"""SAE evaluation stage on held-out tokens.

Works for any SAELens ``SAE`` (trained here or loaded from the hub) whose ``d_in`` and hook
match the activation cache; a mismatch fails with one line before any compute.

Reconstruction metrics stream over the held-out rows in chunks (float64 accumulators) and are
reported with AND without special tokens (BOS/EOS/PAD and position 0, where |x| ~ 1e5):

- ``fvu``: SAELens's definition, E‖x − x̂‖² / (E‖x‖² − ‖E x‖²), variance around the mean;
  ``explained_variance`` = 1 − fvu;
- L0: mean, quantiles and a histogram; dead and dense feature fractions
  (:mod:`darkmatter.sae.features`: one definition for every stage).

LM metrics run the model on ``lm_rows`` held-out rows with the residual at the SAE's hook
replaced by the reconstruction: at non-special positions only (the default splice) and at every
position, plus zero-ablation of the non-special positions for scale. Reported: mean next-token
loss, Δloss against the clean model, KL(clean ‖ spliced), and the fraction of the zero-ablation
loss gap that the reconstruction recovers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from darkmatter.data.activations import ActivationCache
from darkmatter.data.split import row_tokens, split_rows
from darkmatter.errors import NonFiniteError, cli
from darkmatter.sae.features import dead_fraction
from darkmatter.sae.io import check_compatible

L0_BINS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**9)


def heldout_tokens(cache: ActivationCache, heldout_fraction: float) -> np.ndarray:
    """Flat ids of every token in the held-out rows (special tokens included; masks come later)."""
    _, rows = split_rows(cache.meta["n_rows"], heldout_fraction)
    return row_tokens(rows, cache.meta["context_length"])


class _Moments:
    """Streaming sums for FVU on one token subset."""

    def __init__(self, d: int):
        self.n, self.err, self.sq, self.sum = 0, 0.0, 0.0, np.zeros(d)

    def add(self, x: np.ndarray, err: np.ndarray) -> None:
        self.n += len(x)
        self.err += float(err.sum())
        self.sq += float((x.astype(np.float64) ** 2).sum())
        self.sum += x.sum(axis=0, dtype=np.float64)

    def fvu(self) -> float:
        variance = self.sq - float(self.sum @ self.sum) / self.n
        return self.err / variance


def reconstruction_stats(sae, acts: np.ndarray, special: np.ndarray, index: np.ndarray, dense_threshold: float, chunk: int = 8192) -> dict:
    """FVU, L0 and feature-frequency statistics streamed over ``index``."""
    import torch

    moments = {"all": _Moments(acts.shape[1]), "nonspecial": _Moments(acts.shape[1])}
    fires = np.zeros(sae.cfg.d_sae, dtype=np.int64)
    l0_nonspecial = []
    l0_all_sum = 0
    for lo in tqdm(range(0, len(index), chunk), desc="SAE eval", unit="chunk"):
        ids = index[lo : lo + chunk]
        x = np.asarray(acts[ids], dtype=np.float32)
        with torch.no_grad():
            feats = sae.encode(torch.from_numpy(x).to(sae.W_dec.device))
            x_hat = sae.decode(feats).cpu().numpy()
        active = (feats > 0).cpu().numpy()
        if not np.isfinite(x_hat).all():
            raise NonFiniteError(f"NaN/inf in SAE reconstructions of held-out tokens {ids[0]}..{ids[-1]}")
        err = ((x.astype(np.float64) - x_hat) ** 2).sum(axis=1)
        keep = ~special[ids]
        moments["all"].add(x, err)
        moments["nonspecial"].add(x[keep], err[keep])
        l0 = active.sum(axis=1)
        l0_all_sum += int(l0.sum())
        l0_nonspecial.append(l0[keep])
        fires += active[keep].sum(axis=0)
    l0s = np.concatenate(l0_nonspecial)
    n_nonspecial = moments["nonspecial"].n
    frequency = fires / n_nonspecial
    counts, _ = np.histogram(l0s, bins=L0_BINS)
    fvu = {name: m.fvu() for name, m in moments.items()}
    return {
        "n_tokens": moments["all"].n,
        "n_tokens_nonspecial": n_nonspecial,
        "fvu": fvu["nonspecial"],
        "fvu_with_special": fvu["all"],
        "explained_variance": 1 - fvu["nonspecial"],
        "explained_variance_with_special": 1 - fvu["all"],
        "l0": float(l0s.mean()),
        "l0_with_special": l0_all_sum / moments["all"].n,
        "l0_quantiles": {q: float(np.quantile(l0s, float(q))) for q in ("0.1", "0.5", "0.9", "0.99")},
        "l0_histogram": {"bin_edges": list(L0_BINS[:-1]) + ["inf"], "counts": counts.tolist()},
        "dead_fraction": dead_fraction(fires),
        "dense_fraction": float((frequency > dense_threshold).mean()),
        "dense_threshold": dense_threshold,
        "all_dead": bool((fires == 0).all()),
    }


def loss_and_kl(subject, finals, targets, vocab_chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token loss of each variant and summed KL(clean ‖ variant), streaming the vocabulary.

    ``finals`` is ``[k, n, d_model]`` (final-layer residuals of ``k`` variants of the same ``n``
    predictions, variant 0 the clean one); ``targets`` is ``[n]``. The unembedding runs one
    vocabulary slice at a time for all variants together (one GEMM per slice, W_U read once),
    keeping online sums in float64 like a streaming softmax: per row the running max m and
    s = Σ exp(z − m) (so logsumexp = m + log s), and per variant T_q = Σ exp(z_clean − m_clean)·z_q.
    Then loss = logsumexp(z) − z_target and, with p the clean distribution,
    KL(p ‖ q) = (T_clean − T_q)/s_clean − logsumexp(z_clean) + logsumexp(z_q).
    No vocabulary-wide tensor is ever built, so the cost is the GEMM plus a few passes over
    each slice.
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
        inside = (target >= lo) & (target < hi)
        rows = inside.nonzero()[:, 0]
        target_logit[rows] = z[rows, target[rows] - lo].double()
    lse = (running_max + sum_exp.log()).reshape(k, n)
    loss = (lse - target_logit.reshape(k, n)).sum(dim=1)
    expected = clean_dot / sum_exp[:n]  # E_p[z_q] per variant
    kl = ((expected[0] - lse[0]) - (expected - lse)).sum(dim=1)
    return loss.cpu().numpy(), kl.cpu().numpy()


def lm_stats(subject, sae, tokens: np.ndarray, special: np.ndarray, layer: int, site: str, batch_rows: int) -> dict:
    """Loss and KL with the reconstruction spliced in at ``layer``/``site`` (tokens/special are ``[rows, T]``).

    The clean forward stops at the SAE's site; the clean, spliced and zero-ablated residuals each
    continue from there, stacked as one batch (:meth:`SubjectModel.final_residual`), so the blocks
    before the site run once per batch; :func:`loss_and_kl` then unembeds all four together.
    """
    import torch

    names = ("clean", "spliced", "spliced_all", "zero_ablated")
    sums = dict.fromkeys(names, 0.0)
    kl = {"spliced": 0.0, "spliced_all": 0.0}
    n_predictions = 0
    for lo in tqdm(range(0, len(tokens), batch_rows), desc="LM loss with SAE", unit="batch"):
        batch = torch.from_numpy(tokens[lo : lo + batch_rows].astype(np.int64))
        keep = torch.from_numpy(~special[lo : lo + batch_rows])[..., None]
        resid = subject.activations(batch, layer, site)
        with torch.inference_mode():
            recon = sae(resid.to(sae.W_dec.device)).to(resid.device)
            keep = keep.to(resid.device)
            variants = (resid, torch.where(keep, recon, resid), recon, torch.where(keep, torch.zeros_like(resid), resid))
            finals = subject.final_residual(torch.cat(variants), layer, site)[:, :-1]  # one forward for all four
            finals = finals.reshape(len(variants), -1, resid.shape[-1])
            losses, kls = loss_and_kl(subject, finals, batch[:, 1:].reshape(-1))
        for name, value in zip(names, losses):
            sums[name] += float(value)
        for name in kl:
            kl[name] += float(kls[names.index(name)])
        n_predictions += batch[:, 1:].numel()
    loss = {name: total / n_predictions for name, total in sums.items()}
    gap = loss["zero_ablated"] - loss["clean"]
    return {
        "n_rows": int(len(tokens)),
        "n_predictions": n_predictions,
        "loss_clean": loss["clean"],
        "loss_spliced": loss["spliced"],
        "loss_spliced_all_positions": loss["spliced_all"],
        "loss_zero_ablated": loss["zero_ablated"],
        "delta_loss": loss["spliced"] - loss["clean"],
        "delta_loss_all_positions": loss["spliced_all"] - loss["clean"],
        "delta_loss_zero_ablation": gap,
        "kl": kl["spliced"] / n_predictions,
        "kl_all_positions": kl["spliced_all"] / n_predictions,
        "loss_recovered": (loss["zero_ablated"] - loss["spliced"]) / gap if gap else None,
    }


def evaluate(sae, cache: ActivationCache, heldout_fraction: float, dense_threshold: float) -> dict:
    check_compatible(sae, cache)
    index = heldout_tokens(cache, heldout_fraction)
    special = np.asarray(cache.special)
    return reconstruction_stats(sae, cache.acts, special, index, dense_threshold)


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import add_run_arguments, run_from_args
    from darkmatter.data.models import load_run_subject
    from darkmatter.sae.io import load_sae, to_device

    parser = argparse.ArgumentParser(description="Evaluate an SAE on held-out tokens (reconstruction and LM loss).")
    add_run_arguments(parser)
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True, help="the run's model directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--lm-rows", type=int, default=None, help="override sae_eval.lm_rows (the sweep)")
    args = parser.parse_args(argv)
    run = run_from_args(args)
    cache = ActivationCache.open(args.cache)
    sae = to_device(load_sae(args.sae), run.subject.device)
    report = {"sae": str(args.sae), "hook_name": cache.meta["hook_name"], "d_sae": sae.cfg.d_sae}
    report |= evaluate(sae, cache, run.sae.heldout_fraction, run.sae_eval.dense_threshold)
    lm_rows = args.lm_rows or run.sae_eval.lm_rows
    _, rows = split_rows(cache.meta["n_rows"], run.sae.heldout_fraction)
    rows = rows[:lm_rows]
    context = cache.meta["context_length"]
    tokens = np.asarray(cache.tokens).reshape(-1, context)[rows]
    special = np.asarray(cache.special).reshape(-1, context)[rows]
    subject = load_run_subject(run, args.weights)
    report["lm"] = lm_stats(subject, sae, tokens, special, run.layer, run.subject.site, run.sae_eval.lm_batch_rows)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
