"""Dictionary comparison: chunked max |cos| is exact; the rotation null is the fair baseline; the
kurtosis gap compares like with like."""

import numpy as np
import pytest
import torch
from scipy.stats import kurtosis, mannwhitneyu

from darkmatter.analysis.compare import (bins, cosine_blocks, fit_checks, kurtosis_gap, max_abs_cos, median_gap, rotation_null_directions,
                                         rotation_test)
from darkmatter.config import CompareConfig
from darkmatter.stats import random_rotation


def test_chunked_max_cos_equals_dense():
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((7, 20))
    decoder = torch.from_numpy(rng.standard_normal((1000, 20)).astype(np.float32) * rng.uniform(0.1, 5, (1000, 1)).astype(np.float32))
    dense = np.abs((dirs / np.linalg.norm(dirs, axis=1, keepdims=True)) @ (decoder.numpy() / np.linalg.norm(decoder.numpy(), axis=1, keepdims=True)).T)
    for rows in (1, 33, 1000, 5000):  # decoder rows per block (cosine_blocks: 8 B per row and dimension)
        best, arg = max_abs_cos(dirs, decoder, 8 * 20 * rows)
        np.testing.assert_allclose(best, dense.max(1), rtol=1e-5)
        np.testing.assert_array_equal(arg, dense.argmax(1))


def test_the_cosine_blocks_stay_within_the_budget():
    """Both temporaries of max_abs_cos fit half the budget each, at a 262k width and 128,000 null directions."""
    for n, rows, d, budget in ((128_000, 262_144, 1152, 2 << 30), (128_000, 262_144, 2560, 256 << 20), (7, 10, 20, 1)):
        block_rows, per = cosine_blocks(n, rows, d, budget)
        assert 1 <= block_rows <= rows and 1 <= per <= n
        if budget > 8 * d:
            assert block_rows * d * 4 <= budget / 2 and per * block_rows * 4 <= budget / 2
    rng = np.random.default_rng(3)  # many direction blocks and decoder blocks: the same answer as one block
    dirs, decoder = rng.standard_normal((500, 20)), rng.standard_normal((1000, 20)).astype(np.float32)
    assert cosine_blocks(500, 1000, 20, 8 * 20 * 100) == (100, 20)
    small, whole = max_abs_cos(dirs, decoder, 8 * 20 * 100), max_abs_cos(dirs, decoder, 1 << 30)
    np.testing.assert_allclose(small[0], whole[0], rtol=1e-6)
    np.testing.assert_array_equal(small[1], whole[1])


def test_a_decoder_row_is_found_and_sign_does_not_matter():
    rng = np.random.default_rng(1)
    decoder = rng.standard_normal((300, 16)).astype(np.float32)
    best, arg = max_abs_cos(-3.0 * decoder[[17, 250]], decoder, 8 * 16 * 64)
    np.testing.assert_allclose(best, 1.0, rtol=1e-5)
    assert arg.tolist() == [17, 250]


def test_bins_partition_the_directions():
    counts = bins(np.array([0.1, 0.29, 0.3, 0.5, 0.8, 0.81, 0.99]), 0.3, 0.8)
    assert (counts["novel"], counts["partial"], counts["matched"]) == (2, 3, 2)
    assert counts["novel_fraction"] == pytest.approx(2 / 7)


def test_random_directions_are_far_from_a_small_dictionary_in_high_dimension():
    """The reference baseline is what chance looks like: in d=640, |cos| with 4096 rows stays well below 0.3."""
    from darkmatter.stats import random_unit_directions

    decoder = torch.from_numpy(random_unit_directions(4096, 640, 1).astype(np.float32))
    best, _ = max_abs_cos(random_unit_directions(200, 640, 2), decoder, 1 << 20)
    assert best.max() < 0.3 and best.min() > 0.05


