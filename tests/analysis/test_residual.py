"""The streamed dark-matter statistics equal a direct in-memory computation, at bounded memory."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, random_jumprelu_sae, write_cache
from scipy.stats import kurtosis

from darkmatter.config import ResidualConfig
from darkmatter.errors import NonFiniteError, UserError
from darkmatter.analysis.residual import accumulate, analyse, excess_kurtosis_from_sums, pca
from darkmatter.analysis.stream import SAEForward, latent_chunk_tokens

D, D_SAE, CTX, N = 12, 40, 64, 64 * 40
HELDOUT_FRACTION = 0.15  # the last 6 of 40 rows
HELDOUT_ROWS = np.arange(34, 40)
OUTLIERS = np.array([70, 300, 2300, 2400])  # two in train rows, two in held-out rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((D, D))
    acts = (rng.laplace(size=(N, D)) @ mix + 5.0).astype(np.float32)
    acts[::CTX] *= 50  # position 0: huge, special
    acts[OUTLIERS] *= 25  # ordinary tokens of very large norm
    cache = write_cache(tmp_path_factory.mktemp("cache"), acts, CTX)
    from darkmatter.data.activations import ActivationCache

    return ActivationCache.open(cache), random_jumprelu_sae(D, D_SAE), acts


def run(setup, chunk_tokens=None, alpha=1e-3, exclude=True):
    cache, sae, _ = setup
    cfg = ResidualConfig(n_random_directions=16, ridge_alpha=alpha, exclude_outliers=exclude)
    return analyse(accumulate(sae, cache, HELDOUT_FRACTION, cfg, chunk_tokens), alpha)


def direct(setup):
    cache, sae, acts = setup
    with torch.no_grad():
        latents = sae.encode(torch.from_numpy(acts))
        pre = (torch.from_numpy(acts) @ sae.W_enc + sae.b_enc).double().numpy()
        r = (torch.from_numpy(acts) - sae.decode(latents)).double().numpy()
    special = np.asarray(cache.special)
    held = np.zeros(N, bool)
    held[(HELDOUT_ROWS[:, None] * CTX + np.arange(CTX)).ravel()] = True
    outlier = np.zeros(N, bool)
    outlier[OUTLIERS] = True
    return acts.astype(np.float64), r, latents.numpy(), pre, special, outlier, held


def fvu(x, r):
    return (r**2).sum() / ((x - x.mean(0)) ** 2).sum()


#: Each chunk's power sums and moments are float32 GEMMs summed in float64 (residual.py): sums of
#: squares to ~1e-7 relative; kurtosis to ~1e-7 of m4/m2² = kurtosis + 3 (relative where it is
#: large, ~1e-5 absolute where excess kurtosis is ~0). The GEMM's summation order, and so the last
#: float32 bits, differ between CPUs (AVX2 vs AVX-512 kernels): the bounds hold on either.
SUMS_REL, KURTOSIS_REL, KURTOSIS_ABS = 1e-6, 1e-6, 3e-5


def test_high_norm_tokens_are_classified_and_reported_both_ways(setup):
    report, arrays = run(setup)
    x, r, _, _, special, outlier, held = direct(setup)
    assert np.array_equal(np.flatnonzero(arrays["token_class"] == 1), OUTLIERS)
    assert report["tokens"]["classes"]["counts"] == {"special": int(special.sum()), "outlier": 4,
                                                     "ordinary": int(N - special.sum() - 4)}
    analysed = ~special & ~outlier
    assert report["dark_matter_fraction"] == pytest.approx(fvu(x[held & analysed], r[held & analysed]), rel=SUMS_REL)
    assert report["dark_matter_fraction_without_outliers"] == report["dark_matter_fraction"]
    assert report["dark_matter_fraction_with_outliers"] == pytest.approx(fvu(x[held & ~special], r[held & ~special]), rel=SUMS_REL)
    assert report["dark_matter_fraction_with_outliers"] != pytest.approx(report["dark_matter_fraction"], rel=1e-3)
    kept, _ = run(setup, exclude=False)
    assert kept["dark_matter_fraction"] == report["dark_matter_fraction_with_outliers"]
    assert not kept["tokens"]["outliers_excluded"] and report["tokens"]["outliers_excluded"]


def test_fvu_kurtosis_and_norms_match_direct(setup):
    report, arrays = run(setup)
    x, r, _, _, special, outlier, held = direct(setup)
    keep = ~special & ~outlier
    assert report["dark_matter_fraction_with_special"] == pytest.approx(fvu(x[held], r[held]), rel=SUMS_REL)
    assert report["dark_matter_fraction_all_rows"] == pytest.approx(fvu(x[keep], r[keep]), rel=SUMS_REL)
    assert report["dark_matter_fraction_all_rows_with_special"] == pytest.approx(fvu(x, r), rel=SUMS_REL)
    np.testing.assert_allclose(arrays["kurtosis_r"], kurtosis(r[keep & held]), rtol=KURTOSIS_REL, atol=KURTOSIS_ABS)
    np.testing.assert_allclose(arrays["kurtosis_x_with_special"], kurtosis(x[held]), rtol=KURTOSIS_REL, atol=KURTOSIS_ABS)
    np.testing.assert_allclose(arrays["kurtosis_r_with_outliers"], kurtosis(r[held & ~special]), rtol=KURTOSIS_REL, atol=KURTOSIS_ABS)
    np.testing.assert_allclose(arrays["r_norm"], np.linalg.norm(r, axis=1), rtol=1e-5)
    assert report["error_norm_fraction"]["ratio_of_sums"] == pytest.approx(
        np.sqrt((r[keep & held] ** 2).sum() / (x[keep & held] ** 2).sum()), rel=SUMS_REL)


def test_ridge_and_pca_are_fitted_on_train_rows_and_scored_on_heldout(setup):
    from sklearn.linear_model import Ridge

    alpha = 1e-3
    report, arrays = run(setup, alpha=alpha)
    x, r, _, _, special, outlier, held = direct(setup)
    keep = ~special & ~outlier
    train, test = keep & ~held, keep & held
    penalty = alpha * np.trace(np.cov(x[train], rowvar=False, bias=True)) / D
    model = Ridge(alpha=penalty * train.sum()).fit(x[train], r[train])
    residual = r[test] - model.predict(x[test])
    r2 = 1 - (residual**2).sum() / ((r[test] - r[test].mean(0)) ** 2).sum()
    lp = report["linear_predictability"]
    assert lp["r2_heldout"] == pytest.approx(r2, rel=1e-6)
    assert lp["linear_fraction"] + lp["nonlinear_fraction"] + lp["mean_fraction"] == pytest.approx(
        report["dark_matter_fraction"], rel=SUMS_REL), "the split adds up to the dark-matter fraction"
    values, _ = pca(np.cov(r[train], rowvar=False, bias=True))
    # float32-GEMM moments: eigenvalues good to ~1e-8 of the covariance's norm (its top eigenvalue)
    np.testing.assert_allclose(arrays["pca_residual_values"], values, rtol=0, atol=1e-7 * values[0])
    # float32 sums: good to ~1e-7 of the residual's scale, not of a mean that may be near 0
    np.testing.assert_allclose(arrays["mean_residual"], r[train].mean(0), rtol=1e-6, atol=1e-6 * np.sqrt((r[train] ** 2).mean()))
    nonlinear = r[train] - model.predict(x[train])
    values_nl, _ = pca(np.cov(nonlinear, rowvar=False, bias=True))
    # ... and the nonlinear part's covariance is r's minus the prediction's: its error scales with r's,
    # a few float32 roundings more (the cross terms through the ridge weights; 1.2e-7 seen on AVX-512)
    np.testing.assert_allclose(arrays["pca_nonlinear_values"], values_nl, rtol=0, atol=3e-7 * values[0])
    # The nonlinear part is measured from the full ridge prediction: its mean on the fit rows is ~0.
    # (Before the fix this returned shift_r, a constant offset that ICA then carried into every source.)
    np.testing.assert_allclose(arrays["mean_nonlinear"], nonlinear.mean(0), atol=1e-9 * np.abs(r).max())
    assert np.abs(arrays["mean_nonlinear"]).max() < 1e-6 * np.abs(arrays["shift_r"]).max()


def test_latent_statistics_match_dense_on_heldout_tokens(setup):
    _, arrays = run(setup)
    _, _, latents, pre, special, outlier, held = direct(setup)
    rows = held & ~special & ~outlier
    dense = latents[rows].astype(np.float64)
    np.testing.assert_allclose(arrays["latent_frequency"], (dense > 0).mean(0))
    fired = (dense > 0).any(0)
    # The pass's latent power sums are float64 over the latents it computes, which equal SAELens's
    # to float32 rounding (tests/analysis/test_stream.py); a feature whose values sit just above
    # its threshold amplifies those roundings ~50x in its kurtosis, so compare with the pass's own.
    _, sae, acts = setup
    with torch.no_grad():
        ours = SAEForward(sae).encode(torch.from_numpy(acts))[1].double().numpy()[rows]
    np.testing.assert_allclose(ours, dense, rtol=1e-6, atol=1e-6 * dense.max())
    np.testing.assert_allclose(arrays["latent_kurtosis"][fired], kurtosis(ours[:, fired]), rtol=1e-6)
    np.testing.assert_allclose(arrays["latent_kurtosis"][fired], kurtosis(dense[:, fired]), rtol=3e-5)
    np.testing.assert_allclose(arrays["preact_kurtosis"], kurtosis(pre[rows]), rtol=KURTOSIS_REL, atol=KURTOSIS_ABS)
    train = ~held & ~special & ~outlier
    np.testing.assert_array_equal(arrays["latent_fires_train"], (latents[train] > 0).sum(0))


def test_dead_means_the_same_in_eval_and_residual(setup):
    """One definition: never fires on the held-out rows' non-special tokens (outliers included)."""
    from darkmatter.sae.reconstruction import reconstruction_stats

    cache, sae, acts = setup
    report, _ = run(setup)
    _, _, latents, _, special, _, held = direct(setup)
    index = np.flatnonzero(held)
    stats = reconstruction_stats(sae, acts, special, index, 0.1)
    expected = float(((latents[held & ~special] > 0).sum(0) == 0).mean())
    assert stats["dead_fraction"] == report["sae_features"]["dead_fraction"] == pytest.approx(expected)


