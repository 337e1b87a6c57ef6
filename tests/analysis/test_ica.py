"""ICA geometry on planted sources: mixing directions recover what was planted; filters don't."""

import numpy as np
import pytest

from darkmatter.errors import UserError
from darkmatter.analysis.ica import Whitener, abs_cos, choose_k, fit, fit_samples, match, run_ica, to_components
from darkmatter.analysis.residual import pca

D, N_PLANTED = 24, 3


def planted(n=30000, seed=0):
    """Sparse-dictionary part + planted non-Gaussian sources + anisotropic Gaussian noise.

    The dictionary lives in dims 0..15 (32 overcomplete atoms, sparse exponential codes); the
    planted sources write along non-orthogonal unit directions in dims 16..23; the Gaussian
    noise has very different variances (std 0.1 to 16) across dims 16..23, so whitening stretches
    the space and filters (Λ^-1/2), the seed's W·Vᵀ (Λ^0) and directions (Λ^+1/2) disagree.
    """
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((32, 16))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = rng.exponential(1.0, (n, 32)) * (rng.random((n, 32)) < 0.05)
    data = np.zeros((n, D))
    data[:, :16] = codes @ atoms
    directions = np.zeros((N_PLANTED, D))
    directions[:, 16:] = rng.standard_normal((N_PLANTED, 8))
    directions[1] += 0.6 * directions[0]  # non-orthogonal on purpose
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    sources = rng.laplace(size=(n, N_PLANTED)) * 2.0
    data += sources @ directions
    noise_std = np.r_[np.full(16, 0.3), np.geomspace(0.1, 16.0, 8)]
    data += rng.standard_normal((n, D)) * noise_std
    return data, directions


def decompose(data, k, backend="picard", seed=0):
    cov = np.cov(data, rowvar=False)
    values, vectors = pca(cov)
    whitener = Whitener.from_pca(data.mean(0), values, vectors, k)
    z = whitener(data)
    run = run_ica(z, backend, seed, max_iter=2000)
    return to_components(run.unmixing_white, whitener, z, float(values.sum())), run, whitener, z


def best_cos(planted_dirs, rows):
    return abs_cos(planted_dirs, rows).max(axis=1)


@pytest.fixture(scope="module")
def data():
    return planted()


def test_mixing_directions_recover_planted_sources(data):
    x, directions = data
    comps, run, _, _ = decompose(x, k=D)
    assert run.converged and run.n_iter > 0
    assert (best_cos(directions, comps.mixing) > 0.9).all()


def test_filters_and_the_seed_formula_do_not(data):
    """Under anisotropic noise, unmixing filters and W·Vᵀ (no √λ) miss the planted directions."""
    x, directions = data
    comps, run, whitener, _ = decompose(x, k=D)
    seed_formula = run.unmixing_white @ whitener.basis.T  # the seed's mixing_.T @ components_
    assert best_cos(directions, comps.unmixing).min() < 0.8
    assert best_cos(directions, seed_formula).min() < 0.8
    assert best_cos(directions, comps.mixing).min() > best_cos(directions, comps.unmixing).min() + 0.1


def test_sources_are_read_by_filters_and_written_by_directions(data):
    x, _ = data
    comps, _, _, _ = decompose(x, k=D)
    s = comps.sources(x)
    np.testing.assert_allclose(s.std(0), 1.0, atol=0.02)  # unit-variance sources
    recon = comps.mean + s @ comps.mixing
    np.testing.assert_allclose(recon, x, atol=1e-6)  # k = d: A s reproduces t exactly
    assert (comps.skew >= 0).all(), "signs are fixed to put the heavier tail positive"
    assert (np.diff(comps.kurtosis) <= 1e-12).all(), "ordered by kurtosis"
    np.testing.assert_allclose(comps.variance_share.sum(), 1.0, rtol=1e-6)


def test_picard_agrees_with_fastica(data):
    x, directions = data
    ours, _, _, _ = decompose(x, k=12, backend="picard")
    ref, run, _, _ = decompose(x, k=12, backend="fastica")
    assert run.converged
    for comps in (ours, ref):
        assert (best_cos(directions, comps.mixing) > 0.9).all()
    planted_in_ours = abs_cos(directions, ours.mixing).argmax(axis=1)
    _, agreement = match(ours.mixing[planted_in_ours], ref.mixing)
    assert (agreement > 0.99).all()


class StabilityCfg:
    backend, seed, max_iter, tol, stable_threshold = "picard", 0, 2000, None, 0.9

    def __init__(self, seeds, resamples):
        self.seeds, self.resamples = seeds, resamples


def _whitened(x, k=12):
    values, vectors = pca(np.cov(x, rowvar=False))
    whitener = Whitener.from_pca(x.mean(0), values, vectors, k)
    return whitener, float(values.sum())


