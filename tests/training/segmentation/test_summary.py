"""Tests of the description of the chosen clustering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.feature_selection import f_classif

from tests.training.segmentation.factories import blob_table
from training.segmentation.summary import (
    anova_f,
    cluster_means,
    cluster_sizes,
    project_pca,
    relabel_by_size,
)


def test_relabel_orders_by_size() -> None:
    labels = np.array([7, 3, 3, 5, 5, 5])

    assert relabel_by_size(labels).tolist() == [2, 1, 1, 0, 0, 0]


def test_relabel_breaks_size_ties_by_first_row() -> None:
    labels = np.array([4, 9, 4, 9, 2])

    assert relabel_by_size(labels).tolist() == [0, 1, 0, 1, 2]


def test_cluster_sizes_counts_rows() -> None:
    assert cluster_sizes(np.array([0, 0, 1, 0, 2])) == {0: 3, 1: 1, 2: 1}


def test_anova_f_matches_f_classif() -> None:
    table = blob_table(rows=60, centers=3)
    labels = np.repeat([0, 1, 2], 20)

    result = anova_f(table, labels)

    expected, _ = f_classif(table.to_numpy(), labels)
    by_name = dict(zip(table.columns, expected, strict=True))
    assert result["f_value"].is_monotonic_decreasing
    for name, value in zip(result["feature"], result["f_value"], strict=True):
        assert value == pytest.approx(by_name[name])


def test_anova_f_orders_infinite_first() -> None:
    table = pd.DataFrame({"noisy": [1.0, 2.0, 1.5, 3.0], "exact": [0.0, 0.0, 1.0, 1.0]})
    labels = np.array([0, 0, 1, 1])

    result = anova_f(table, labels)

    assert result["feature"].tolist() == ["exact", "noisy"]
    assert np.isinf(result["f_value"].iloc[0])


def test_cluster_means_skip_missing_values() -> None:
    original = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "b": [1, 2, 3, 4]})
    labels = np.array([0, 0, 0, 1])

    means = cluster_means(original, labels)

    assert means["0"] == {"a": 2.0, "b": 2.0}
    assert means["1"] == {"a": 10.0, "b": 4.0}
    assert means["all"]["a"] == pytest.approx(14 / 3)


def test_project_pca_matches_scikit_learn() -> None:
    values = blob_table(rows=50, features=4).to_numpy()

    projection = project_pca(values, seed=0)

    expected = PCA(n_components=2).fit(values)
    assert projection.coordinates.shape == (50, 2)
    assert projection.explained_variance_ratio == pytest.approx(
        expected.explained_variance_ratio_.tolist()
    )


def test_project_pca_single_feature() -> None:
    values = np.array([[0.0], [1.0], [3.0]])

    projection = project_pca(values, seed=0)

    assert projection.coordinates.shape == (3, 2)
    assert projection.explained_variance_ratio == pytest.approx([1.0])
    assert (projection.coordinates[:, 1] == 0).all()
