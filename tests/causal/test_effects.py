"""Causal tests on a tiny model with a planted direction its unembedding reads: ablating that
direction raises the loss, ablating a random one does not, attribution patching ranks it first, and
an edit of the dark matter r = x − SAE(x) leaves alone what the SAE reconstructs."""

import numpy as np
import pytest
import torch
from conftest import write_cache

from darkmatter.causal.edits import orthonormal, random_whitened_directions, remove, remove_from_residual, spectrum_bands, subspaces
from darkmatter.causal.effects import batches, edit_effects, gradients, predicted_effects, scored_positions, with_residual

D, V, CTX = 64, 20, 32
ALL = scored_positions(CTX, CTX)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 2-layer model whose blocks write nothing: the layer-0 residual is the embedding, and the
    unembedding reads one planted direction v that carries the token class (A: ids < 10, B: the
    rest). Sequences keep their class (switching with probability 0.02 per token), so the class
    of the next token is the current one's; the unembedding is scaled so that the model's
    P(same class) ≈ 0.98 is calibrated. Removing v leaves a uniform guess: Δloss ≈ 0.6 nats.
    v is a small part of |x| (the token-identity noise dominates), so the final RMSNorm is
    close to linear in x·v and attribution patching, a first-order method, applies."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from darkmatter.config import ModelSpec
    from darkmatter.data.models import SubjectModel

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=D, d_head=8, n_heads=2, d_mlp=32, d_vocab=V, n_ctx=CTX,
                                  act_fn="gelu", normalization_type="RMS", positional_embedding_type="rotary", seed=0)
    model = HookedTransformer(cfg).eval()
    rng = np.random.default_rng(0)
    v = rng.standard_normal(D)
    v /= np.linalg.norm(v)
    noise = rng.standard_normal((V, D))
    noise -= np.outer(noise @ v, v)  # token identity lives orthogonal to v
    sign = np.where(np.arange(V) < 10, 1.0, -1.0)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.mlp.W_out.zero_()
        model.embed.W_E.copy_(torch.from_numpy(1.0 * sign[:, None] * v[None, :] + 2.0 * noise).float())
        model.unembed.W_U.copy_(torch.from_numpy((3.9 * sign[:, None] * v[None, :]).T).float())
        model.unembed.b_U.zero_()
    subject = SubjectModel(ModelSpec("planted", 2, D, "pypi-gguf"), model, "cpu")
    n_rows = 24
    classes = np.cumsum(rng.random((n_rows, CTX)) < 0.02, axis=1) % 2
    tokens = np.where(classes == 0, rng.integers(0, 10, (n_rows, CTX)), rng.integers(10, 20, (n_rows, CTX)))
    with torch.no_grad():
        acts = subject.activations(torch.from_numpy(tokens), 0).reshape(-1, D).numpy()
    from darkmatter.data.activations import ActivationCache

    root = write_cache(tmp_path_factory.mktemp("cache"), acts, CTX, tokens=tokens.reshape(-1),
                       hook_name="blocks.0.hook_resid_post")
    return subject, ActivationCache.open(root), v


def test_ablating_the_planted_direction_raises_the_loss_and_a_random_one_does_not(planted):
    subject, cache, v = planted
    data = list(batches(cache, np.arange(12, 24), 4, ALL, "cpu"))
    random = np.random.default_rng(1).standard_normal((5, D))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    edits = {"planted": lambda r, b: remove(r, torch.from_numpy(v[:, None]).float(), 0.0, b.edit)}
    edits |= {f"random-{i}": (lambda q: lambda r, b: remove(r, q, 0.0, b.edit))(torch.from_numpy(q[:, None]).float())
              for i, q in enumerate(random)}
    out = edit_effects(subject, 0, "resid_post", data, edits, "test")
    assert out["planted"]["delta_loss"].mean() > 0.4, "the class information is gone: ~0.6 nats"
    assert all(abs(out[f"random-{i}"]["delta_loss"].mean()) < 0.05 for i in range(5))
    assert (out["planted"]["kl"] > 0.2).all()


def test_attribution_patching_ranks_the_planted_direction_first(planted):
    subject, cache, v = planted
    grads = gradients(subject, 0, "resid_post", list(batches(cache, np.arange(0, 12), 4, ALL, "cpu")))
    random = np.random.default_rng(2).standard_normal((30, D))
    directions = np.vstack([v, random / np.linalg.norm(random, axis=1, keepdims=True)])
    signed, magnitude = predicted_effects(grads, directions)
    magnitude = magnitude.mean(0)
    assert np.argmax(magnitude) == 0
    assert magnitude[0] > 2 * magnitude[1:].max()
    # The signed first-order estimate nearly cancels for a calibrated model (the expected gradient
    # of the log loss vanishes at its optimum): far smaller than the exact Δloss of ~0.6 nats.
    assert abs(signed.mean(0)[0]) < 0.2


