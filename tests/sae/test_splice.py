"""Splicing an SAE into the model: planted errors give the ΔLM splits they must, and SAELens agrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkmatter.causal.effects import batches, loss_and_kl, per_row, prediction_effects, scored_positions
from darkmatter.sae.evaluate import lm_report
from darkmatter.sae.splice import ErrorGeometry, error_geometry, splice_edits

LAYER, ROWS, CONTEXT = 1, 12, 16


@pytest.fixture(scope="module")
def tiny_cache(tiny_subject, tmp_path_factory):
    """The tiny model's own layer-1 activations of random rows that start with BOS (id 0)."""
    from conftest import write_cache

    from darkmatter.data.activations import ActivationCache

    tokens = np.random.default_rng(0).integers(3, 101, (ROWS, CONTEXT))
    tokens[:, 0] = 0
    acts = tiny_subject.activations(torch.from_numpy(tokens), LAYER).reshape(-1, tiny_subject.d_model).numpy()
    root = write_cache(tmp_path_factory.mktemp("cache"), acts, CONTEXT, tokens=tokens.reshape(-1))
    return ActivationCache.open(root)


def exact_sae(d: int, shrink: float = 0.0):
    """A JumpReLU SAE with x̂ = x exactly (±unit features, thresholds 0), except that coordinate 0 is
    reconstructed as (1 − shrink)·x_0: its error r = shrink·x_0·e_0 lies on one known axis."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        decoder = torch.cat([eye, -eye], dim=0)
        decoder[[0, d], 0] *= 1 - shrink
        sae.W_dec.copy_(decoder)
        for p in (sae.b_enc, sae.b_dec, sae.threshold):
            p.zero_()
    return sae.eval()


def effects(subject, sae, cache, names, geometry=None, threshold=float("inf")):
    rows = np.arange(ROWS)
    data = list(batches(cache, rows, 4, scored_positions(CONTEXT, 8), "cpu"))
    return prediction_effects(subject, LAYER, "resid_post", data, splice_edits(sae, geometry, threshold, 0, names), "test") | {
        "positions": data[0].positions.numpy()}


def delta(out, name):
    return per_row(out[name]["loss"], out["scored"]) - per_row(out["clean_loss"], out["scored"])


def test_an_exact_sae_costs_nothing_and_zero_ablation_costs_something(tiny_subject, tiny_cache):
    out = effects(tiny_subject, exact_sae(tiny_subject.d_model), tiny_cache, ("nonspecial", "zero", "all", "noise_isotropic"),
                  geometry=ErrorGeometry(np.zeros(32), np.ones(32), np.eye(32), 16, 1))
    report = lm_report(out, np.arange(ROWS), 200, 0)
    assert abs(report["delta_loss"]) < 1e-4 and abs(report["kl"]) < 1e-5
    assert abs(report["variants"]["all"]["delta_loss"]["mean"]) < 1e-4
    assert abs(report["variants"]["noise_isotropic"]["delta_loss"]["mean"]) < 1e-4  # noise with r's norm: none
    assert report["variants"]["zero"]["kl"]["mean"] > 0.01 and abs(report["delta_loss_zero_ablation"]) > 0.01
    assert report["loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_an_error_on_one_axis_is_carried_by_the_top_pcs_alone(tiny_subject, tiny_cache):
    """r = 0.8·x_0·e_0: its one principal component holds all its variance, so applying the top
    PCs' part costs what the whole error costs and applying the rest costs nothing."""
    sae = exact_sae(tiny_subject.d_model, shrink=0.8)
    index = np.flatnonzero(~np.asarray(tiny_cache.special))
    geometry = error_geometry(sae, tiny_cache.acts, index, 64)
    assert geometry.half_variance_pcs == 1 and abs(geometry.eigenvectors[0, 0]) == pytest.approx(1.0, abs=1e-6)
    out = effects(tiny_subject, sae, tiny_cache, ("nonspecial", "error_top_pcs", "error_other_pcs", "error_0.5"), geometry)
    whole = delta(out, "nonspecial")
    assert np.abs(whole).max() > 1e-3
    np.testing.assert_allclose(delta(out, "error_top_pcs"), whole, atol=1e-5)
    np.testing.assert_allclose(delta(out, "error_other_pcs"), 0, atol=1e-5)
    assert not np.allclose(delta(out, "error_0.5"), whole, atol=1e-4)


