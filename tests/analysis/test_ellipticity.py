"""The ellipticity test: an elliptical dark matter (a Gaussian scale mixture) gives no directional excess
in either reading, independent sparse sources give one in both, and the statistics it builds on are exact."""

import numpy as np
import pytest
from scipy.stats import kurtosis

from darkmatter.analysis.ellipticity import (elliptical_kurtosis, ellipticity, kurtosis_from_sums, mahalanobis_sq,
                                             moment_sums, verdict)
from darkmatter.errors import UserError
from darkmatter.stats import random_rotation

K, N, DOCS = 8, 12_000, 120


def _clusters(n: int) -> np.ndarray:
    return np.repeat(np.arange(DOCS), n // DOCS)


def _run(z: np.ndarray, white: np.ndarray) -> dict:
    return ellipticity(z, white, _clusters(len(z)), n_random=500, n_surrogates=60, n_boot=400, seed=0)


def test_moment_sums_give_scipys_kurtosis():
    s = np.random.default_rng(0).laplace(size=(1000, 3)) + 0.3
    clusters = np.arange(1000) % 7
    assert np.allclose(kurtosis_from_sums(moment_sums(s, clusters, 7).sum(axis=0)), kurtosis(s, axis=0))


def test_random_directions_equal_the_elliptical_prediction_for_any_distribution():
    """Independent Laplace sources are not elliptical, yet the mean random-projection kurtosis equals the
    prediction from the norms: the identity that makes random directions blind to the question."""
    z = np.random.default_rng(1).laplace(size=(40_000, K)) / np.sqrt(2)
    out = ellipticity(z, np.eye(K), np.arange(len(z)) % DOCS, n_random=4000, n_surrogates=20, n_boot=100, seed=0)
    assert abs(out["random_mean"] - out["predicted"]) < 0.05
    assert abs(out["predicted"] - 3 * K / (K + 2) * (1 + 5 / K) + 3) < 0.1  # 9/(k+2) for unit Laplace


def test_the_prediction_is_a_scale_mixtures_kurtosis():
    """z = s·g with log-normal s: every projection has excess kurtosis 3 E[s⁴]/E[s²]² − 3 = 3 e^{4σ²} − 3."""
    rng = np.random.default_rng(2)
    sigma = 0.4
    s = np.exp(sigma * rng.standard_normal(200_000))
    z = s[:, None] * rng.standard_normal((200_000, K))
    expected = 3 * np.exp(4 * sigma**2) - 3
    assert abs(elliptical_kurtosis(mahalanobis_sq(z), K) - expected) < 0.05 * expected


def test_an_elliptical_dark_matter_has_no_directional_excess():
    rng = np.random.default_rng(3)
    z = np.exp(0.4 * rng.standard_normal(N))[:, None] * rng.standard_normal((N, K))
    out = _run(z, random_rotation(K, rng))
    for reading in ("norms_kept", "radial_removed"):
        r = out[reading]
        assert r["ci"][0] <= 0 <= r["ci"][1] and r["p_two_sided"] > 0.05, (reading, r)
    assert out["norms_kept"]["null_mean"] > 0.5  # heavy-tailed, yet radially: the norms explain it all
    assert verdict(out) == "elliptical"


def test_independent_sparse_sources_are_directional():
    """Sources active on 5% of tokens: ICA's directions (here the true unmixing) carry tails that the
    norms do not explain, and keep them with the radial part removed."""
    rng = np.random.default_rng(4)
    s = rng.standard_normal((N, K)) * (rng.random((N, K)) < 0.05) + 0.1 * rng.standard_normal((N, K))
    s /= s.std(axis=0)
    mixing = random_rotation(K, rng)
    out = _run(s @ mixing.T, mixing.T)
    for reading in ("norms_kept", "radial_removed"):
        assert out[reading]["ci"][0] > 0.5 and out[reading]["p_two_sided"] < 0.05, (reading, out[reading])
    assert verdict(out) == "directional"


def test_too_few_tokens_stop_with_the_fix():
    with pytest.raises(UserError, match="heldout_fraction"):
        ellipticity(np.zeros((50, K)), np.eye(K), np.zeros(50, int), 10, 20, 10, 0)


def test_too_few_documents_give_no_interval_and_no_verdict():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((2000, K))
    out = ellipticity(z, np.eye(K), np.arange(2000) % 3, n_random=50, n_surrogates=20, n_boot=100, seed=0)
    assert out["norms_kept"]["ci"] is None and out["norms_kept"]["p_two_sided"] is None
    assert verdict(out) == "unmeasured"
