"""The dataset-geometry probes: planted answers come back, controls separate token identity from
context, the affine map's solvers agree, bad input fails by name, and the stage runs end to end."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import random_jumprelu_sae, write_cache

from darkmatter.config import ConfigError, ProbesConfig, ResidualConfig, SAEConfig, load_params, parse_params
from darkmatter.errors import UserError
from darkmatter.probes.affine import fit_adam, fit_ridge, predict, r_squared, token_means
from darkmatter.probes.controls import Lookup, ProbeInputs, balanced, eligible_features, fit_logistic, probe_features, standardise
from darkmatter.probes.paired import capture, previous_ids, probe_rows, split_tokens
from darkmatter.probes.stage import (accuracy_summary, check_requested, choose_features, latent_columns, latent_counts,
                                     match_density, run_probes, split_per_feature)

VOCAB, CONTEXT, ROWS = 60, 32, 400


def planted_tokens(seed=0):
    """Rows of random ids with a random embedding table (a Gemma-like layer 0: a function of the id)."""
    rng = np.random.default_rng(seed)
    ids_rows = rng.integers(0, VOCAB, (ROWS, CONTEXT))
    table = rng.standard_normal((VOCAB, 16)).astype(np.float32)
    ids = ids_rows.reshape(-1)
    keep = np.tile(np.arange(CONTEXT) > 0, ROWS)
    is_val = np.repeat(np.arange(ROWS) >= 300, CONTEXT)
    split = split_tokens(ids, keep, is_val, heldout_type_fraction=0.2, seed=0)
    x0 = table[ids]
    inputs = ProbeInputs(x0=standardise(x0, split.train), ids=ids, prev_ids=previous_ids(ids_rows),
                         positions=np.tile(np.arange(CONTEXT), ROWS), context=CONTEXT)
    return ids_rows, inputs, split


def test_the_token_lookup_explains_a_token_feature_and_not_a_context_feature():
    ids_rows, inputs, split = planted_tokens()
    cfg = ProbesConfig(max_positives=2000)
    token_set = np.arange(0, VOCAB, 4)          # a function of the token id
    token_feature = np.isin(inputs.ids, token_set)
    context_feature = np.isin(inputs.prev_ids, token_set)   # depends on the previous token, not on this one
    token, context = probe_features(inputs, np.stack([token_feature, context_feature], 1), split, cfg,
                                    np.random.default_rng(0))
    assert token["token_lookup"] == 1.0 and token["context_lookup"] == 1.0
    assert 0.4 < context["token_lookup"] < 0.6             # knowing the id alone says nothing ...
    assert context["context_lookup"] > 0.8                 # ... the (previous, current) pair says most (unseen pairs back off)
    assert 0.4 < context["probe"] < 0.6                    # and a layer-0 probe cannot see it
    assert abs(token["shuffled"] - 0.5) < 0.1 and abs(token["position"] - 0.5) < 0.1
    # the held-out types: the lookup never saw them (chance by construction); the same probe is scored there
    assert token["unseen_token_lookup"] == 0.5 and token["unseen_probe"] is not None
    assert token["converged"] and token["n_train"] == 2 * min(token_feature[split.train].sum(),
                                                              (~token_feature[split.train]).sum(), 2000)


def test_a_layer0_probe_generalises_to_unseen_types_when_the_feature_is_embedding_geometry():
    ids_rows, inputs, split = planted_tokens()
    direction = np.random.default_rng(1).standard_normal(16)
    geometric = inputs.x0 @ direction > 0.5          # a half-space of the embedding: linear in layer 0
    (result,) = probe_features(inputs, geometric[:, None], split, ProbesConfig(max_positives=2000), np.random.default_rng(0))
    assert result["probe"] > 0.95 and result["unseen_probe"] > 0.9 and result["unseen_token_lookup"] == 0.5


def test_the_batched_newton_solver_matches_scikit_learn_with_repeated_rows():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    table = rng.standard_normal((40, 10)).astype(np.float32) * np.linspace(0.2, 4, 10).astype(np.float32)
    xs, ys = [], []
    for n in (300, 500, 120):                       # rows repeat, as a Gemma layer 0 repeats per token id
        x = table[rng.integers(0, 40, n)]
        xs.append(x)
        ys.append((x @ rng.standard_normal(10) + rng.standard_normal(n) > 0))
    fit = fit_logistic(xs, ys, c=0.5, max_iter=50)
    assert fit.converged.all() and fit.n_iter.max() < 30
    for k, (x, y) in enumerate(zip(xs, ys)):
        ref = LogisticRegression(C=0.5, solver="newton-cholesky", tol=1e-8, max_iter=500).fit(x, y)
        np.testing.assert_allclose(fit.weights[k], ref.coef_[0], atol=1e-4)
        assert abs(fit.bias[k] - ref.intercept_[0]) < 1e-4


def test_lookup_backs_off_from_pairs_to_tokens_to_inactive():
    tokens = Lookup(np.array([1, 1, 2, 2, 3]), np.array([1, 1, 0, 1, 0], bool))
    np.testing.assert_array_equal(tokens.predict(np.array([1, 2, 3, 9])), [True, False, False, False])  # tie, unseen: inactive
    pairs = Lookup(np.array([10, 10, 20]), np.array([0, 0, 1], bool), fallback=tokens)
    np.testing.assert_array_equal(pairs.predict(np.array([10, 20, 30]), np.array([1, 3, 1])), [False, True, True])


def test_balanced_draws_equal_classes_capped():
    labels = np.zeros(1000, bool)
    labels[:300] = True
    idx, y = balanced(np.arange(1000), labels, max_positives=100, rng=np.random.default_rng(0))
    assert y.sum() == 100 and len(y) == 200 and np.all(labels[idx] == y) and np.all(np.diff(idx) > 0)


def test_ridge_recovers_a_planted_r2_and_adam_agrees():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 12)).astype(np.float32) * np.linspace(0.5, 3, 12).astype(np.float32) + 5
    w = rng.standard_normal((12, 8))
    signal = (x - 5) @ w
    noise = rng.standard_normal((20000, 8)) * signal.std(axis=0)   # per dimension: R² = 1/2
    y = (signal + noise + 1.0).astype(np.float32)
    fit, held = np.arange(15000), np.arange(15000, 20000)
    wr, br = fit_ridge(x[fit], y[fit], alpha=1e-6)
    r2 = r_squared(y[held], predict(x[held], wr, br))
    assert abs(r2["fve"] - 0.5) < 0.03 and abs(r2["uniform"] - 0.5) < 0.03
    wa, ba = fit_adam(x[fit], y[fit], lr=1e-2, epochs=30, seed=0)
    r2_adam = r_squared(y[held], predict(x[held], wa, ba))
    assert abs(r2_adam["fve"] - r2["fve"]) < 0.01
    np.testing.assert_allclose(wa, wr, atol=0.05)


def test_token_means_predict_a_function_of_the_id_exactly_and_back_off_to_the_mean():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 4))
    ids = rng.integers(0, 40, 5000)
    y = table[ids].astype(np.float32)
    pred = token_means(ids, y, np.array([3, 45]))
    np.testing.assert_allclose(pred[0], table[3], atol=1e-5)
    np.testing.assert_allclose(pred[1], y.mean(axis=0), atol=1e-5)      # id 45 never seen


def test_accuracy_summary_counts_the_seeds_thresholds():
    values = [1.0, 0.96, 0.91, 0.86, 0.81, 0.76, 0.6, 0.5, None]
    s = accuracy_summary(values, n_boot=200, rng=np.random.default_rng(0))
    assert s["n"] == 8 and [s["at_least"][t]["count"] for t in ("0.95", "0.9", "0.85", "0.8", "0.75")] == [2, 3, 4, 5, 6]
    assert s["at_least"]["0.95"]["fraction"] == 0.25 and s["at_least"]["0.95"]["ci"][0] <= 0.25 <= s["at_least"]["0.95"]["ci"][1]


def test_bad_features_fail_by_name():
    with pytest.raises(UserError, match=r"probes.features \[4096\] out of range: the run's SAE has 4096 features"):
        check_requested((3, 4096), 4096)
    fires = np.zeros((100, 3), bool)
    fires[:50, 0] = True
    fires[:2, 1] = True
    split = SimpleNamespace(train=np.arange(80), val=np.arange(40, 100))
    counts = eligible_features(fires[split.train].sum(0), fires[split.val].sum(0), len(split.train), len(split.val),
                               min_positives=5, min_val_positives=5)
    assert counts["eligible"].tolist() == [0] and counts["n_dead"] == 1 and counts["n_too_few"] == 1
    with pytest.raises(UserError, match=r"without enough positives .*: 1 \(2 train / 0 validation positives\)"):
        choose_features(counts, 10, (0, 1), 5, 5, np.random.default_rng(0))
    assert choose_features(counts, 10, (), 5, 5, np.random.default_rng(0)).tolist() == [0]


def test_streamed_counts_and_columns_equal_the_dense_latents():
    """Any chunk size gives the counts, validation L0 and feature columns of one dense encode."""
    import torch

    sae = random_jumprelu_sae(d_in=16, d_sae=64, seed=1)
    x = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    split = SimpleNamespace(train=np.arange(0, 220, 2), val=np.arange(230, 300))
    with torch.no_grad():
        fires = (sae.encode(torch.from_numpy(x)) > 0).numpy()
    assert 0 < fires.mean() < 1
    for chunk in (7, 64, 1000):
        counts = latent_counts(sae, x, split, chunk)
        np.testing.assert_array_equal(counts["train_positives"], fires[split.train].sum(0))
        np.testing.assert_array_equal(counts["val_positives"], fires[split.val].sum(0))
        assert counts["l0_val"] == fires[split.val].sum(1).mean()
        np.testing.assert_array_equal(latent_columns(sae, x, np.array([5, 0, 63]), chunk), fires[:, [5, 0, 63]])


def test_density_matching_pairs_each_target_with_the_nearest_free_rate():
    rates = np.array([0.5, 0.01, 0.02, 0.1, 0.011, 0.3])
    chosen = match_density(np.array([0.01, 0.01, 0.25]), rates, np.array([1, 2, 3, 4, 5]), np.random.default_rng(0))
    assert sorted(chosen[:2].tolist()) == [1, 4] and chosen[2] == 5     # feature 0 is not eligible


def test_too_many_probe_rows_name_the_fix():
    with pytest.raises(UserError, match="lower probes.n_tokens"):
        probe_rows(100, 0.1, n_rows=60, val_fraction=0.5, seed=0)
    train, val = probe_rows(100, 0.1, n_rows=20, val_fraction=0.25, seed=0)
    assert len(train) == 15 and len(val) == 5 and train.max() < 90 and val.min() >= 90


def test_an_extra_layer_out_of_range_fails_at_load():
    import yaml

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["probes"]["extra_layers"] = [18]
    with pytest.raises(ConfigError, match=r"probes.extra_layers has 18; allowed: layers 0..17 of gemma-3-270m"):
        parse_params(raw)
    assert load_params().main.probes.extra_layers == (15,)


def test_the_stage_runs_both_experiments_end_to_end(tmp_path, tiny_subject):
    """Tiny random model, random SAE: the whole protocol runs, splits stay disjoint, outputs are complete."""
    context, n_rows = 16, 200
    tokens = np.random.default_rng(0).integers(3, 101, n_rows * context)
    cache_dir = write_cache(tmp_path / "cache", np.zeros((n_rows * context, 32)), context, tokens=tokens)
    from darkmatter.data.activations import ActivationCache

    cache = ActivationCache.open(cache_dir)
    run_sae = random_jumprelu_sae(32, 48, threshold=0.5)
    cfg = ProbesConfig(extra_layers=(2,), n_tokens=160 * context, n_features=5, min_positives=10, min_val_positives=5,
                       max_positives=200, sae_width=64, sae_train_tokens=2048, batch_size=32, n_bootstrap=100)
    run = SimpleNamespace(name="tiny", layer=1, probes=cfg, model=SimpleNamespace(name="tiny"),
                          subject=SimpleNamespace(site="resid_post"), residual=ResidualConfig(latent_budget_mb=1),
                          sae=SAEConfig(width=32, train_tokens=2048, batch_size=256, compile=False, heldout_fraction=0.25,
                                        l0_warm_up_tokens=512, lr_warm_up_tokens=256))
    out = tmp_path / "out"
    out.mkdir()
    report, rows = split_per_feature(run_probes(run, cache, tiny_subject, run_sae, tmp_path / "scratch", out))
    assert set(report["layers"]) == {"1", "2"} and report["layer0_is_token_function"]
    data = report["data"]
    assert data["rows_train"] + data["rows_val"] == 160 and data["tokens_unseen_types"] > 0
    for layer, entry in report["layers"].items():
        e1 = entry["experiment1"]
        assert 0 < e1["features"]["probed"] <= 5 and len(rows[layer]["experiment1"]) == e1["features"]["probed"]
        assert e1["probe"]["n"] == e1["features"]["probed"] and "shuffled" in e1["controls"]
        e2 = entry["experiment2"]
        assert -1 < e2["map"]["r2"]["fve"] <= 1 and e2["residual_minus_baseline"]["n"] == len(rows[layer]["residual"])
        assert (out / f"sae-{layer}-residual" / "cfg.json").exists()
    assert report["layers"]["1"]["sae"] == "run" and report["layers"]["2"]["sae"] == "baseline (trained here)"
    # a killed run resumes: the forward and every trained SAE are kept in scratch and reused, same numbers
    (kept,) = (tmp_path / "scratch").iterdir()
    assert (kept / "paired.npz").exists() and (kept / "sae-2-residual" / "cfg.json").exists()
    again, _ = split_per_feature(run_probes(run, cache, tiny_subject, run_sae, tmp_path / "scratch", out))
    assert json.dumps({**again, "seconds": 0}, sort_keys=True) == json.dumps({**report, "seconds": 0}, sort_keys=True)


def test_layer0_of_gemma_is_a_function_of_the_token_id(gemma):
    """Real Gemma 3 270M: blocks.0.hook_resid_pre is the token's embedding, and the captured layer
    matches the forward every other stage caches."""
    import torch

    ids = np.array([[2, 818, 5279, 529, 818, 5279, 529, 818]])
    paired = capture(gemma, ids, [3], "resid_post", batch_rows=1)
    x0 = paired["layer0"]
    np.testing.assert_array_equal(x0[1], x0[4])          # same id, other position: same layer 0
    with torch.no_grad():   # TransformerLens's embedding (Gemma's sqrt(d_model) scale folded into W_E)
        embedding = gemma.model.embed(torch.tensor([[818]]))[0, 0].numpy()
    np.testing.assert_allclose(x0[1], embedding, rtol=1e-5)
    cached = gemma.activations(torch.as_tensor(ids), 3, "resid_post")[0].numpy()
    np.testing.assert_allclose(paired[3], cached, rtol=1e-4, atol=1e-3)
