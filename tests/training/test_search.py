"""Tests of the hyperparameter search: it is seeded and reads only validation data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from training import model as classifier
from training import prequential, search
from training.folds import TEST_FOLDS, FoldData

FIRST_TEST_CUTOFF = TEST_FOLDS[0].cutoff_ms


def _validation_folds(frames: tuple[pd.DataFrame, pd.DataFrame]) -> list[FoldData]:
    validation, _ = prequential.build_folds(*frames)
    return validation


def _corrupt_after_cutoff(
    frames: tuple[pd.DataFrame, pd.DataFrame],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flip every label known after the first test cut-off and scramble the
    features of every transaction after it."""
    features, labels = (frame.copy() for frame in frames)
    rng = np.random.default_rng(1)
    later = features["event_ms"] >= FIRST_TEST_CUTOFF
    features.loc[later, "TX_AMOUNT"] = rng.uniform(1, 3000, int(later.sum()))
    known_later = labels["label_ms"] >= FIRST_TEST_CUTOFF
    labels.loc[known_later, "fraud"] = 1 - labels.loc[known_later, "fraud"]
    return features, labels


def test_validation_folds_end_before_first_test_cutoff(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    for data in _validation_folds(prequential_frames):
        for rows in (data.train, data.test):
            assert (rows["event_ms"] < FIRST_TEST_CUTOFF).all()
            assert (rows["label_ms"] < FIRST_TEST_CUTOFF).all()


def test_search_ignores_test_fold_data(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    clean = search.search(_validation_folds(prequential_frames), trials=3, seed=4)
    corrupted = search.search(
        _validation_folds(_corrupt_after_cutoff(prequential_frames)), trials=3, seed=4
    )

    assert corrupted.trials == clean.trials
    assert corrupted.config == clean.config


def test_search_fits_only_validation_rows(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features, _ = prequential_frames
    later_ids = set(
        features.loc[features["event_ms"] >= FIRST_TEST_CUTOFF, "transaction_id"]
    )
    seen: list[set[str]] = []
    original = search.score_fold

    def recording(config: classifier.ModelConfig, data: FoldData) -> search.FoldScore:
        seen.append(
            set(data.train["transaction_id"]) | set(data.test["transaction_id"])
        )
        return original(config, data)

    monkeypatch.setattr(search, "score_fold", recording)
    search.search(_validation_folds(prequential_frames), trials=2, seed=0)

    assert len(seen) == 2 * 4
    for ids in seen:
        assert ids
        assert ids.isdisjoint(later_ids)


def test_search_is_reproducible(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    folds = _validation_folds(prequential_frames)

    first = search.search(folds, trials=3, seed=2)
    second = search.search(folds, trials=3, seed=2)

    assert first.trials == second.trials


def test_search_starts_from_defaults(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    base = classifier.ModelConfig()

    result = search.search(_validation_folds(prequential_frames), trials=2, seed=0)

    first = result.trials[0]
    assert first["params"] == {
        name: getattr(base, name) for name in search.SEARCH_SPACE
    }
    assert result.best_value == max(trial["value"] for trial in result.trials)
    assert result.best_value >= first["value"]
    assert set(result.best_folds) == {f"validation-{i}" for i in range(1, 5)}


def test_search_keeps_constraints(
    prequential_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    base = replace(classifier.ModelConfig(), seed=3)

    result = search.search(
        _validation_folds(prequential_frames), trials=2, seed=0, base=base
    )

    assert result.config.constraints == classifier.MONOTONE_CONSTRAINTS
    assert result.config.seed == 3


def test_search_rejects_zero_trials() -> None:
    with pytest.raises(ValueError, match="at least one trial, got 0"):
        search.search([], trials=0)
