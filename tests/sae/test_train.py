"""SAE training (Gemma Scope JumpReLU recipe) and evaluation, on small synthetic data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from darkmatter.data.activations import ActivationCache
from darkmatter.config import SAEConfig
from darkmatter.errors import NonFiniteError, UserError
from darkmatter.sae.reconstruction import reconstruction_stats
from darkmatter.sae.io import check_compatible
from darkmatter.sae.train import (
    TokenBatches,
    build_training_sae,
    to_inference_sae,
    train,
)

D = 16


def _sparse_data(n: int = 6000, d: int = D, n_atoms: int = 48, k: int = 3, seed: int = 0) -> np.ndarray:
    """Sparse combinations of unit atoms plus noise, on a large raw scale like real activations."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, n_atoms))
    for row in codes:
        row[rng.choice(n_atoms, k, replace=False)] = rng.exponential(1.0, k) + 0.5
    x = codes @ atoms + 0.02 * rng.standard_normal((n, d))
    return (300.0 * x).astype(np.float32)


def _cfg(**overrides) -> SAEConfig:
    base = SAEConfig(
        width=64, l0_coefficient=1e-3, lr=3e-3, batch_size=256, train_tokens=256 * 300,
        checkpoint_every=50, bandwidth=0.01, init_threshold=0.01, l0_warm_up_tokens=256 * 20, lr_warm_up_tokens=256 * 10,
    )
    return dataclasses.replace(base, **overrides)


def _jumprelu_reference(x, w_enc, b_enc, threshold, w_dec, b_dec):
    """JumpReLU SAE written out in numpy: f = pre·[pre > θ], x̂ = f W_dec + b_dec."""
    pre = x @ w_enc + b_enc
    f = pre * (pre > threshold)
    return f, f @ w_dec + b_dec


def test_inference_sae_matches_a_reference_and_the_training_sae(tmp_path):
    """The folded SAELens JumpReLUSAE on raw x == the training SAE on s·x, rescaled; == numpy reference."""
    from sae_lens import SAE

    training_sae, _ = build_training_sae(D, _cfg(), steps=10, device="cpu")
    with torch.no_grad():
        training_sae.b_enc.normal_(0, 0.1)
        training_sae.threshold.uniform_(0.0, 0.2)
        training_sae.b_dec.normal_(0, 0.1)
    scale = 0.01
    x = torch.from_numpy(_sparse_data(64))
    sae = to_inference_sae(training_sae, scale, {"hook_name": "blocks.1.hook_resid_post"})
    with torch.no_grad():
        f_train, _ = training_sae.encode_with_hidden_pre(x * scale)
        x_hat_train = training_sae.decode(f_train) / scale
        f = sae.encode(x)
        x_hat = sae.decode(f)
    torch.testing.assert_close(f, f_train / scale, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(x_hat, x_hat_train, rtol=1e-4, atol=1e-2)
    state = {k: v.numpy() for k, v in sae.state_dict().items()}
    f_ref, x_hat_ref = _jumprelu_reference(x.numpy(), state["W_enc"], state["b_enc"], state["threshold"], state["W_dec"], state["b_dec"])
    np.testing.assert_allclose(f.numpy(), f_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(x_hat.numpy(), x_hat_ref, rtol=1e-4, atol=1e-2)
    # SAELens round trip: save_model -> SAE.load_from_disk gives identical encode/decode.
    sae.save_model(str(tmp_path / "sae"))
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    assert type(loaded).__name__ == "JumpReLUSAE"
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), f)
        assert torch.equal(loaded.decode(f), x_hat)


def test_threshold_pseudo_derivative_is_a_rectangle_kernel():
    """d(L0)/dθ is −1/ε inside |pre − θ| < ε/2 and zero outside (straight-through, rectangle kernel)."""
    training_sae, _ = build_training_sae(2, _cfg(width=1, bandwidth=0.1), steps=10, device="cpu")
    from sae_lens.saes.jumprelu_sae import Step

    threshold = torch.tensor([0.5], requires_grad=True)
    pre = torch.tensor([[0.52], [0.56], [0.30]])
    Step.apply(pre, threshold, training_sae.bandwidth, False).sum().backward()
    assert threshold.grad.item() == pytest.approx(-1 / 0.1)  # only 0.52 lies within ε/2 = 0.05