def test_chunking_changes_nothing(setup):
    a, _ = run(setup, chunk_tokens=7)
    b, _ = run(setup, chunk_tokens=5000)
    for key in ("dark_matter_fraction", "dark_matter_fraction_with_special"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)  # float32 SAE matmuls block differently
    assert a["linear_predictability"]["r2_heldout"] == pytest.approx(b["linear_predictability"]["r2_heldout"], rel=1e-6)


def test_float32_moments_keep_float64_accuracy_under_a_large_offset(tmp_path):
    """x and r sit ~1e3 standard deviations from 0: unshifted float32 sums would lose ~all digits."""
    from sklearn.linear_model import Ridge

    from darkmatter.data.activations import ActivationCache

    rng = np.random.default_rng(3)
    n, ctx = 64 * 80, 64
    acts = (rng.laplace(size=(n, D)) @ rng.standard_normal((D, D)) + 1e3).astype(np.float32)
    cache = ActivationCache.open(write_cache(tmp_path, acts, ctx))
    sae, alpha = random_jumprelu_sae(D, D_SAE), 1e-3
    report, arrays = analyse(accumulate(sae, cache, 0.25, ResidualConfig(n_random_directions=4, ridge_alpha=alpha), 4096), alpha)
    with torch.no_grad():
        r = (torch.from_numpy(acts) - sae.decode(sae.encode(torch.from_numpy(acts)))).double().numpy()
    x, keep = acts.astype(np.float64), np.arange(n) % ctx != 0
    held = keep & (np.arange(n) >= n * 3 // 4)
    train = keep & ~held
    assert np.abs(r.mean(0)).max() > 100 * r.std(0).max(), "the planted offset carries into r"
    values, _ = pca(np.cov(r[train], rowvar=False, bias=True))
    np.testing.assert_allclose(arrays["pca_residual_values"], values, rtol=0, atol=1e-6 * values[0])
    penalty = alpha * np.trace(np.cov(x[train], rowvar=False, bias=True)) / D
    model = Ridge(alpha=penalty * train.sum()).fit(x[train], r[train])
    residual = r[held] - model.predict(x[held])
    r2 = 1 - (residual**2).sum() / ((r[held] - r[held].mean(0)) ** 2).sum()
    assert report["linear_predictability"]["r2_heldout"] == pytest.approx(r2, abs=1e-5)
    assert report["dark_matter_fraction"] == pytest.approx(fvu(x[held], r[held]), rel=1e-6)


def test_kurtosis_from_shifted_power_sums():
    y = np.random.default_rng(1).exponential(size=(10000, 3)) + 1e3
    shift = y[:100].mean(0)
    sums = np.stack([((y - shift) ** p).sum(0) for p in range(1, 5)])
    np.testing.assert_allclose(excess_kurtosis_from_sums(sums, len(y)), kurtosis(y), rtol=1e-8)


def test_power_sums_switch_to_float64_where_float32_would_overflow():
    from darkmatter.analysis.residual import GroupedPowerSums, group_onehot

    y = np.random.default_rng(2).standard_normal((4000, 3))
    y[::500] *= 1e9  # v⁴ ~ 1e36 per token: a float32 sum over the chunk overflows
    sums = GroupedPowerSums(np.zeros(3))
    group = torch.zeros(len(y), dtype=torch.long)
    sums.add(torch.from_numpy(y).float(), group_onehot(group, "cpu"))
    np.testing.assert_allclose(sums.excess_kurtosis([0]), kurtosis(y.astype(np.float32).astype(np.float64)), rtol=1e-9)


def test_nan_activations_are_named(tmp_path):
    acts = np.random.default_rng(0).standard_normal((256, D)).astype(np.float32)
    acts[130, 3] = np.nan
    from darkmatter.data.activations import ActivationCache

    cache = ActivationCache.open(write_cache(tmp_path, acts, 64))
    with pytest.raises(NonFiniteError, match=r"NaN/inf in the activations of tokens 128\.\.191"):
        accumulate(random_jumprelu_sae(D, 8), cache, 0.25, ResidualConfig(n_random_directions=4), 64)


def test_wrong_hook_fails_before_compute(tmp_path):
    from darkmatter.data.activations import ActivationCache

    cache = ActivationCache.open(write_cache(tmp_path, np.zeros((128, D), np.float32), 64))
    sae = random_jumprelu_sae(D, 8, hook_name="blocks.7.hook_resid_post")
    with pytest.raises(UserError, match="trained at blocks.7.hook_resid_post but the cache holds blocks.1"):
        accumulate(sae, cache, 0.5, ResidualConfig())


def test_chunk_size_follows_the_budget():
    assert latent_chunk_tokens(4096, 2048 << 20) == 8192  # capped
    assert latent_chunk_tokens(262144, 2048 << 20) == 1024
    assert latent_chunk_tokens(1 << 20, 2048 << 20) == 256
    assert latent_chunk_tokens(1 << 20, 1) == 1


def test_peak_memory_at_width_65536_stays_under_the_budget(tmp_path):
    """8192 tokens x 65,536 latents would be 2 GiB dense; the pass must stay far below that."""
    script = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        import numpy as np
        from conftest import random_jumprelu_sae, write_cache
        from darkmatter.data.activations import ActivationCache
        from darkmatter.config import ResidualConfig
        from darkmatter.analysis.residual import accumulate, analyse
        d, width, n = 64, 65536, 8192
        acts = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
        cache = ActivationCache.open(write_cache(Path({str(tmp_path)!r}), acts, 128))
        sae = random_jumprelu_sae(d, width, threshold=6.0)  # ~1% of latents fire, like a real SAE
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats = accumulate(sae, cache, 0.0625, ResidualConfig(latent_budget_mb=64))
        report, _ = analyse(stats, 1e-3)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"growth_mb": (after - before) / 1024, "l0": report["sae_features"]["mean_l0"]}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["l0"] > 10, "the SAE must actually fire"
    print(f"peak RSS growth {result['growth_mb']:.0f} MB at L0 {result['l0']:.0f}")
    assert result["growth_mb"] < 400, result
