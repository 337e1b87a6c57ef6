"""Our fused SAE forward equals SAELens's encode and decode, and only plain SAEs take it."""

import numpy as np
import pytest
import torch
from conftest import random_jumprelu_sae

from darkmatter.analysis.stream import SAEForward, has_plain_forward, stream

D, D_SAE = 24, 96


def saelens_forward(sae, x):
    captured = []
    handle = sae.hook_sae_acts_pre.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        latents = sae.encode(x)
    finally:
        handle.remove()
    return captured[0], latents, sae.decode(latents)


def random_sae(kind: str, **cfg):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    if kind == "jumprelu":
        sae = random_jumprelu_sae(D, D_SAE, threshold=0.4)
        for key, value in cfg.items():
            setattr(sae.cfg, key, value)
        return sae
    torch.manual_seed(1)
    sae = {"standard": lambda: StandardSAE(StandardSAEConfig(d_in=D, d_sae=D_SAE, **cfg)),
           "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D, d_sae=D_SAE, k=4, **cfg))}[kind]()
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    return sae.eval()


@pytest.mark.parametrize("kind", ["jumprelu", "standard"])
@pytest.mark.parametrize("apply_b_dec_to_input", [False, True])
@pytest.mark.parametrize("sparse_below", [0.0, 1.0], ids=["dense-decode", "sparse-decode"])
def test_fused_forward_matches_saelens(kind, apply_b_dec_to_input, sparse_below):
    sae = random_sae(kind)
    sae.cfg.apply_b_dec_to_input = apply_b_dec_to_input
    assert has_plain_forward(sae)
    x = torch.randn(300, D) * 3 + 1
    x[::50] *= 100  # a few huge tokens, like position 0
    with torch.no_grad():
        ours, theirs = SAEForward(sae)(x, preacts=True, sparse_below=sparse_below), saelens_forward(sae, x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    fired = theirs[1] > 0
    assert 0 < fired.float().mean() < 1 and torch.equal(ours[1] > 0, fired)
    if kind == "jumprelu":  # the jump: pre-activations in (0, threshold] do not fire
        assert ((theirs[0] > 0) & (theirs[0] <= 0.4)).any()


def test_sparse_decode_handles_tokens_with_no_active_latent():
    sae = random_sae("jumprelu")
    latents = torch.zeros(5, D_SAE)
    latents[1, 3], latents[3, [0, 7]] = 2.0, torch.tensor([1.0, -0.5])
    torch.testing.assert_close(SAEForward(sae).decode(latents, sparse_below=1.0), latents @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("unusual", ["topk", "normalised input", "hook attached", "float64"])
def test_other_saes_go_through_saelens_unchanged(unusual):
    sae = {"topk": lambda: random_sae("topk"),
           "normalised input": lambda: random_sae("standard", normalize_activations="constant_norm_rescale"),
           "hook attached": lambda: random_sae("jumprelu"),
           "float64": lambda: random_sae("jumprelu").double()}[unusual]()
    if unusual == "hook attached":
        sae.hook_sae_acts_post.register_forward_hook(lambda _m, _i, out: out * 0)
    assert not has_plain_forward(sae)
    x = torch.randn(64, D, dtype=sae.W_enc.dtype)
    with torch.no_grad():
        for a, b in zip(SAEForward(sae)(x, preacts=True), saelens_forward(sae, x)):
            assert torch.equal(a, b)


def test_stream_yields_x_latents_and_dark_matter_in_order():
    sae = random_sae("jumprelu")
    acts = np.random.default_rng(0).standard_normal((100, D)).astype(np.float32)
    index = np.array([5, 2, 90, 41, 7])
    kept, seen = [], []
    for c in stream(sae, acts, index, chunk_tokens=2, preacts=True):
        seen.append(c)
        kept.append((c.ids, c.x.clone(), c.preacts.clone(), c.r.clone()))
    assert [ids.tolist() for ids, *_ in kept] == [[5, 2], [90, 41], [7]]
    # one chunk's latent-sized tensors alive at a time: each is released when the next is asked for
    assert all(c.latents is None and c.preacts is None and c.x is None for c in seen)
    x = torch.from_numpy(acts[index])
    with torch.no_grad():
        pre, _, recon = saelens_forward(sae, x)
    torch.testing.assert_close(torch.cat([k[1] for k in kept]), x)
    torch.testing.assert_close(torch.cat([k[2] for k in kept]), pre)
    torch.testing.assert_close(torch.cat([k[3] for k in kept]), x - recon, rtol=1e-5, atol=1e-5)


def test_reconstruct_and_latent_subset_agree_with_saelens_in_any_chunking():
    """The budgeted helpers the causal, probes and splice code use: SAE(x) and chosen latents of a batch
    [rows, T, d], whatever the chunk size, equal SAELens's whole-batch encode/decode; the shifted encoder
    is built once per SAE and rebuilt when a parameter changes in place."""
    from darkmatter.analysis.stream import DEFAULT_LATENT_BUDGET, forward_of, latent_subset, reconstruct
    from darkmatter.config.sections import ResidualConfig

    assert DEFAULT_LATENT_BUDGET == ResidualConfig().latent_budget_mb << 20
    sae = random_sae("jumprelu")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 7, D)).astype(np.float32))
    feats = torch.tensor([0, 5, 3])
    with torch.no_grad():
        latents = sae.encode(x.reshape(-1, D))
        whole = sae.decode(latents).reshape(x.shape)
    for chunk in (1, 4, 21, 100):
        torch.testing.assert_close(reconstruct(sae, x, chunk), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(latent_subset(sae, x, feats, chunk), latents[:, feats].reshape(3, 7, 3), rtol=1e-5, atol=1e-5)
    first = forward_of(sae)
    assert forward_of(sae) is first
    with torch.no_grad():
        sae.b_enc += 1.0
    assert forward_of(sae) is not first
    with torch.no_grad():
        shifted = sae.decode(sae.encode(x.reshape(-1, D))).reshape(x.shape)
    torch.testing.assert_close(reconstruct(sae, x, 4), shifted, rtol=1e-5, atol=1e-5)