def _sae_reading(v: np.ndarray):
    """A JumpReLU SAE of two latents, relu(±x·v) written back along ±v: SAE(x) = (x·v) v exactly."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=2))
    w = torch.from_numpy(np.stack([v, -v])).float()
    with torch.no_grad():
        sae.W_enc.copy_(w.T)
        sae.W_dec.copy_(w)
        for p in (sae.b_enc, sae.b_dec, sae.threshold):
            p.zero_()
    return sae.eval()


def test_an_edit_of_the_dark_matter_leaves_what_the_sae_reconstructs(planted):
    """The SAE reconstructs the planted direction: r holds none of it. Removing v from r changes
    nothing; removing it from x costs the ~0.6 nats of the class information. With r's own
    component along v planted back (r = x), the r-space edit costs as much as the x-space one; and
    attribution patching in r-space predicts ~0 where r has nothing along v."""
    subject, cache, v = planted
    sae = _sae_reading(v)
    data = with_residual(list(batches(cache, np.arange(12, 24), 4, ALL, "cpu")), sae, 1024)
    x = data[0].resid
    torch.testing.assert_close(data[0].residual @ torch.from_numpy(v).float(), torch.zeros(x.shape[:2]), atol=1e-4, rtol=0)
    q = torch.from_numpy(v[:, None]).float()
    edits = {"r": lambda resid, b: remove_from_residual(resid, b.residual, q, 0.0, b.edit),
             "x": lambda resid, b: remove(resid, q, 0.0, b.edit),
             "r=x": lambda resid, b: remove_from_residual(resid, resid, q, 0.0, b.edit)}
    out = edit_effects(subject, 0, "resid_post", data, edits, "test")
    assert abs(out["r"]["delta_loss"].mean()) < 1e-4
    assert out["x"]["delta_loss"].mean() > 0.4
    np.testing.assert_allclose(out["r=x"]["delta_loss"], out["x"]["delta_loss"], atol=1e-5)
    grads = gradients(subject, 0, "resid_post", with_residual(list(batches(cache, np.arange(0, 12), 4, ALL, "cpu")), sae, 1024))
    _, in_r = predicted_effects(grads, v[None, :], space="r")
    _, in_x = predicted_effects(grads, v[None, :], space="x")
    assert in_r.mean() < 1e-3 * in_x.mean()


def test_spectrum_bands_double_and_cover_every_component():
    assert spectrum_bands(640) == [(0, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 640)]
    assert spectrum_bands(5) == [(0, 5)]


def test_the_span_of_all_mixing_directions_is_the_pca_subspace():
    """At m = k, ICA, PCA and random rotations remove the same subspace (the identity check)."""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    scale = np.sqrt(np.geomspace(10, 0.1, 6))
    w = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    components = {"pca_basis": basis, "pca_scale": scale, "mixing": (w * scale[None, :]) @ basis.T,
                  "kurtosis": rng.standard_normal(6)}
    full = subspaces(components, 6, 2, 0)
    projector = lambda q: q @ q.T  # noqa: E731
    for kind in ("ica", "pca", "random"):
        for q in full[kind]:
            np.testing.assert_allclose(projector(q), basis @ basis.T, atol=1e-10)
    half = subspaces(components, 3, 1, 0)
    assert not np.allclose(projector(half["ica"][0]), projector(half["pca"][0]), atol=1e-3)
    dirs = random_whitened_directions(components, 4, 0)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(dirs @ basis, axis=1), 1.0, atol=1e-10), "inside the whitened span"
    np.testing.assert_allclose(orthonormal(dirs).T @ orthonormal(dirs), np.eye(4), atol=1e-10)


def test_a_nan_in_a_patched_forward_names_the_unit_and_row(planted):
    from darkmatter.errors import NonFiniteError

    subject, cache, _ = planted
    data = list(batches(cache, np.arange(12, 16), 4, ALL, "cpu"))
    with pytest.raises(NonFiniteError, match=r"with ica-3 applied, cache row 12"):
        edit_effects(subject, 0, "resid_post", data, {"ica-3": lambda r, b: r * float("nan")}, "test")


def test_steering_along_the_planted_direction_moves_the_next_token_class(planted):
    from darkmatter.causal.steer import steer

    subject, cache, v = planted
    prompt = np.asarray(cache.tokens[:8])  # row 0
    special = np.asarray(cache.special[:8])
    read = lambda seq: np.zeros(len(seq))  # noqa: E731
    out = {a: steer(subject, "blocks.0.hook_resid_post", prompt, special, v, a, 3, read, str)
           for a in (-20.0, 0.0, 20.0)}
    top_class = {a: int(o["top_next_tokens"][0]["token"]) < 10 for a, o in out.items()}
    assert top_class[20.0] and not top_class[-20.0], "+v predicts class A (ids < 10), −v class B"
    assert len(out[0.0]["continuation"]) > 0 and out[0.0]["alpha"] == 0.0


def test_the_logit_lens_of_the_planted_direction_names_its_class(planted):
    from darkmatter.causal.steer import logit_lens

    subject, _, v = planted
    lens = logit_lens(subject, v, str, top=5)
    assert all(int(t) < 10 for t in lens["plus"]) and all(int(t) >= 10 for t in lens["minus"])