def test_where_the_reconstruction_goes(tiny_subject, tiny_cache):
    """Ordinary tokens only: with no token under the outlier threshold it is the clean model; with
    every token under it, it is the default splice."""
    sae = exact_sae(tiny_subject.d_model, shrink=0.8)
    none_ordinary = effects(tiny_subject, sae, tiny_cache, ("ordinary", "nonspecial"), threshold=0.0)
    np.testing.assert_allclose(delta(none_ordinary, "ordinary"), 0, atol=1e-6)
    all_ordinary = effects(tiny_subject, sae, tiny_cache, ("ordinary", "nonspecial"))
    np.testing.assert_allclose(delta(all_ordinary, "ordinary"), delta(all_ordinary, "nonspecial"), atol=1e-6)


def test_same_norm_noise_has_the_errors_norm_token_by_token(tiny_cache):
    from darkmatter.causal.effects import Batch

    d = 32
    sae = exact_sae(d, shrink=0.5)
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    geometry = ErrorGeometry(np.zeros(d), np.linspace(2, 0.1, d), basis, 4, 100)
    resid = torch.from_numpy(np.asarray(tiny_cache.acts[: 2 * CONTEXT]).reshape(2, CONTEXT, d))
    edit_mask = torch.ones(2, CONTEXT, dtype=torch.bool)
    edit_mask[:, 0] = False
    batch = Batch(np.array([0, 1]), resid, edit_mask, torch.arange(3), torch.zeros(2, 3, dtype=torch.long), edit_mask[:, :3])
    r_norm = 0.5 * resid[..., 0].abs()
    for name in ("noise_isotropic", "noise_error_covariance"):
        moved = (splice_edits(sae, geometry, float("inf"), 0, (name,))[name](resid, batch) - resid).norm(dim=-1)
        torch.testing.assert_close(moved[:, 1:], r_norm[:, 1:], rtol=1e-4, atol=1e-5)
        assert moved[:, 0].abs().max() == 0  # special positions untouched


def test_streamed_loss_and_kl_equal_the_log_softmax_formulas(tiny_subject):
    """The vocabulary-streaming sums (slices of 17 of the 101 logits, online max rescaling) give
    every prediction's cross-entropy and KL(clean ‖ variant) that full log-softmax tensors give."""
    g = torch.Generator().manual_seed(0)
    finals = 3 * torch.randn(3, 20, tiny_subject.d_model, generator=g)
    targets = torch.randint(0, 101, (20,), generator=g)
    with torch.inference_mode():
        loss, kl = loss_and_kl(tiny_subject, finals, targets, vocab_chunk=17)
        logp = tiny_subject.unembed_logprobs(finals).double()
    want_loss = -logp.gather(-1, targets.expand(3, -1)[..., None])[..., 0]
    want_kl = (logp[0].exp() * (logp[0] - logp)).sum(dim=-1)
    np.testing.assert_allclose(loss.numpy(), want_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(kl.numpy(), want_kl.numpy(), rtol=1e-4, atol=1e-6)
    assert (kl[0] == 0).all() and kl[1].mean() > 0.01


def test_our_evaluation_agrees_with_saelens_on_the_same_rows(tiny_subject, tiny_cache):
    """Explained variance, L0, CE-loss score and KL from this project's code and from SAELens's
    ``get_sparsity_and_variance_metrics`` / ``get_recons_loss`` agree to the stated tolerance."""
    from conftest import random_jumprelu_sae

    from darkmatter.sae.crosscheck import TOLERANCE, crosscheck

    sae = random_jumprelu_sae(tiny_subject.d_model, 4 * tiny_subject.d_model, threshold=0.2)
    out = crosscheck(tiny_subject, sae, tiny_cache, np.arange(ROWS), LAYER, "resid_post", 4, special_ids=[0])
    assert out["agree"], out["abs_difference"]
    assert max(out["abs_difference"].values()) <= TOLERANCE
    assert out["saelens"]["kl_div_with_sae"] > 0.01  # a lossy SAE: the agreement is not between zeros
    assert 0 < out["saelens"]["l0"] < 4 * tiny_subject.d_model


def test_a_small_error_costs_kl_quadratic_in_its_scale(tiny_subject, tiny_cache):
    """Second order: KL(clean ‖ x − α r) ≈ α²·const for a small error, so the fitted exponent is 2."""
    from darkmatter.sae.splice import VARIANTS

    sae = exact_sae(tiny_subject.d_model, shrink=0.05)
    index = np.flatnonzero(~np.asarray(tiny_cache.special))
    geometry = error_geometry(sae, tiny_cache.acts, index, 64)
    report = lm_report(effects(tiny_subject, sae, tiny_cache, VARIANTS, geometry), np.arange(ROWS), 300, 0)
    scale = report["diagnosis"]["error_scale"]
    assert abs(scale["kl_exponent"] - 2) < 0.1
    assert scale["kl_exponent_ci"][0] < 2.1 and scale["kl_exponent_ci"][1] > 1.9
    assert len(report["diagnosis"]["by_position"]["delta_loss"]) == 4