def _anisotropic_world(seed=0, d=60, k=12):
    """A whitening subspace V with a steep spectrum Λ, and a dictionary that lives along its top PCs."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, k)))
    scale = np.sqrt(np.geomspace(100.0, 0.01, k))
    decoder = basis[:, :3] @ rng.standard_normal((3, 400)) + 0.3 * rng.standard_normal((d, 400))
    return basis, scale, torch.from_numpy(decoder.T.astype(np.float32))


def test_the_rotation_null_carries_the_whitening_weight():
    """An ICA that found nothing (a random W) writes V Λ^{1/2} Wᵀ, which leans on the top PCs. The old
    baseline (random V g, no Λ^{1/2}) then calls it "closer to the dictionary"; the rotation null does not."""
    basis, scale, decoder = _anisotropic_world()
    k = len(scale)
    nothing = (random_rotation(k, np.random.default_rng(99)) * scale[None, :]) @ basis.T
    ica_cos = max_abs_cos(nothing, decoder, 1 << 16)[0]
    g = np.random.default_rng(5).standard_normal((1000, k)) @ basis.T
    old_baseline = max_abs_cos(g, decoder, 1 << 16)[0]
    assert mannwhitneyu(ica_cos, old_baseline, alternative="greater").pvalue < 0.01, "the old test is fooled"
    null = max_abs_cos(rotation_null_directions(basis, scale, 400, 7), decoder, 1 << 16)[0].reshape(400, k)
    test = rotation_test(ica_cos, null, novel_below=0.3)
    assert test["median_max_cos"]["p_two_sided"] > 0.05
    assert test["n_rotations"] == 400 and 0 < test["median_max_cos"]["p_closer"] <= 1


def test_the_rotation_test_finds_directions_that_sit_on_the_dictionary():
    basis, scale, decoder = _anisotropic_world(seed=1)
    k = len(scale)
    inside = np.random.default_rng(2).standard_normal((k, k)) @ basis.T  # directions in the searched subspace ...
    decoder = torch.cat([decoder, torch.from_numpy(inside.astype(np.float32))])  # ... that the SAE has
    null = max_abs_cos(rotation_null_directions(basis, scale, 300, 3), decoder, 1 << 16)[0].reshape(300, k)
    test = rotation_test(max_abs_cos(inside, decoder, 1 << 16)[0], null, novel_below=0.3)
    assert test["median_max_cos"]["p_closer"] < 0.01 and test["median_max_cos"]["p_farther"] > 0.5
    assert test["median_max_cos"]["p_closer"] >= 1 / 301, "(1 + #) / (1 + B): never 0"


def test_each_ica_fit_gets_its_own_rotation_test_and_tail_test():
    """A reference fit on the dictionary with heavy tails, and a fit that found nothing: the checks tell them apart."""
    basis, scale, decoder = _anisotropic_world(seed=1)
    k, rng = len(scale), np.random.default_rng(4)
    inside = rng.standard_normal((k, k)) @ basis.T
    decoder = torch.cat([decoder, torch.from_numpy(inside.astype(np.float32))])
    nothing = (random_rotation(k, rng) * scale[None, :]) @ basis.T
    null = max_abs_cos(rotation_null_directions(basis, scale, 300, 3), decoder, 1 << 16)[0].reshape(300, k)
    cfg = CompareConfig(n_bootstrap=300)
    random_kurtosis = rng.normal(0, 0.1, 200)
    heavy, gaussian = rng.normal(5, 1, k), rng.normal(0, 0.1, k)
    reference = {"rotation_null": rotation_test(max_abs_cos(inside, decoder, 1 << 16)[0], null, cfg.novel_below),
                 "kurtosis_gap": {"ica_vs_random_whitened": median_gap(heavy, random_kurtosis, cfg.n_bootstrap, rng)}}
    components = {"other_fits": np.array(["seed 1"]), "other_mixing": nothing[None], "other_kurtosis": gaussian[None],
                  "random_whitened_kurtosis": random_kurtosis}
    ref, other = fit_checks(components, decoder, null, reference, cfg, 1 << 16)
    assert (ref["fit"], other["fit"]) == ("reference", "seed 1")
    assert ref["median_max_cos"]["p_closer"] < 0.01 and other["median_max_cos"]["p_closer"] > 0.05
    assert ref["ica_vs_random_whitened"]["ci"][0] > 0 and other["ica_vs_random_whitened"]["ci"][0] < 0 < other["ica_vs_random_whitened"]["ci"][1]
    one_fit = {"other_fits": np.array([], dtype=str), "other_mixing": np.zeros((0, k, basis.shape[0])),
               "other_kurtosis": np.zeros((0, k)), "random_whitened_kurtosis": random_kurtosis}
    assert fit_checks(one_fit, decoder, null, reference, cfg, 1 << 16) == [ref], "one fit only (ica.seeds 1, no resamples)"


def test_rotation_null_directions_are_mixing_directions_of_orthogonal_w():
    basis, scale, _ = _anisotropic_world()
    dirs = rotation_null_directions(basis, scale, 3, 0).reshape(3, len(scale), -1)
    for w_dirs in dirs:  # rows q Λ^{1/2} Vᵀ: back in whitened coordinates they are an orthogonal W times Λ^{1/2}
        w = (w_dirs @ basis) / scale[None, :]
        np.testing.assert_allclose(w @ w.T, np.eye(len(scale)), atol=1e-10)


def _gap_inputs(rng, n=20000, n_features=60, n_ica=30):
    """SAE latents: a sparse code (firing rate p) over Gaussian pre-activations; ICA sources: Gaussian."""
    pre = rng.standard_normal((n, n_features))
    rates = rng.uniform(0.01, 0.05, n_features)
    thresholds = np.array([np.quantile(pre[:, j], 1 - rate) for j, rate in enumerate(rates)])
    latents = np.where(pre > thresholds, pre, 0.0)
    sources = rng.standard_normal((n, n_ica))
    stats = {"latent_kurtosis": kurtosis(latents), "preact_kurtosis": kurtosis(pre),
             "kurtosis_x_random_directions": kurtosis(rng.standard_normal((n, 50)))}
    components = {"kurtosis": kurtosis(sources), "random_whitened_kurtosis": kurtosis(rng.standard_normal((n, 50))),
                  "stability_measured": np.array(False), "stable": np.zeros(n_ica, bool)}
    return components, stats, latents


def test_the_seed_kurtosis_gap_is_sparsity_and_the_like_for_like_gap_is_not():
    rng = np.random.default_rng(0)
    components, stats, latents = _gap_inputs(rng)
    gap = kurtosis_gap(components, stats, np.ones(60, bool), CompareConfig(n_bootstrap=500))
    rate = (latents > 0).mean(0)
    assert gap["seed_definition"]["median_a"] == pytest.approx(np.median(1 / rate), rel=0.35), "~1/p"
    assert gap["seed_definition"]["ci"][0] > 10, "the seeds' gap is large and 'significant'"
    lo, hi = gap["like_for_like"]["ci"]
    assert lo < 0 < hi and abs(gap["like_for_like"]["difference"]) < 0.1, "Gaussian readouts on both sides: no gap"
    assert gap["like_for_like"]["p_permutation"] > 0.05


def test_the_gap_is_a_difference_and_no_ratio_is_formed_across_zero():
    rng = np.random.default_rng(1)
    components, stats, _ = _gap_inputs(rng)
    components["kurtosis"] = components["kurtosis"] - 1.0  # platykurtic sources: median < 0
    gap = kurtosis_gap(components, stats, np.ones(60, bool), CompareConfig(n_bootstrap=200))
    assert gap["seed_definition"]["median_b"] < 0 and gap["seed_definition"]["ratio_of_medians"] is None
    assert gap["like_for_like"]["difference"] > 0.8 and gap["like_for_like"]["ci"][0] > 0


def test_max_abs_cos_among_a_subset_reads_it_block_by_block_and_equals_the_copy():
    """compare's live-feature cosines: the rows ``among`` are read in blocks (no decoder-sized copy), with
    the same maxima and argmax positions as a search of the copied subset."""
    rng = np.random.default_rng(3)
    decoder = torch.from_numpy(rng.standard_normal((500, 16)).astype(np.float32))
    dirs = rng.standard_normal((7, 16))
    among = np.sort(rng.choice(500, size=123, replace=False))
    budget = 3 * 4 * 16 * 20  # blocks of a few dozen rows: several blocks over the subset
    assert cosine_blocks(7, len(among), 16, budget)[0] < len(among)
    cos, arg = max_abs_cos(dirs, decoder, budget, among=among)
    cos_copy, arg_copy = max_abs_cos(dirs, decoder[among], budget)
    np.testing.assert_allclose(cos, cos_copy, rtol=1e-6)
    np.testing.assert_array_equal(arg, arg_copy)
