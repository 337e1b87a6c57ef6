"""An SAE's reconstruction streamed over cached activations: FVU, L0 and feature frequencies.

Its own module so that both ``sae_eval`` (:mod:`darkmatter.sae.evaluate`) and the SAELens
cross-check (:mod:`darkmatter.sae.crosscheck`), which ``sae_eval`` runs, read the same code.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from darkmatter.errors import NonFiniteError
from darkmatter.sae.features import dead_fraction

L0_BINS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**9)


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


def reconstruction_stats(sae, acts: np.ndarray, special: np.ndarray, index: np.ndarray, dense_threshold: float,
                         chunk_tokens: int = 8192) -> dict:
    """FVU, L0 and feature-frequency statistics streamed over ``index``, ``chunk_tokens`` at a time
    (size it with :func:`darkmatter.analysis.stream.latent_chunk_tokens`: a chunk's latents are
    ``chunk_tokens × d_sae`` floats). Firing counts and L0 are reduced on the SAE's device; only
    token-sized vectors and the reconstructions come back to the host."""
    import torch

    from darkmatter.analysis.stream import forward_of

    forward = forward_of(sae)  # SAELens's encode/decode on our arithmetic (one latent-sized buffer, sparse decode)
    device = sae.W_dec.device
    moments = {"all": _Moments(acts.shape[1]), "nonspecial": _Moments(acts.shape[1])}
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=device)
    l0_nonspecial = []
    l0_all_sum = 0
    for lo in tqdm(range(0, len(index), chunk_tokens), desc="SAE eval", unit="chunk"):
        ids = index[lo : lo + chunk_tokens]
        x = np.asarray(acts[ids], dtype=np.float32)
        keep = ~special[ids]
        with torch.no_grad():
            _, feats, nonzero = forward.encode(torch.from_numpy(x).to(device))
            x_hat = forward.decode(feats, nonzero).cpu().numpy()
            active = feats > 0
            del feats, nonzero
            fires += active[torch.from_numpy(keep).to(device)].sum(dim=0)
            l0 = active.sum(dim=1).cpu().numpy()
        if not np.isfinite(x_hat).all():
            raise NonFiniteError(f"NaN/inf in SAE reconstructions of held-out tokens {ids[0]}..{ids[-1]}")
        err = ((x.astype(np.float64) - x_hat) ** 2).sum(axis=1)
        moments["all"].add(x, err)
        moments["nonspecial"].add(x[keep], err[keep])
        l0_all_sum += int(l0.sum())
        l0_nonspecial.append(l0[keep])
    fires = fires.cpu().numpy()
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