def test_decoder_rows_stay_unit_norm_and_gradients_are_projected(tmp_path):
    data = _sparse_data(2048)
    cfg = _cfg(train_tokens=256 * 20)
    sae, _ = train(data, np.arange(len(data)), cfg, tmp_path, identity={}, device="cpu")
    norms = sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    loss = (sae.W_dec * torch.randn_like(sae.W_dec)).sum()
    sae.zero_grad()
    loss.backward()
    radial = (sae.W_dec.grad * sae.W_dec.detach()).sum(dim=1)
    assert radial.abs().max() < 1e-5


def test_training_reconstructs_and_lambda_controls_sparsity(tmp_path):
    data = _sparse_data()
    index = np.arange(len(data))
    runs = {}
    for lam in (1e-4, 3e-2):
        sae, metrics = train(data, index, _cfg(l0_coefficient=lam), tmp_path / str(lam), {}, "cpu")
        inference = to_inference_sae(sae, metrics["input_scale"], {})
        stats = reconstruction_stats(inference, data, np.zeros(len(data), bool), index, dense_threshold=0.5)
        runs[lam] = stats
    assert runs[1e-4]["fvu"] < 0.2  # it learns the sparse structure
    assert runs[3e-2]["l0"] < 0.7 * runs[1e-4]["l0"]  # a larger λ buys sparsity ...
    assert runs[3e-2]["fvu"] > runs[1e-4]["fvu"]  # ... at the price of fidelity


@pytest.mark.parametrize("resample", [False, True])
def test_killed_training_resumes_to_identical_weights(tmp_path, resample):
    """Also with dead latents resampled before and after the kill (each resampling seeded by its step)."""
    # 4 atoms for 64 latents: most latents are redundant, and some die before each resampling
    data = _sparse_data(3000, n_atoms=4 if resample else 48, k=1 if resample else 3)
    index = np.arange(len(data))
    cfg = _cfg(train_tokens=256 * 120, checkpoint_every=40)
    if resample:
        cfg = dataclasses.replace(cfg, l0_coefficient=1e-2, dead_window_tokens=256 * 5, resample_every_tokens=256 * 30,
                                  resample_until_tokens=256 * 90)
    clean, metrics = train(data, index, cfg, tmp_path / "a", {}, "cpu")
    if resample:
        assert set(metrics["resampled_this_run"]) == {"30", "60", "90"} and metrics["resampled_this_run"]["90"] > 0
    partial, first = train(data, index, cfg, tmp_path / "b", {}, "cpu", stop_after=70)
    assert first["steps_this_run"] == 70
    resumed, second = train(data, index, cfg, tmp_path / "b", {}, "cpu")
    assert second["resumed_from_step"] == 70 and second["steps_this_run"] == 50
    for name, value in clean.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_nan_loss_names_the_step_and_keeps_the_checkpoint(tmp_path):
    data = _sparse_data(3000)
    cfg = _cfg(train_tokens=256 * 60, checkpoint_every=20)

    class GoesBad:
        """The cache turns to NaN after the norm estimate and 44 good batches."""

        shape = data.shape
        reads = 0

        def __getitem__(self, ids):
            self.reads += 1
            return data[ids] * (np.nan if self.reads > 45 else 1.0)

    with pytest.raises(NonFiniteError, match=r"NaN/inf SAE loss at step 44; the last good checkpoint \(step 40\)"):
        train(GoesBad(), np.arange(len(data)), cfg, tmp_path, {}, "cpu")
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "latest" / "progress.json").read_text()) == {"step": 40}
    weights = run / "latest" / "sae_weights.safetensors"
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_token_batches_resume_mid_stream():
    data = np.arange(40, dtype=np.float32).reshape(20, 2)
    batches = TokenBatches(data, np.arange(20), batch_size=4, seed=3, scale=1.0)
    stream = batches(0)
    first = [next(stream) for _ in range(12)]  # crosses two epoch boundaries
    resumed = batches(7)
    for expected in first[7:]:
        assert torch.equal(next(resumed), expected)
    assert sorted(torch.cat(first[:5])[:, 0].tolist()) == list(range(0, 40, 2))  # one epoch = every token once


