"""Cluster-bootstrap statistics: planted dependence and planted effects come back."""

from __future__ import annotations

import numpy as np
import pytest

from darkmatter.stats import (
    cluster_mean_with_ci,
    cluster_paired_difference,
    cluster_ratio_with_ci,
    linked_clusters,
    mean_with_ci,
)


def test_rows_sharing_a_document_are_one_cluster_transitively():
    rows = [np.array([0, 0, 1]), np.array([1, 2]), np.array([3]), np.array([2, 4]), np.array([5, 5])]
    labels = linked_clusters(rows)
    assert labels[0] == labels[1] == labels[3]  # 0-1 share doc 1, 1-3 share doc 2
    assert len({labels[0], labels[2], labels[4]}) == 3


def test_the_interval_counts_clusters_not_rows():
    """Ten clusters of ten identical rows hold ten independent values: the cluster interval has the
    width of a ten-value interval, the naive row interval is ~√10 too narrow."""
    rng = np.random.default_rng(0)
    cluster_values = rng.standard_normal(10)
    values = np.repeat(cluster_values, 10)
    clusters = np.repeat(np.arange(10), 10)
    clustered = cluster_mean_with_ci(values, clusters, 4000, rng)
    naive = mean_with_ci(values, 4000, rng)
    as_ten = mean_with_ci(cluster_values, 4000, rng)
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert clustered["n_clusters"] == 10 and clustered["n"] == 100
    assert width(clustered) == pytest.approx(width(as_ten), rel=0.1)
    assert width(naive) < width(clustered) / 2.5
    assert clustered["mean"] == pytest.approx(values.mean())


def test_too_few_clusters_get_no_interval():
    out = cluster_mean_with_ci(np.arange(20.0), np.repeat(np.arange(4), 5), 100, np.random.default_rng(0))
    assert out["ci"] is None and out["n_clusters"] == 4


def test_a_planted_paired_difference_and_a_null_one():
    rng = np.random.default_rng(1)
    base = rng.standard_normal(60)
    clusters = np.repeat(np.arange(30), 2)
    shifted = cluster_paired_difference(base + 0.5 + 0.05 * rng.standard_normal(60), base, clusters, 2000, rng)
    assert shifted["difference"] == pytest.approx(0.5, abs=0.03)
    assert shifted["ci"][0] > 0.4 and shifted["p_permutation"] < 0.01
    noise = 0.05 * rng.standard_normal(60)
    null = cluster_paired_difference(base + noise - noise.mean(), base, clusters, 2000, rng)
    assert null["ci"][0] < 0 < null["ci"][1] and null["p_permutation"] > 0.05


def test_a_ratio_of_means_with_its_interval():
    rng = np.random.default_rng(2)
    denominator = 10 + rng.standard_normal(40)
    numerator = 0.97 * denominator + 0.01 * rng.standard_normal(40)
    out = cluster_ratio_with_ci(numerator, denominator, np.arange(40), 2000, rng)
    assert out["value"] == pytest.approx(0.97, abs=2e-3)
    assert out["ci"][0] < 0.97 < out["ci"][1] and out["ci"][1] - out["ci"][0] < 0.01
