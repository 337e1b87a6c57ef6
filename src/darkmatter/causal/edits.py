"""Edits of the residual at the hook, and the directions and subspaces they remove.

A direction v̂ (unit norm) is *projected out*: (v·v̂) v̂ removed, or *mean-ablated*: ((v − μ)·v̂) v̂
removed, which keeps the direction's average and removes only its variation. A set of directions
is removed as the span of their orthonormalised basis Q: (v − μ) Q Qᵀ (μ = 0 for projection).
Edits apply at non-special positions only, as the SAE splice does.

What is projected is the *edit space*:

- ``r``, the dark matter: x' = SAE(x) + r − ((r − μ_r) Q) Qᵀ, i.e. x − ((r − μ_r) Q) Qᵀ with
  r = x − SAE(x). Only the residual changes; whatever the SAE reconstructs along Q stays. This
  is the question the paper asks of the dark matter (``remove_from_residual``);
- ``x``, the activation: x − ((x − μ_x) Q) Qᵀ, which also removes what the SAE reconstructs along
  Q (``remove``): a statement about the direction in the model, not about the dark matter.

The units of a run, all as directions in activation space:

- ICA components: their mixing directions a_j (what each writes; ``darkmatter.analysis.ica``);
- SAE features: their decoder rows (the density-matched partner of each component);
- random units: mixing directions V Λ^{1/2} q of random unit q in the ICA's whitened space, the
  same family ICA's directions come from.

Subspaces for the Deng et al. comparison: the m most kurtotic ICA directions, the top-m principal
directions of r, and random m-dimensional subspaces V Λ^{1/2} Q_mᵀ. The span of all k mixing
directions *is* the top-k PCA subspace (ICA only rotates inside it), so at m = k the three
coincide: a check that the code agrees with the algebra, not a finding.
"""

from __future__ import annotations

import numpy as np


def orthonormal(directions: np.ndarray) -> np.ndarray:
    """An orthonormal basis [d, m] of the span of the rows of ``directions`` [m, d]."""
    q, _ = np.linalg.qr(np.asarray(directions, dtype=np.float64).T)
    return q


def remove(x, basis, mean, mask):
    """x − ((x − mean) Q) Qᵀ at the positions ``mask`` (torch; ``basis`` Q [d, m]; mean 0 = projection)."""
    import torch

    q = basis.to(x.dtype)
    edited = x - ((x - mean) @ q) @ q.T
    return torch.where(mask[..., None], edited, x)


def remove_from_residual(x, r, basis, mean, mask):
    """x − ((r − mean) Q) Qᵀ at the positions ``mask``: the span of Q removed from the dark matter
    r = x − SAE(x) alone (torch; ``basis`` Q [d, m]; ``mean`` μ_r, 0 = projection)."""
    import torch

    q = basis.to(x.dtype)
    edited = x - ((r - mean) @ q) @ q.T
    return torch.where(mask[..., None], edited, x)


def spectrum_bands(n_dims: int, first: int = 8) -> list[tuple[int, int]]:
    """Principal-component bands [lo, hi) that double in width: [0, 8), [8, 16), [16, 32), ... up to ``n_dims``."""
    bands, lo, hi = [], 0, first
    while lo < n_dims:
        bands.append((lo, min(hi, n_dims)))
        lo, hi = hi, 2 * hi
    return bands


def random_whitened_directions(components: dict, n: int, seed: int) -> np.ndarray:
    """Mixing directions V Λ^{1/2} q of ``n`` random unit q in the whitened space, as unit rows."""
    from darkmatter.stats import random_unit_directions

    q = random_unit_directions(n, components["pca_basis"].shape[1], seed)
    dirs = (q * components["pca_scale"][None, :]) @ components["pca_basis"].T
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def subspaces(components: dict, m: int, n_random: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Orthonormal bases of the m-dimensional subspaces compared: ICA (most kurtotic), PCA (top m)
    and ``n_random`` random rotations of the whitened space."""
    from darkmatter.stats import random_rotation

    basis, scale = components["pca_basis"], components["pca_scale"]
    k = basis.shape[1]
    order = np.argsort(-components["kurtosis"], kind="stable")[:m]
    rng = np.random.default_rng(seed)
    random = [orthonormal((random_rotation(k, rng)[:m] * scale[None, :]) @ basis.T) for _ in range(n_random)]
    return {"ica": [orthonormal(components["mixing"][order])], "pca": [basis[:, :m]], "random": random}
