"""Description of the chosen clustering: sizes, PCA, separating features, means."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.feature_selection import f_classif

Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Projection:
    """Rows projected onto their first principal components.

    Attributes
    ----------
    coordinates : numpy.ndarray of shape (n_rows, 2)
        The second column is 0 when the input has a single feature.
    explained_variance_ratio : list of float
        Share of the scaled input's variance along each component kept.
    """

    coordinates: npt.NDArray[np.float64]
    explained_variance_ratio: list[float]


def relabel_by_size(labels: Labels) -> Labels:
    """Renumber clusters 0, 1, ... from the largest to the smallest.

    Clusters of equal size are ordered by the first row they contain, so the
    numbering depends only on the partition, not on the method's own numbers.

    Parameters
    ----------
    labels : numpy.ndarray of shape (n_rows,)

    Returns
    -------
    numpy.ndarray of shape (n_rows,)
    """
    values, first_rows, counts = np.unique(
        labels, return_index=True, return_counts=True
    )
    order = np.lexsort((first_rows, -counts))
    mapping = np.empty(values.max() - values.min() + 1, dtype=np.int64)
    mapping[values[order] - values.min()] = np.arange(len(values))
    renumbered: Labels = mapping[labels - values.min()]
    return renumbered


def cluster_sizes(labels: Labels) -> dict[int, int]:
    """Count the rows of each cluster, in cluster order."""
    values, counts = np.unique(labels, return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts, strict=True)}


def project_pca(scaled: npt.NDArray[np.float64], seed: int) -> Projection:
    """Project the scaled rows onto their first two principal components.

    Parameters
    ----------
    scaled : numpy.ndarray of shape (n_rows, n_features)
    seed : int
        Seed of the randomized solver, which scikit-learn picks for large inputs.

    Returns
    -------
    Projection
    """
    components = min(2, scaled.shape[1], len(scaled))
    pca = PCA(n_components=components, random_state=seed)
    coordinates = pca.fit_transform(scaled)
    if components < 2:
        padding = np.zeros((len(scaled), 2 - components))
        coordinates = np.hstack([coordinates, padding])
    ratio = [float(value) for value in pca.explained_variance_ratio_]
    return Projection(coordinates=coordinates, explained_variance_ratio=ratio)


def anova_f(features: pd.DataFrame, labels: Labels) -> pd.DataFrame:
    """Rank features by how well they separate the clusters (one-way ANOVA F).

    Parameters
    ----------
    features : pandas.DataFrame of shape (n_rows, n_features)
        Imputed values. F does not change under per-column scaling, so original
        and scaled units give the same values.
    labels : numpy.ndarray of shape (n_rows,)

    Returns
    -------
    pandas.DataFrame of shape (n_features, 3)
        ``feature``, ``f_value`` and ``p_value``, the largest F first. A feature
        constant inside every cluster has an infinite F and comes first. A
        feature constant inside every cluster and equal across clusters has a
        missing F and comes last.
    """
    with warnings.catch_warnings():
        # f_classif warns for the infinite and missing cases described above.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        f_values, p_values = f_classif(features.to_numpy(), labels)
    table = pd.DataFrame(
        {"feature": features.columns, "f_value": f_values, "p_value": p_values}
    )
    return table.sort_values(
        "f_value", ascending=False, kind="stable", na_position="last"
    ).reset_index(drop=True)


def cluster_means(original: pd.DataFrame, labels: Labels) -> dict[str, dict[str, Any]]:
    """Compute per-cluster and overall means in the input's original units.

    Missing values are skipped, so the means are those of the observed values,
    not of the imputed ones.

    Parameters
    ----------
    original : pandas.DataFrame of shape (n_rows, n_features)
    labels : numpy.ndarray of shape (n_rows,)

    Returns
    -------
    dict
        ``{"all": {feature: mean}, "0": {...}, "1": {...}, ...}``; a mean is None
        when a cluster has no observed value of the feature.
    """
    finite = original.where(np.isfinite(original))
    means = finite.groupby(labels).mean()
    result: dict[str, dict[str, Any]] = {"all": _clean(finite.mean())}
    for cluster, row in means.iterrows():
        result[str(cluster)] = _clean(row)
    return result


def _clean(row: pd.Series) -> dict[str, Any]:
    return {
        str(name): None if pd.isna(value) else float(value)
        for name, value in row.items()
    }
