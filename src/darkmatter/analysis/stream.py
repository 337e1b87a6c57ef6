"""x, SAE latents and r = x − SAE(x), streamed in token chunks whose latents fit a memory budget.

Every latent-sized pass (residual statistics, whitening for ICA, unit activations) goes through
:func:`stream`, so 262k- and 1M-wide SAEs run in the same code as the default 4k one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from darkmatter.errors import NonFiniteError

#: Latent-sized float32 buffers alive at once in ``SAE.encode`` (pre-activations, latents).
LATENT_COPIES = 2
MAX_CHUNK_TOKENS = 8192


def latent_chunk_tokens(d_sae: int, budget_bytes: int) -> int:
    """Tokens per SAE chunk so the chunk's latents fit ``budget_bytes``."""
    return int(max(1, min(MAX_CHUNK_TOKENS, budget_bytes // (d_sae * 4 * LATENT_COPIES))))


@dataclass
class Chunk:
    """One chunk of the stream: flat token ids and tensors on the SAE's device."""

    ids: np.ndarray
    x: "torch.Tensor"  # noqa: F821
    latents: "torch.Tensor"  # noqa: F821
    r: "torch.Tensor"  # noqa: F821
    #: Pre-activations W_enc·x + b_enc (what the encoder reads linearly), when asked for.
    preacts: "torch.Tensor | None" = None  # noqa: F821


def stream(sae, acts: np.ndarray, index: np.ndarray, chunk_tokens: int, desc: str = "residual",
           preacts: bool = False) -> Iterator[Chunk]:
    """Yield x, SAE latents and r = x − SAE(x) for the tokens ``index``, chunk by chunk.

    With ``preacts`` the chunk also carries the SAE's pre-activations, read from its
    ``hook_sae_acts_pre`` hook point (every SAELens architecture has it) during the same encode.
    Raises :class:`NonFiniteError` naming the token range if x or r holds NaN/inf.
    """

    device = sae.W_dec.device
    captured = []
    handle = (sae.hook_sae_acts_pre.register_forward_hook(lambda _m, _i, out: captured.append(out))
              if preacts else None)
    try:
        yield from _chunks(sae, acts, index, chunk_tokens, desc, device, captured)
    finally:
        if handle is not None:
            handle.remove()


def _chunks(sae, acts, index, chunk_tokens, desc, device, captured) -> Iterator[Chunk]:
    import torch

    for lo in tqdm(range(0, len(index), chunk_tokens), desc=desc, unit="chunk"):
        ids = index[lo : lo + chunk_tokens]
        x = torch.from_numpy(np.asarray(acts[ids], dtype=np.float32)).to(device)
        captured.clear()
        with torch.no_grad():
            latents = sae.encode(x)
            r = x - sae.decode(latents)
        if not (torch.isfinite(x).all() and torch.isfinite(r).all()):
            where = "activations" if not torch.isfinite(x).all() else "SAE reconstructions"
            raise NonFiniteError(
                f"NaN/inf in the {where} of tokens {ids[0]}..{ids[-1]}; "
                "rebuild the cache (`dvc repro -f activations@<run>`) or check the SAE weights"
            )
        yield Chunk(ids, x, latents, r, captured[0] if captured else None)
