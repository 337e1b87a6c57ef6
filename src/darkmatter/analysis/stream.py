"""x, SAE latents and r = x − SAE(x), streamed in token chunks whose latents fit a memory budget.

Every latent-sized pass (residual statistics, whitening for ICA, unit activations) goes through
:func:`stream`, so 262k- and 1M-wide SAEs run in the same code as the default 4k one.

The forward of a plain JumpReLU or ReLU SAE is our own (:class:`SAEForward`), not SAELens's
``encode``/``decode``, for speed on CPU: SAELens's JumpReLU encode makes four latent-sized
elementwise passes after the GEMM (bias, ReLU, mask, product; ~0.8x the GEMM's own time at width
4096), and its decode is a dense GEMM although a trained SAE's latents are ~1% dense. Ours adds the
bias inside the GEMM (a ones column), applies the jump as one threshold in place, and decodes the non-zero latents only
(``embedding_bag``), which is ~6x faster than the dense decode at 1% density. Any other SAE (other
architectures, input normalisation, hooks attached) goes through SAELens unchanged. The two
agree to float32 rounding (tests/analysis/test_stream.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from darkmatter.errors import NonFiniteError

#: Latent-sized float32 buffers alive at once in the encode (pre-activations, latents).
LATENT_COPIES = 2
MAX_CHUNK_TOKENS = 8192
#: ``residual.latent_budget_mb``'s default, for callers given no run (tests/analysis/test_stream.py holds them equal).
DEFAULT_LATENT_BUDGET = 2048 << 20
#: Decode from the non-zero latents below this density; a dense GEMM is faster above (~5% measured).
SPARSE_DECODE_BELOW = 0.02


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
    #: Pre-activations W_enc·x + b_enc (what the encoder reads linearly) of the tokens asked for.
    preacts: "torch.Tensor | None" = None  # noqa: F821
    #: (token, latent) indices of the non-zero latents, as ``latents.nonzero(as_tuple=True)``.
    active: "tuple[torch.Tensor, torch.Tensor] | None" = None  # noqa: F821


def has_plain_forward(sae) -> bool:
    """True for a float32 JumpReLU or ReLU SAE without input normalisation, reshaping or hooks."""
    import torch
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE
    from sae_lens.saes.standard_sae import StandardSAE

    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in sae.modules())
    return (type(sae) in (JumpReLUSAE, StandardSAE) and isinstance(sae.activation_fn, torch.nn.ReLU)
            and sae.cfg.normalize_activations == "none" and sae.cfg.reshape_activations == "none"
            and sae.W_enc.dtype == torch.float32 and not hooked)


class SAEForward:
    """SAELens's ``encode`` and ``decode`` of one SAE, on our own arithmetic when the SAE is plain.

    A JumpReLU latent is h·[h > t] with h = x·W_enc + b_enc (and relu(h) first, so the cut is at
    max(t, 0); a ReLU SAE is t = 0). Built once per stream, the plain path's encoder weight carries
    b_enc − max(t, 0) as an extra row, so one GEMM over [x, 1] gives h − max(t, 0) (``addmm``
    would first copy the bias into the whole [tokens, width] output), one in-place threshold at 0
    applies the jump, and max(t, 0) is added back on the ~1% of entries that fired. A bool mask
    and a masked multiply cost ~4x that threshold on CPU.
    """

    def __init__(self, sae):
        import torch

        self.sae, self.plain = sae, has_plain_forward(sae)
        if self.plain:
            with torch.no_grad():
                self.floor = (sae.threshold.clamp(min=0.0) if hasattr(sae, "threshold")
                              else torch.zeros_like(sae.b_enc))
                self.w_enc_shifted = torch.cat([sae.W_enc, (sae.b_enc - self.floor)[None]])

    def encode(self, x, preact_rows=None):
        """(pre-activations of the rows ``preact_rows`` (a bool mask) or None, latents, active).

        The latents are what SAELens's ``encode`` computes; the pre-activations are its
        ``hook_sae_acts_pre``, copied for the masked rows only (a full copy was ~5% of the residual
        pass); ``active`` is the (token, latent) indices of the non-zero latents.
        """
        import torch
        import torch.nn.functional as F

        sae = self.sae
        if not self.plain:
            captured = []
            handle = (sae.hook_sae_acts_pre.register_forward_hook(lambda _m, _i, out: captured.append(out))
                      if preact_rows is not None else None)
            try:
                latents = sae.encode(x)
            finally:
                if handle is not None:
                    handle.remove()
            pre = captured[0][preact_rows] if handle is not None else None
            return pre, latents, latents.nonzero(as_tuple=True)
        sae_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
        latents = torch.cat([sae_in, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1) @ self.w_enc_shifted
        pre = latents[preact_rows] if preact_rows is not None else None  # a copy: add the floor in place
        if pre is not None:
            pre += self.floor
        F.threshold_(latents, 0.0, 0.0)
        active = latents.nonzero(as_tuple=True)
        latents[active] += self.floor[active[1]]
        return pre, latents, active

    def decode(self, latents, active=None, sparse_below: float = SPARSE_DECODE_BELOW):
        """SAELens's ``decode``; for a plain SAE, from the ``active`` (non-zero) latents when sparse enough."""
        import torch
        import torch.nn.functional as F

        sae = self.sae
        if not self.plain:
            return sae.decode(latents)
        rows, cols = latents.nonzero(as_tuple=True) if active is None else active
        if len(rows) >= sparse_below * latents.numel():
            return torch.addmm(sae.b_dec, latents, sae.W_dec)
        counts = torch.bincount(rows, minlength=len(latents))
        offsets = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(cols, sae.W_dec, offsets, mode="sum", per_sample_weights=latents[rows, cols]) + sae.b_dec

    def __call__(self, x, preacts: bool = False, sparse_below: float = SPARSE_DECODE_BELOW):
        """(pre-activations or None, latents, reconstruction)."""
        import torch

        pre, latents, active = self.encode(x, torch.ones(len(x), dtype=torch.bool, device=x.device) if preacts else None)
        return pre, latents, self.decode(latents, active, sparse_below=sparse_below)


