"""The sweep: every method for every k, scored by three internal metrics.

Methods, all on the preprocessed (robustly scaled) matrix:

* ``kmeans``: :class:`sklearn.cluster.KMeans`, fit on every row.
* ``gmm``: :class:`sklearn.mixture.GaussianMixture` with full covariance matrices,
  fit on every row; each row goes to its most probable component.
* ``ward``: :class:`sklearn.cluster.AgglomerativeClustering` with Ward linkage.
  Above ``ward_max_rows`` rows it is fit on one random sample, and every other
  row goes to the nearest cluster centroid of the sample
  (:class:`sklearn.neighbors.NearestCentroid`). Ward merges the pair of clusters
  that least increases the within-cluster sum of squares, so the nearest
  centroid is the assignment that increases it least for a single new row.

Metrics: silhouette (higher is better), Calinski-Harabasz (higher) and
Davies-Bouldin (lower). Above ``silhouette_max_rows`` rows the silhouette is
computed on one random sample, the same rows for every candidate.

The choice (:func:`choose_candidate`) considers the candidates that produced
exactly k non-empty clusters. Each metric is ranked across all of them, rank 1
for the best value and the average rank for ties. The candidate with the
lowest mean of its three ranks wins. Ties go to the higher silhouette, then to
the smaller k, then to the method listed first in ``METHODS``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import (
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestCentroid

from training.errors import InputDataError
from training.segmentation.config import METHODS, SegmentationConfig

log = logging.getLogger(__name__)

Labels = npt.NDArray[np.int64]
Matrix = npt.NDArray[np.float64]

METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
# Whether a higher value of the metric is better.
HIGHER_IS_BETTER = {
    "silhouette": True,
    "calinski_harabasz": True,
    "davies_bouldin": False,
}

SCORED = "scored"
DEGENERATE = "degenerate"
SKIPPED = "skipped"
FAILED = "failed"


@dataclass
class Candidate:
    """One method and k: its status, scores and labels.

    ``status`` is one of:

    * ``scored``: fit, scored and ranked;
    * ``degenerate``: scored, but fewer than k non-empty clusters came out, so
      it is not ranked;
    * ``skipped``: not fit, because the input is too small for k (``reason``);
    * ``failed``: the fit or a metric raised (``reason``).
    """

    method: str
    k: int
    status: str = SKIPPED
    reason: str | None = None
    silhouette: float | None = None
    calinski_harabasz: float | None = None
    davies_bouldin: float | None = None
    clusters_found: int | None = None
    fit_rows: int | None = None
    fit_seconds: float | None = None
    mean_rank: float | None = None
    warnings: list[str] = field(default_factory=list)
    labels: Labels | None = field(default=None, repr=False)

    @property
    def ranked(self) -> bool:
        """Whether the candidate takes part in the choice."""
        return self.status == SCORED

    def to_dict(self) -> dict[str, Any]:
        """Return the candidate without its labels, as JSON-ready values."""
        return {
            "method": self.method,
            "k": self.k,
            "status": self.status,
            "reason": self.reason,
            "silhouette": self.silhouette,
            "calinski_harabasz": self.calinski_harabasz,
            "davies_bouldin": self.davies_bouldin,
            "clusters_found": self.clusters_found,
            "fit_rows": self.fit_rows,
            "fit_seconds": self.fit_seconds,
            "mean_rank": self.mean_rank,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class Samples:
    """Row indices of the samples, or None where every row is used."""

    ward: npt.NDArray[np.int64] | None
    silhouette: npt.NDArray[np.int64] | None

    def to_dict(self, n_rows: int, config: SegmentationConfig) -> dict[str, Any]:
        """Describe the sampling for the report."""
        return {
            "rows": n_rows,
            "ward_fit_rows": n_rows if self.ward is None else len(self.ward),
            "ward_max_rows": config.ward_max_rows,
            "ward_rest_assigned_by": None
            if self.ward is None
            else "nearest centroid of the Ward clusters of the sample",
            "silhouette_rows": n_rows
            if self.silhouette is None
            else len(self.silhouette),
            "silhouette_max_rows": config.silhouette_max_rows,
            "calinski_harabasz_and_davies_bouldin_rows": n_rows,
        }


@dataclass(frozen=True)
class SweepResult:
    """Every candidate of the sweep and the chosen one."""

    candidates: list[Candidate]
    chosen: Candidate
    samples: Samples


def draw_samples(n_rows: int, config: SegmentationConfig) -> Samples:
    """Draw the Ward and silhouette row samples under the config's seed.

    Returns
    -------
    Samples
        Sorted row indices, or None for a step whose limit ``n_rows`` does not
        exceed.
    """
    rng = np.random.default_rng(config.seed)
    ward = _sample(rng, n_rows, config.ward_max_rows)
    silhouette = _sample(rng, n_rows, config.silhouette_max_rows)
    return Samples(ward=ward, silhouette=silhouette)


def _sample(
    rng: np.random.Generator, n_rows: int, limit: int
) -> npt.NDArray[np.int64] | None:
    if n_rows <= limit:
        return None
    return np.sort(rng.choice(n_rows, size=limit, replace=False)).astype(np.int64)


def score_labels(
    values: Matrix,
    labels: Labels,
    silhouette_rows: npt.NDArray[np.int64] | None = None,
) -> dict[str, float]:
    """Compute the three metrics of a labelling.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_rows, n_features)
    labels : numpy.ndarray of shape (n_rows,)
    silhouette_rows : numpy.ndarray of shape (n_sample,) or None
        Rows the silhouette is computed on; None uses every row.

    Returns
    -------
    dict
        ``silhouette``, ``calinski_harabasz`` and ``davies_bouldin``.

    Raises
    ------
    ValueError
        If the labels, or the labels of the silhouette sample, contain fewer
        than 2 clusters or as many clusters as rows.
    """
    if silhouette_rows is None:
        silhouette = silhouette_score(values, labels)
    else:
        silhouette = silhouette_score(values[silhouette_rows], labels[silhouette_rows])
    return {
        "silhouette": float(silhouette),
        "calinski_harabasz": float(calinski_harabasz_score(values, labels)),
        "davies_bouldin": float(davies_bouldin_score(values, labels)),
    }


def run_sweep(values: Matrix, config: SegmentationConfig) -> SweepResult:
    """Fit and score every method for every k, then choose one candidate.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_rows, n_features)
        Preprocessed input.
    config : SegmentationConfig

    Returns
    -------
    SweepResult

    Raises
    ------
    InputDataError
        If no candidate could be scored, for example with fewer than 3 rows or
        fewer than 2 distinct rows.
    """
    n_rows = len(values)
    samples = draw_samples(n_rows, config)
    distinct_rows = _count_distinct(values)
    ward_values = values if samples.ward is None else values[samples.ward]
    ward_distinct = (
        distinct_rows if samples.ward is None else _count_distinct(ward_values)
    )
    log.info(
        "sweeping %s for k=%d..%d on %d rows (%d distinct) and %d features",
        ", ".join(config.methods),
        config.k_min,
        config.k_max,
        n_rows,
        distinct_rows,
        values.shape[1],
    )

    candidates: list[Candidate] = []
    with _ward_tree_cache() as memory:
        for method in METHODS:
            if method not in config.methods:
                continue
            for k in config.k_values:
                candidate = Candidate(method=method, k=k)
                reason = _skip_reason(
                    method, k, n_rows, distinct_rows, ward_distinct, samples
                )
                if reason is not None:
                    candidate.reason = reason
                else:
                    fit = _fitter(method, config, samples, memory)
                    _fit_and_score(candidate, fit, values, samples)
                _log_candidate(candidate)
                candidates.append(candidate)

    rank_candidates(candidates)
    chosen = choose_candidate(candidates)
    if chosen is None:
        raise InputDataError(_no_candidate_message(n_rows, distinct_rows, config))
    return SweepResult(candidates=candidates, chosen=chosen, samples=samples)


def _count_distinct(values: Matrix) -> int:
    return int(len(np.unique(values, axis=0))) if len(values) else 0


def _skip_reason(
    method: str,
    k: int,
    n_rows: int,
    distinct_rows: int,
    ward_distinct: int,
    samples: Samples,
) -> str | None:
    # The silhouette is defined for 2 <= clusters <= rows - 1.
    if n_rows < k + 1:
        return f"k={k} needs at least {k + 1} rows, the input has {n_rows}"
    if distinct_rows < k:
        return f"k={k} needs at least {k} distinct rows, the input has {distinct_rows}"
    if method == "ward" and samples.ward is not None and ward_distinct < k:
        return (
            f"k={k} needs at least {k} distinct rows in the Ward sample, "
            f"it has {ward_distinct}"
        )
    return None


def _no_candidate_message(
    n_rows: int, distinct_rows: int, config: SegmentationConfig
) -> str:
    return (
        f"no clustering with k={config.k_min}..{config.k_max} could be scored on "
        f"{n_rows} rows with {distinct_rows} distinct values; expected at least "
        f"{config.k_min + 1} rows and {config.k_min} distinct rows."
    )


Fitter = Callable[[Matrix, int], Labels]


def _fitter(
    method: str,
    config: SegmentationConfig,
    samples: Samples,
    memory: joblib.Memory,
) -> Fitter:
    if method == "kmeans":
        return lambda values, k: fit_kmeans(values, k, config)
    if method == "gmm":
        return lambda values, k: fit_gmm(values, k, config)
    return lambda values, k: fit_ward(values, k, samples.ward, memory)


def fit_kmeans(values: Matrix, k: int, config: SegmentationConfig) -> Labels:
    """Fit K-Means on every row.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_rows, n_features)
    k : int
    config : SegmentationConfig
        Supplies the seed and the number of initialisations.

    Returns
    -------
    numpy.ndarray of shape (n_rows,)
    """
    model = KMeans(n_clusters=k, n_init=config.kmeans_n_init, random_state=config.seed)
    labels: Labels = model.fit_predict(values).astype(np.int64)
    return labels


def fit_gmm(values: Matrix, k: int, config: SegmentationConfig) -> Labels:
    """Fit a full-covariance Gaussian mixture on every row.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_rows, n_features)
    k : int
    config : SegmentationConfig
        Supplies the seed and the number of initialisations.

    Returns
    -------
    numpy.ndarray of shape (n_rows,)
        The component of highest posterior probability for each row.
    """
    model = GaussianMixture(
        n_components=k,
        covariance_type="full",
        n_init=config.gmm_n_init,
        random_state=config.seed,
    )
    labels: Labels = model.fit(values).predict(values).astype(np.int64)
    return labels


def fit_ward(
    values: Matrix,
    k: int,
    sample: npt.NDArray[np.int64] | None,
    memory: joblib.Memory | None = None,
) -> Labels:
    """Fit Ward linkage on every row, or on a sample and assign the rest.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_rows, n_features)
    k : int
    sample : numpy.ndarray of shape (n_sample,) or None
        Rows the tree is built on; None builds it on every row.
    memory : joblib.Memory or None
        Cache of the merge tree, so that each k only cuts the same tree.

    Returns
    -------
    numpy.ndarray of shape (n_rows,)
    """
    model = AgglomerativeClustering(
        n_clusters=k, linkage="ward", memory=memory, compute_full_tree=True
    )
    labels: Labels = np.empty(len(values), dtype=np.int64)
    if sample is None:
        labels[:] = model.fit_predict(values)
        return labels
    labels[sample] = model.fit_predict(values[sample])
    rest = np.ones(len(values), dtype=bool)
    rest[sample] = False
    if rest.any():
        centroids = NearestCentroid().fit(values[sample], labels[sample])
        labels[rest] = centroids.predict(values[rest])
    return labels


@contextmanager
def _ward_tree_cache() -> Iterator[joblib.Memory]:
    with tempfile.TemporaryDirectory(prefix="ward-tree-") as folder:
        yield joblib.Memory(location=folder, verbose=0)


def _fit_and_score(
    candidate: Candidate, fit: Fitter, values: Matrix, samples: Samples
) -> None:
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labels = fit(values, candidate.k)
            candidate.clusters_found = int(len(np.unique(labels)))
            scores = score_labels(values, labels, samples.silhouette)
        except (ValueError, np.linalg.LinAlgError) as exc:
            candidate.status = FAILED
            candidate.reason = str(exc)
            return
        finally:
            candidate.fit_seconds = round(time.perf_counter() - started, 3)
            candidate.warnings = sorted({str(item.message) for item in caught})

    candidate.labels = labels
    candidate.fit_rows = len(values)
    if candidate.method == "ward" and samples.ward is not None:
        candidate.fit_rows = len(samples.ward)
    for name, value in scores.items():
        setattr(candidate, name, value)
    candidate.status = SCORED
    if candidate.clusters_found != candidate.k:
        candidate.status = DEGENERATE
        candidate.reason = (
            f"{candidate.clusters_found} non-empty clusters came out of k={candidate.k}"
        )


def _log_candidate(candidate: Candidate) -> None:
    if candidate.status in (SCORED, DEGENERATE):
        log.info(
            "%s k=%d: silhouette %.4f, Calinski-Harabasz %.1f, Davies-Bouldin %.4f "
            "(%.2f s)%s",
            candidate.method,
            candidate.k,
            candidate.silhouette,
            candidate.calinski_harabasz,
            candidate.davies_bouldin,
            candidate.fit_seconds,
            "" if candidate.status == SCORED else f"; {candidate.reason}",
        )
    else:
        log.warning(
            "%s k=%d %s: %s",
            candidate.method,
            candidate.k,
            candidate.status,
            candidate.reason,
        )


def rank_candidates(candidates: list[Candidate]) -> None:
    """Set ``mean_rank`` of every ranked candidate, in place.

    Each metric is ranked across the ranked candidates, 1 for the best value and
    the average rank for ties. ``mean_rank`` is the mean of the three ranks.
    Candidates that are not ranked keep None.
    """
    ranked = [candidate for candidate in candidates if candidate.ranked]
    if not ranked:
        return
    table = pd.DataFrame({name: [getattr(c, name) for c in ranked] for name in METRICS})
    ranks = pd.DataFrame(
        {
            name: table[name].rank(
                method="average", ascending=not HIGHER_IS_BETTER[name]
            )
            for name in METRICS
        }
    )
    for candidate, mean_rank in zip(ranked, ranks.mean(axis=1), strict=True):
        candidate.mean_rank = float(mean_rank)


def choose_candidate(candidates: list[Candidate]) -> Candidate | None:
    """Return the ranked candidate with the lowest mean rank, or None.

    Ties go to the higher silhouette, then the smaller k, then the method that
    comes first in ``METHODS``. Call :func:`rank_candidates` first.
    """
    ranked = [c for c in candidates if c.ranked and c.mean_rank is not None]
    if not ranked:
        return None
    return min(ranked, key=_choice_key)


def _choice_key(candidate: Candidate) -> tuple[float, float, int, int]:
    assert candidate.mean_rank is not None and candidate.silhouette is not None
    return (
        candidate.mean_rank,
        -candidate.silhouette,
        candidate.k,
        METHODS.index(candidate.method),
    )
