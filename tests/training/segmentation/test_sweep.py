"""Tests of the sweep: metrics, the composite choice, sampling and small inputs."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import (
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

from tests.training.segmentation.factories import FAST_CONFIG, blob_matrix
from training.errors import InputDataError
from training.segmentation.sweep import (
    DEGENERATE,
    FAILED,
    SCORED,
    SKIPPED,
    Candidate,
    _fit_and_score,
    choose_candidate,
    draw_samples,
    fit_ward,
    rank_candidates,
    run_sweep,
    score_labels,
)

VALUES = np.array(
    [[0.0, 0.0], [0.1, 0.2], [0.2, 0.1], [5.0, 5.0], [5.1, 4.9], [4.8, 5.2], [9.0, 0.0]]
)
LABELS = np.array([0, 0, 0, 1, 1, 1, 2])


def _candidate(method: str, k: int, s: float, ch: float, db: float) -> Candidate:
    return Candidate(
        method=method,
        k=k,
        status=SCORED,
        silhouette=s,
        calinski_harabasz=ch,
        davies_bouldin=db,
        clusters_found=k,
    )


def test_score_labels_matches_scikit_learn() -> None:
    scores = score_labels(VALUES, LABELS)

    assert scores["silhouette"] == pytest.approx(silhouette_score(VALUES, LABELS))
    assert scores["calinski_harabasz"] == pytest.approx(
        calinski_harabasz_score(VALUES, LABELS)
    )
    assert scores["davies_bouldin"] == pytest.approx(
        davies_bouldin_score(VALUES, LABELS)
    )


def test_score_labels_silhouette_on_sample() -> None:
    rows = np.array([0, 1, 3, 4, 6])

    scores = score_labels(VALUES, LABELS, silhouette_rows=rows)

    assert scores["silhouette"] == pytest.approx(
        silhouette_score(VALUES[rows], LABELS[rows])
    )
    assert scores["calinski_harabasz"] == pytest.approx(
        calinski_harabasz_score(VALUES, LABELS)
    )


def test_rank_candidates_mean_rank() -> None:
    candidates = [
        _candidate("kmeans", 2, s=0.5, ch=100.0, db=0.9),
        _candidate("kmeans", 3, s=0.7, ch=50.0, db=0.5),
        _candidate("gmm", 2, s=0.1, ch=10.0, db=2.0),
    ]

    rank_candidates(candidates)

    # Ranks (silhouette, CH, DB): k=2 (2, 1, 2), k=3 (1, 2, 1), gmm (3, 3, 3).
    assert [c.mean_rank for c in candidates] == pytest.approx([5 / 3, 4 / 3, 3.0])
    assert choose_candidate(candidates) is candidates[1]


def test_rank_candidates_ties_share_rank() -> None:
    candidates = [
        _candidate("kmeans", 2, s=0.5, ch=100.0, db=0.9),
        _candidate("gmm", 2, s=0.5, ch=100.0, db=0.9),
    ]

    rank_candidates(candidates)

    assert [c.mean_rank for c in candidates] == [1.5, 1.5]


def test_choice_tie_prefers_higher_silhouette() -> None:
    # Equal mean ranks (1 + 2 + 1.5 and 2 + 1 + 1.5), higher silhouette wins.
    low = _candidate("kmeans", 2, s=0.4, ch=200.0, db=0.9)
    high = _candidate("ward", 3, s=0.6, ch=100.0, db=0.9)
    candidates = [low, high]
    rank_candidates(candidates)

    assert low.mean_rank == high.mean_rank
    assert choose_candidate(candidates) is high


def test_choice_tie_prefers_smaller_k() -> None:
    candidates = [
        _candidate("kmeans", 4, s=0.5, ch=100.0, db=0.9),
        _candidate("ward", 3, s=0.5, ch=100.0, db=0.9),
    ]
    rank_candidates(candidates)

    assert choose_candidate(candidates) is candidates[1]


def test_choice_tie_prefers_method_order() -> None:
    candidates = [
        _candidate("ward", 3, s=0.5, ch=100.0, db=0.9),
        _candidate("gmm", 3, s=0.5, ch=100.0, db=0.9),
        _candidate("kmeans", 3, s=0.5, ch=100.0, db=0.9),
    ]
    rank_candidates(candidates)

    assert choose_candidate(candidates) is candidates[2]


def test_choice_skips_degenerate_candidates() -> None:
    best = _candidate("gmm", 4, s=0.9, ch=900.0, db=0.1)
    best.status = DEGENERATE
    other = _candidate("kmeans", 3, s=0.5, ch=100.0, db=0.9)
    candidates = [best, other]
    rank_candidates(candidates)

    assert best.mean_rank is None
    assert choose_candidate(candidates) is other


def test_choice_without_ranked_candidates() -> None:
    assert choose_candidate([Candidate(method="kmeans", k=2)]) is None


def test_sweep_finds_separated_blobs() -> None:
    result = run_sweep(blob_matrix(centers=3), FAST_CONFIG)

    assert result.chosen.k == 3
    assert result.chosen.status == SCORED
    assert len(result.candidates) == 3 * 4
    assert result.samples.ward is None
    assert result.samples.silhouette is None


def test_sweep_is_deterministic() -> None:
    values = blob_matrix(rows=150, centers=4, seed=11)

    first = run_sweep(values, FAST_CONFIG)
    second = run_sweep(values, FAST_CONFIG)

    assert (first.chosen.method, first.chosen.k) == (
        second.chosen.method,
        second.chosen.k,
    )
    for a, b in zip(first.candidates, second.candidates, strict=True):
        assert a.to_dict() | {"fit_seconds": None} == b.to_dict() | {
            "fit_seconds": None
        }
        assert np.array_equal(a.labels, b.labels)


def test_sweep_skips_k_above_rows() -> None:
    values = blob_matrix(rows=5, centers=2)

    result = run_sweep(values, FAST_CONFIG)

    skipped = {
        (c.method, c.k): c.reason for c in result.candidates if c.status == SKIPPED
    }
    assert set(skipped) == {(m, 5) for m in ("kmeans", "gmm", "ward")}
    assert skipped[("kmeans", 5)] == "k=5 needs at least 6 rows, the input has 5"
    assert result.chosen.k in (2, 3, 4)


def test_sweep_skips_k_above_distinct_rows() -> None:
    values = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 10, axis=0)

    result = run_sweep(values, FAST_CONFIG)

    scored = sorted({c.k for c in result.candidates if c.status == SCORED})
    skipped = [c for c in result.candidates if c.status == SKIPPED]
    assert scored == [2, 3]
    assert {c.k for c in skipped} == {4, 5}
    assert skipped[0].reason == "k=4 needs at least 4 distinct rows, the input has 3"
    assert result.chosen.k == 3


def test_sweep_rejects_too_few_rows() -> None:
    values = np.array([[0.0], [1.0]])

    with pytest.raises(InputDataError, match=r"no clustering with k=2\.\.5 could be"):
        run_sweep(values, FAST_CONFIG)


def test_sweep_rejects_single_distinct_point() -> None:
    values = np.zeros((20, 2))

    with pytest.raises(InputDataError, match="1 distinct values"):
        run_sweep(values, FAST_CONFIG)


def test_sweep_samples_large_inputs() -> None:
    config = replace(FAST_CONFIG, ward_max_rows=60, silhouette_max_rows=80)
    values = blob_matrix(rows=200, centers=3)

    result = run_sweep(values, config)

    ward = [c for c in result.candidates if c.method == "ward"]
    assert result.samples.ward is not None
    assert len(result.samples.ward) == 60
    assert result.samples.silhouette is not None
    assert len(result.samples.silhouette) == 80
    assert all(c.fit_rows == 60 for c in ward)
    assert all(c.labels is not None and len(c.labels) == 200 for c in ward)


def test_draw_samples_depend_on_seed() -> None:
    config = replace(FAST_CONFIG, ward_max_rows=50, silhouette_max_rows=50)

    first = draw_samples(500, config)
    again = draw_samples(500, config)
    other = draw_samples(500, replace(config, seed=1))

    assert np.array_equal(first.ward, again.ward)
    assert not np.array_equal(first.ward, other.ward)


def test_fit_ward_assigns_rest_to_nearest_centroid() -> None:
    values = np.array([[0.0], [0.2], [10.0], [10.2], [0.1], [9.9]])
    sample = np.array([0, 1, 2, 3])

    labels = fit_ward(values, 2, sample)

    assert labels[4] == labels[0]
    assert labels[5] == labels[2]
    assert labels[0] != labels[2]


def test_fit_and_score_marks_failed_fit() -> None:
    candidate = Candidate(method="kmeans", k=3)
    samples = draw_samples(len(VALUES), FAST_CONFIG)

    def one_cluster(values: np.ndarray, k: int) -> np.ndarray:
        return np.zeros(len(values), dtype=np.int64)

    _fit_and_score(candidate, one_cluster, VALUES, samples)

    assert candidate.status == FAILED
    assert candidate.reason is not None
    assert "Number of labels is 1" in candidate.reason
    assert candidate.mean_rank is None


def test_fit_and_score_marks_degenerate_fit() -> None:
    candidate = Candidate(method="gmm", k=3)
    samples = draw_samples(len(VALUES), FAST_CONFIG)

    def two_clusters(values: np.ndarray, k: int) -> np.ndarray:
        warnings.warn("did not converge", UserWarning, stacklevel=1)
        return (values[:, 0] > 2).astype(np.int64)

    _fit_and_score(candidate, two_clusters, VALUES, samples)

    assert candidate.status == DEGENERATE
    assert candidate.reason == "2 non-empty clusters came out of k=3"
    assert candidate.silhouette is not None
    assert candidate.warnings == ["did not converge"]
    assert not candidate.ranked