def test_stability_across_restarts_and_disjoint_samples(data):
    """Planted sources come back from every restart and from disjoint token samples; the
    near-Gaussian rest does not. Matching is in whitened space (rows of W)."""
    x, directions = data
    whitener, total = _whitened(x)
    samples = fit_samples(np.arange(len(x)), 10000, 2, seed=0)
    assert [len(s) for s in samples] == [10000, 10000, 10000]
    assert len(np.unique(np.concatenate(samples))) == 30000, "the samples are disjoint"
    result = fit([whitener(x[s]) for s in samples], whitener, total, StabilityCfg(seeds=3, resamples=2))
    assert len(result.runs) == 5 and all(r.converged for r in result.runs)
    assert result.seed_match.shape == (2, 12) and result.resample_match.shape == (2, 12)
    planted_ids = abs_cos(directions, result.components.mixing).argmax(axis=1)
    assert result.stable[planted_ids].all(), "planted sources are found from every start and every sample"
    assert result.stable.sum() < 12, "the Gaussian bulk is not identifiable and does not come back"
    np.testing.assert_allclose(result.components.white @ result.components.white.T, np.eye(12), atol=1e-6)


def test_one_seed_and_no_resamples_is_not_measured_not_all_stable(data):
    x, _ = data
    whitener, total = _whitened(x[:5000])
    result = fit([whitener(x[:5000])], whitener, total, StabilityCfg(seeds=1, resamples=0))
    assert result.stable is None and result.seed_match.shape == (0, 12)


def test_matching_in_whitened_space_is_not_inflated_by_anisotropy():
    """Two unrelated random W give mixing directions that share the top PCs (high |cos|), but rows
    of W that are no closer than chance."""
    rng = np.random.default_rng(3)
    basis, _ = np.linalg.qr(rng.standard_normal((40, 10)))
    scale = np.sqrt(np.geomspace(1000.0, 0.001, 10))
    w1, w2 = (np.linalg.qr(rng.standard_normal((10, 10)))[0] for _ in range(2))
    mixing = [(w * scale[None, :]) @ basis.T for w in (w1, w2)]
    assert np.median(match(mixing[0], mixing[1])[1]) > 0.9, "mixing directions crowd into the top PC"
    assert np.median(match(w1, w2)[1]) < 0.8


def test_k_beyond_rank_fails_with_one_line():
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 10))
    values, vectors = pca(np.cov(low_rank, rowvar=False))
    with pytest.raises(UserError, match="ica.n_components 5 exceeds the rank 3"):
        Whitener.from_pca(low_rank.mean(0), values, vectors, 5)


def test_auto_k_follows_the_spectrum():
    class Cfg:
        n_components, auto_variance, max_components = "auto", 0.5, 100

    values = np.array([5.0, 3.0, 1.0, 1.0])
    assert choose_k(values, Cfg)[0] == 1
    Cfg.auto_variance = 0.8
    assert choose_k(values, Cfg)[0] == 2
    Cfg.max_components = 2
    Cfg.auto_variance = 0.95
    k, why = choose_k(values, Cfg)
    assert k == 2 and "capped" in why


def test_non_convergence_is_reported(data):
    x, _ = data
    values, vectors = pca(np.cov(x, rowvar=False))
    z = Whitener.from_pca(x.mean(0), values, vectors, 12)(x)
    run = run_ica(z, "picard", 0, max_iter=2)
    assert not run.converged and run.n_iter <= 2 and run.gradient_norm is not None and run.gradient_norm > run.tol


def test_random_units_read_the_same_whitened_target_as_the_components(data):
    """s = q·z: unit variance, the same mean and whitening as the ICA sources, but not optimised."""
    from darkmatter.interp.examples import random_filters

    x, _ = data
    whitener, _ = _whitened(x)
    components = {"pca_basis": whitener.basis, "pca_scale": whitener.scale}
    filters = random_filters(components, 50, seed=0)
    s = (x - whitener.mean) @ filters.T
    np.testing.assert_allclose(s.std(0), 1.0, atol=0.02)
    q = filters @ whitener.basis * whitener.scale[None, :]  # back to whitened coordinates
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(s, whitener(x) @ q.T, rtol=1e-8, atol=1e-8)


def test_heldout_statistics_count_the_outliers_the_other_way():
    from darkmatter.analysis.ica import heldout_statistics
    from darkmatter.analysis.tokens import ORDINARY, OUTLIER

    rng = np.random.default_rng(0)
    z = rng.standard_normal((5000, 4))
    classes = np.full(5000, ORDINARY)
    classes[:5] = OUTLIER
    z[:5, 0] = 80.0  # a handful of huge tokens drive component 0
    white = np.eye(4)
    excluded = heldout_statistics(z, classes, True, white, 20, 0)
    assert excluded.n_tokens == 4995 and excluded.n_other_way == 5000
    assert abs(excluded.kurtosis[0]) < 0.5 < 50 < excluded.kurtosis_other_way[0]
    kept = heldout_statistics(z, classes, False, white, 20, 0)
    assert kept.kurtosis[0] > 50 and abs(kept.kurtosis_other_way[0]) < 0.5 and len(kept.random_kurtosis) == 20
