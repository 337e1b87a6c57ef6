"""What splicing the SAE into the model costs, and why: the reconstruction and its controls as edits.

ΔLM (the rise in next-token loss when x̂ = SAE(x) replaces x at the SAE's layer) says how much
the model notices the error r = x − x̂, not why. Each variant below edits the layer-L residual at
the non-special positions (special tokens, where ‖x‖ ~ 1e5, only where it says so); all are
scored on the same held-out predictions, so any two form a paired comparison:

- **where** the reconstruction goes: ``ordinary`` tokens only, ``nonspecial`` (ordinary and the
  high-norm outliers: the default splice, the paper's ΔLM) and ``all`` positions (special ones
  too); ``zero`` ablation of the non-special positions gives the scale of "loss recovered";
- **is this error special?** ``noise_isotropic``: x + ε with ‖ε‖ = ‖r‖ token by token and a
  uniformly random direction; ``noise_error_covariance``: the same norms, directions drawn from
  N(0, Σ_r), r's own covariance on train tokens (its subspace and spectrum, not its token-by-token
  alignment). An error that costs more than these is pathological in the sense of Gurnee (2024);
  one that costs less is better aligned with what the model ignores;
- **how loss grows with the error**: ``error_0.25`` … x − α r, the error scaled by α (α = 1 is
  ``nonspecial``);
- **which directions carry the loss**: ``error_top_pcs`` applies only r's part along its top
  principal components holding half of var(r) (train tokens), ``error_other_pcs`` only the rest
  (the other half); ``error_without_mean`` applies r minus its train mean (x̂ + r̄). Equal
  variance in the two halves means equal ΔLM if the loss depends on the error's size alone.

The random draws are seeded by the first row of each batch, so a variant's noise does not depend
on the other variants or on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkmatter.causal.effects import Edit

#: The error scales of the error-scale curve (α = 1 is the default splice).
ERROR_SCALES = (0.25, 0.5, 0.75)
#: Every variant, in report order: the default splice and zero ablation are all a curve or axis point needs.
VARIANTS = ("nonspecial", "zero", "ordinary", "all", "noise_isotropic", "noise_error_covariance",
            *(f"error_{a:g}" for a in ERROR_SCALES), "error_top_pcs", "error_other_pcs", "error_without_mean")


@dataclass
class ErrorGeometry:
    """r's mean and covariance eigenbasis on train tokens, and how many top PCs hold half its variance."""

    mean: np.ndarray  # [d]
    eigenvalues: np.ndarray  # [d], descending
    eigenvectors: np.ndarray  # [d, d], columns
    half_variance_pcs: int
    n_tokens: int

    def report(self) -> dict:
        total = float(self.eigenvalues.sum())
        return {"n_tokens": self.n_tokens, "half_variance_pcs": self.half_variance_pcs,
                "top_pcs_variance_fraction": float(self.eigenvalues[: self.half_variance_pcs].sum() / total),
                "mean_norm_squared_fraction": float(self.mean @ self.mean / (total + self.mean @ self.mean))}


def error_geometry(sae, acts: np.ndarray, index: np.ndarray, chunk_tokens: int) -> ErrorGeometry:
    """Mean and covariance of r = x − SAE(x) over the tokens ``index`` (float64 sums)."""
    from darkmatter.analysis.residual import components_for
    from darkmatter.analysis.stream import stream

    d = acts.shape[1]
    total, outer, n = np.zeros(d), np.zeros((d, d)), 0
    for chunk in stream(sae, acts, index, chunk_tokens, desc="error geometry (train tokens)"):
        r = chunk.r.double().cpu().numpy()
        total += r.sum(0)
        outer += r.T @ r
        n += len(r)
    mean = total / n
    eigenvalues, eigenvectors = np.linalg.eigh(outer / n - np.outer(mean, mean))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    return ErrorGeometry(mean, eigenvalues, eigenvectors, components_for(eigenvalues, 0.5), n)


def splice_edits(sae, geometry: ErrorGeometry | None, outlier_threshold: float, seed: int,
                 names: tuple[str, ...] = VARIANTS, budget_bytes: int | None = None) -> dict[str, Edit]:
    """The named variants as edits of a batch's layer-L residual (``batch.edit``: its non-special positions).

    ``outlier_threshold``: a non-special token with ‖x‖ above it is a high-norm outlier
    (:func:`darkmatter.analysis.tokens.classify`). ``geometry`` is needed by the noise and
    error-part variants only. ``budget_bytes`` bounds the latents of the SAE's pass over a batch
    (``residual.latent_budget_mb``; None: its default).
    """
    import torch

    from darkmatter.analysis.stream import DEFAULT_LATENT_BUDGET, latent_chunk_tokens, reconstruct

    chunk_tokens = latent_chunk_tokens(sae.cfg.d_sae, budget_bytes or DEFAULT_LATENT_BUDGET)
    device = sae.W_dec.device

    def tensor(a):
        return torch.as_tensor(a, dtype=torch.float32, device=device)

    if geometry is not None:
        top = tensor(geometry.eigenvectors[:, : geometry.half_variance_pcs])
        mean_error = tensor(geometry.mean)
        colour = tensor(geometry.eigenvectors * np.sqrt(geometry.eigenvalues)[None, :])  # z Cᵀ ~ N(0, Σ_r)

    last = {}  # the last batch's error: its variants all read one SAE pass (prediction_effects edits one batch at a time)

    def error(resid):
        if last.get("resid") is not resid:
            flat = resid.reshape(-1, resid.shape[-1]).to(device)
            last.update(resid=resid, r=(flat - reconstruct(sae, flat, chunk_tokens)).reshape(resid.shape))
        return last["r"]

    def same_norm(resid, r, batch, shaped: bool):
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(batch.rows[0]))
        z = torch.randn(resid.shape, generator=g, device=device)
        if shaped:
            z = z @ colour.T
        return z * (r.norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def variant(name: str):
        def edit(resid, batch):
            where = batch.edit[..., None]
            if name == "zero":
                return torch.where(where, torch.zeros_like(resid), resid)
            r = error(resid)
            if name == "ordinary":
                where = where & (resid.norm(dim=-1, keepdim=True) <= outlier_threshold)
            elif name == "all":
                where = torch.ones_like(where)
            if name in ("nonspecial", "ordinary", "all"):
                new = resid - r
            elif name.startswith("noise_"):
                new = resid + same_norm(resid, r, batch, shaped=name == "noise_error_covariance")
            elif name == "error_top_pcs":
                new = resid - (r @ top) @ top.T
            elif name == "error_other_pcs":
                new = resid - (r - (r @ top) @ top.T)
            elif name == "error_without_mean":
                new = resid - (r - mean_error)
            else:
                new = resid - float(name.removeprefix("error_")) * r
            return torch.where(where, new, resid)
        return edit

    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown splice variants {unknown}; known: {list(VARIANTS)}")
    if geometry is None and any(n.startswith(("noise_", "error_top", "error_other", "error_without")) for n in names):
        raise ValueError("the noise and error-part variants need the error geometry")
    return {name: variant(name) for name in names}
