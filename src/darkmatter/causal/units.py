"""The units the causal stage tests, each as what it reads and what it writes.

- ``ica``: component j reads s_j = u_j·(t − μ) (its unmixing filter on the ICA target t) and
  writes its mixing direction a_j;
- ``sae``: the density-matched partner of each component (``examples``) reads its latent and
  writes its decoder row;
- ``random``: s = q·z for random unit q in the ICA's whitened space, writing V Λ^{1/2} q: the
  family ICA's own directions come from, without the optimisation.

Ablations remove the unit-normalised write direction; attributions use the raw one, so that
activation × (gradient · write) is the first-order effect of removing the unit's contribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class UnitGroup:
    kind: str
    ids: np.ndarray  # component index, SAE feature index or random index
    write: np.ndarray  # [n, d] raw write directions
    read: Callable  # (x, r) torch [..., d] -> [..., n] activations

    @property
    def directions(self) -> np.ndarray:
        """Unit-norm write directions (what ablations remove)."""
        return self.write / np.linalg.norm(self.write, axis=1, keepdims=True)

    def names(self, index=None) -> list[str]:
        ids = self.ids if index is None else self.ids[index]
        return [f"{self.kind}-{int(i)}" for i in ids]


def build_units(components: dict, stats: dict, sae, target: str, sae_ids: np.ndarray, n_random: int, seed: int,
                chunk_tokens: int) -> dict[str, UnitGroup]:
    """The three groups; the SAE units' latents are encoded ``chunk_tokens`` rows at a time (the latent budget)."""
    import torch

    from darkmatter.analysis.ica import ica_target
    from darkmatter.analysis.stream import Chunk, latent_subset
    from darkmatter.stats import random_unit_directions

    device = sae.W_dec.device
    mean = torch.as_tensor(components["mean"], device=device)

    def sources(filters: np.ndarray):
        u = torch.as_tensor(filters, device=device)

        def read(x, r):
            t = ica_target(Chunk(None, x, None, r), target, stats)
            return ((t - mean) @ u.T).to(x.dtype)
        return read

    q = random_unit_directions(n_random, components["pca_basis"].shape[1], seed)
    scale, basis = components["pca_scale"], components["pca_basis"]
    feats = torch.as_tensor(sae_ids, device=device)
    w_dec = sae.W_dec.detach()[feats].double().cpu().numpy()  # the chosen rows only: 5.4 GB whole at 4B-262k
    return {
        "ica": UnitGroup("ica", np.arange(len(components["mixing"])), components["mixing"], sources(components["unmixing"])),
        "sae": UnitGroup("sae", np.asarray(sae_ids), w_dec,
                         lambda x, r: latent_subset(sae, x, feats, chunk_tokens)),
        "random": UnitGroup("random", np.arange(n_random), (q * scale[None, :]) @ basis.T,
                            sources((q / scale[None, :]) @ basis.T)),
    }