def forward_of(sae) -> SAEForward:
    """The :class:`SAEForward` of ``sae``, built once (its shifted encoder is a d × width copy) and kept
    on the SAE; built again if a parameter changed in place since (their version counters)."""
    versions = tuple((t.data_ptr(), t._version) for t in (*sae.parameters(), *sae.buffers()))
    cached = sae.__dict__.get("_darkmatter_forward")
    if cached is None or cached[0] != versions:
        cached = (versions, SAEForward(sae))
        sae.__dict__["_darkmatter_forward"] = cached
    return cached[1]


def reconstruct(sae, x, chunk_tokens: int):
    """SAE(x) for x [..., d], in the SAE's dtype, ``chunk_tokens`` rows at a time (the latent budget:
    :func:`latent_chunk_tokens`), so a whole batch of rows never becomes one [tokens, width] array."""
    import torch

    forward = forward_of(sae)
    flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
    out = torch.empty_like(flat)
    with torch.no_grad():
        for lo in range(0, len(flat), chunk_tokens):
            _, latents, active = forward.encode(flat[lo : lo + chunk_tokens])
            out[lo : lo + chunk_tokens] = forward.decode(latents, active)
            del latents, active
    return out.reshape(x.shape)


def latent_subset(sae, x, features, chunk_tokens: int):
    """The latents ``features`` (a 1-d index tensor) of x [..., d]: [..., len(features)], encoded in
    ``chunk_tokens`` rows at a time."""
    import torch

    forward = forward_of(sae)
    flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
    out = torch.empty((len(flat), len(features)), dtype=flat.dtype, device=flat.device)
    with torch.no_grad():
        for lo in range(0, len(flat), chunk_tokens):
            out[lo : lo + chunk_tokens] = forward.encode(flat[lo : lo + chunk_tokens])[1][:, features]
    return out.reshape(*x.shape[:-1], len(features))


def stream(sae, acts: np.ndarray, index: np.ndarray, chunk_tokens: int, desc: str = "residual",
           preacts: bool | np.ndarray = False) -> Iterator[Chunk]:
    """Yield x, SAE latents and r = x − SAE(x) for the tokens ``index``, chunk by chunk.

    With ``preacts`` (True, or a bool mask over ``acts``' tokens) the chunk also carries the SAE's
    pre-activations (SAELens's ``hook_sae_acts_pre``) of its tokens (those in the mask). A chunk's
    tensors are released when the next chunk is asked for: copy what must outlive it. Raises
    :class:`NonFiniteError` naming the token range if x or r holds NaN/inf.
    """
    import torch

    device = sae.W_dec.device
    forward = forward_of(sae)
    for lo in tqdm(range(0, len(index), chunk_tokens), desc=desc, unit="chunk"):
        ids = index[lo : lo + chunk_tokens]
        x = torch.from_numpy(np.asarray(acts[ids], dtype=np.float32)).to(device)
        with torch.no_grad():
            rows = None if preacts is False else (
                torch.ones(len(ids), dtype=torch.bool) if preacts is True else torch.from_numpy(preacts[ids]))
            pre, latents, active = forward.encode(x, rows if rows is None else rows.to(device))
            r = x - forward.decode(latents, active)
        if not torch.isfinite(r).all():  # x = r + SAE(x): a NaN/inf in x leaves one in r
            where = "activations" if not torch.isfinite(x).all() else "SAE reconstructions"
            raise NonFiniteError(
                f"NaN/inf in the {where} of tokens {ids[0]}..{ids[-1]}; "
                "rebuild the cache (`dvc repro -s -f activations@<run>`) or check the SAE weights"
            )
        chunk = Chunk(ids, x, latents, r, pre, active)
        yield chunk
        # Valid until the next chunk is asked for: released before it is computed, so that one chunk's
        # latent-sized tensors are alive at a time (the consumer's loop variable would keep them otherwise).
        chunk.x = chunk.latents = chunk.r = chunk.preacts = chunk.active = None
        del x, pre, latents, active, r, chunk
