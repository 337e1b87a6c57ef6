"""Dictionary comparison: chunked max |cos| is exact; baselines and the kurtosis gap behave."""

import numpy as np
import pytest
import torch

from darkmatter.analysis.compare import bins, kurtosis_gap, max_abs_cos, random_in_subspace


def test_chunked_max_cos_equals_dense():
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((7, 20))
    decoder = torch.from_numpy(rng.standard_normal((1000, 20)).astype(np.float32) * rng.uniform(0.1, 5, (1000, 1)).astype(np.float32))
    dense = np.abs((dirs / np.linalg.norm(dirs, axis=1, keepdims=True)) @ (decoder.numpy() / np.linalg.norm(decoder.numpy(), axis=1, keepdims=True)).T)
    for chunk in (1, 33, 1000, 5000):
        best, arg = max_abs_cos(dirs, decoder, chunk)
        np.testing.assert_allclose(best, dense.max(1), rtol=1e-5)
        np.testing.assert_array_equal(arg, dense.argmax(1))


def test_a_decoder_row_is_found_and_sign_does_not_matter():
    rng = np.random.default_rng(1)
    decoder = rng.standard_normal((300, 16)).astype(np.float32)
    best, arg = max_abs_cos(-3.0 * decoder[[17, 250]], decoder, 64)
    np.testing.assert_allclose(best, 1.0, rtol=1e-5)
    assert arg.tolist() == [17, 250]


def test_bins_partition_the_directions():
    counts = bins(np.array([0.1, 0.29, 0.3, 0.5, 0.8, 0.81, 0.99]), 0.3, 0.8)
    assert (counts["novel"], counts["partial"], counts["matched"]) == (2, 3, 2)
    assert counts["novel_fraction"] == pytest.approx(2 / 7)


def test_random_in_subspace_stays_in_the_span():
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.standard_normal((30, 5)))
    v = random_in_subspace(basis, 50, 0)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(v @ basis, axis=1), 1.0, rtol=1e-10)


def test_random_directions_are_far_from_a_small_dictionary_in_high_dimension():
    """The random baseline is what chance looks like: in d=640, |cos| with 4096 rows stays well below 0.3."""
    from darkmatter.stats import random_unit_directions

    decoder = torch.from_numpy(random_unit_directions(4096, 640, 1).astype(np.float32))
    best, _ = max_abs_cos(random_unit_directions(200, 640, 2), decoder, 1024)
    assert best.max() < 0.3 and best.min() > 0.05


def test_kurtosis_gap_ratio_direction():
    gap = kurtosis_gap(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 60.0, np.nan]))
    assert gap["ratio_of_medians"] == pytest.approx(10.0) and gap["ratio_of_means"] == pytest.approx(15.0)
    assert kurtosis_gap(np.array([]), np.array([1.0]))["ratio_of_medians"] is None
