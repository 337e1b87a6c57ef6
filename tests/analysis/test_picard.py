"""The torch Picard-O against python-picard, the implementation it reproduces."""

import numpy as np
import pytest
import torch
from test_ica import planted  # tests/analysis is on sys.path (pytest's rootdir-relative import)

from darkmatter.analysis.ica import Whitener, initial_rotation, match, run_ica
from darkmatter.analysis.picard import picard_o
from darkmatter.analysis.residual import pca


@pytest.fixture(scope="module")
def white():
    x, _ = planted(n=20000, seed=1)
    values, vectors = pca(np.cov(x, rowvar=False))
    return Whitener.from_pca(x.mean(0), values, vectors, 16)(x)


def test_follows_python_picards_trajectory(white):
    """Same start, same algorithm: the same iterations and the same W to round-off."""
    ours = run_ica(white, "picard", 3, max_iter=1000)
    ref = run_ica(white, "python-picard", 3, max_iter=1000)
    assert ours.converged and ref.converged
    assert ours.n_iter == ref.n_iter
    np.testing.assert_allclose(ours.unmixing_white, ref.unmixing_white, atol=1e-8)


def test_recovers_a_planted_rotation():
    """Laplace and uniform (sub-Gaussian: the extended rule's other sign) sources, rotated."""
    rng = np.random.default_rng(0)
    n = 20000
    sources = np.c_[rng.laplace(size=(n, 3)), rng.uniform(-1, 1, size=(n, 2))]
    sources = (sources - sources.mean(0)) / sources.std(0)
    rotation = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    z = sources @ rotation.T
    result = picard_o(torch.from_numpy(z.T.copy()), torch.from_numpy(initial_rotation(5, 0)), max_iter=500)
    assert result.converged and result.gradient_norm < 1e-7
    unmixing = result.unmixing.numpy()
    np.testing.assert_allclose(unmixing @ unmixing.T, np.eye(5), atol=1e-10)
    _, cos = match(rotation.T, unmixing)  # rows of Rᵀ unmix z exactly
    assert cos.min() > 0.99


def test_stops_at_max_iter_and_says_so(white):
    run = run_ica(white, "picard", 0, max_iter=2)
    assert not run.converged and run.n_iter == 1 and run.gradient_norm > run.tol


def test_the_callback_sees_every_iterate_and_the_last_is_the_result(white):
    """``callback(n, W)`` after each update: n counts up from 1, the iterates move, and the last
    one is the returned unmixing (bench_ica times when the iterates reach a solution from these)."""
    seen = []
    z, w0 = torch.from_numpy(np.ascontiguousarray(white.T)), torch.from_numpy(initial_rotation(16, 3))
    result = picard_o(z, w0, max_iter=1000, callback=lambda n, w: seen.append((n, w.clone())))
    assert result.converged and [n for n, _ in seen] == list(range(1, result.n_iter + 1))
    torch.testing.assert_close(seen[-1][1], result.unmixing, rtol=0, atol=0)
    assert (seen[0][1] - seen[-1][1]).abs().max() > 1e-3
    without = picard_o(z, w0, max_iter=1000)
    torch.testing.assert_close(without.unmixing, result.unmixing, rtol=0, atol=0)