def test_reconstruction_stats_match_a_direct_computation():
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    rng = np.random.default_rng(1)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=32))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.threshold.fill_(0.1)
    x = rng.standard_normal((500, D)).astype(np.float32) * 3 + 1
    x[::50] *= 40  # special tokens with huge norms
    special = np.zeros(500, bool)
    special[::50] = True
    index = np.arange(500)
    stats = reconstruction_stats(sae, x, special, index, dense_threshold=0.5, chunk_tokens=64)
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(x))
        x_hat = sae.decode(f).numpy()
    keep = ~special
    err = ((x[keep] - x_hat[keep]) ** 2).sum(1).mean()
    var = ((x[keep] - x[keep].mean(0)) ** 2).sum(1).mean()
    assert stats["fvu"] == pytest.approx(err / var, rel=1e-6)
    err_all = ((x - x_hat) ** 2).sum(1).mean()
    var_all = ((x - x.mean(0)) ** 2).sum(1).mean()
    assert stats["fvu_with_special"] == pytest.approx(err_all / var_all, rel=1e-6)
    assert stats["l0"] == pytest.approx(float((f.numpy()[keep] > 0).sum(1).mean()))
    freq = (f.numpy()[keep] > 0).mean(0)
    assert stats["dense_fraction"] == pytest.approx(float((freq > 0.5).mean()))
    assert stats["dead_fraction"] == pytest.approx(float((freq == 0).mean()))
    assert sum(stats["l0_histogram"]["counts"]) == keep.sum()


def test_an_all_dead_sae_is_reported_not_hidden():
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=8))
    with torch.no_grad():
        sae.threshold.fill_(1e9)
    x = np.random.default_rng(0).standard_normal((100, D)).astype(np.float32)
    stats = reconstruction_stats(sae, x, np.zeros(100, bool), np.arange(100), 0.1)
    assert stats["all_dead"] and stats["dead_fraction"] == 1.0 and stats["l0"] == 0.0
    assert stats["fvu"] == pytest.approx(1.0, abs=0.05)  # x̂ = b_dec only


def test_sae_must_match_the_cache(tmp_path):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    (tmp_path / "meta.json").write_text(json.dumps({"d_model": D, "hook_name": "blocks.1.hook_resid_post"}))
    cache = ActivationCache(tmp_path, json.loads((tmp_path / "meta.json").read_text()))
    wrong_width = JumpReLUSAE(JumpReLUSAEConfig(d_in=D + 1, d_sae=8))
    with pytest.raises(UserError, match="d_in 17 does not match the cache's d_model 16"):
        check_compatible(wrong_width, cache)
    wrong_hook = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=8))
    wrong_hook.cfg.metadata.hook_name = "blocks.2.hook_resid_pre"
    with pytest.raises(UserError, match="trained at blocks.2.hook_resid_pre but the cache holds blocks.1.hook_resid_post"):
        check_compatible(wrong_hook, cache)


def test_a_run_of_n_tokens_is_the_longer_runs_snapshot_after_n(tmp_path):
    """Warm-ups in tokens and a constant learning rate after them: the training curve's snapshot at
    N tokens is the SAE a run of N tokens trains (the SAE axes' reference rests on this)."""
    from sae_lens import SAE

    data = _sparse_data(3000)
    index = np.arange(len(data))
    long_cfg = _cfg(train_tokens=256 * 90, curve_tokens=(256 * 40,))
    train(data, index, long_cfg, tmp_path / "long", {}, "cpu", curve_out=tmp_path / "curve")
    snapshot = SAE.load_from_disk(str(tmp_path / "curve" / str(256 * 40)))
    short, metrics = train(data, index, _cfg(train_tokens=256 * 40), tmp_path / "short", {}, "cpu")
    short = to_inference_sae(short, metrics["input_scale"], {})
    for name, value in short.state_dict().items():
        torch.testing.assert_close(snapshot.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "curve").iterdir()) == [str(256 * 40)]


def test_the_seed_sets_both_the_initialisation_and_the_data_order(tmp_path):
    data = _sparse_data(3000)
    index = np.arange(len(data))
    cfg = _cfg(train_tokens=256 * 20)
    first, _ = train(data, index, cfg, tmp_path / "a", {}, "cpu")
    again, _ = train(data, index, cfg, tmp_path / "b", {}, "cpu")
    other, _ = train(data, index, _cfg(train_tokens=256 * 20, seed=1), tmp_path / "c", {}, "cpu")
    torch.testing.assert_close(again.W_dec, first.W_dec, rtol=0, atol=0)
    assert not torch.allclose(other.W_dec, first.W_dec, atol=1e-3)
    a, b = TokenBatches(data, index, 256, 0, 1.0)(0), TokenBatches(data, index, 256, 1, 1.0)(0)
    assert not torch.equal(next(a), next(b))
