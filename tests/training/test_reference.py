"""Tests of the offline store built from the reference features file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fraudcore.features import MODEL_INPUTS
from fraudcore.timeutil import MS_PER_DAY
from training.dataset import FEATURE_COLUMNS, LABEL_COLUMNS, load_labelled_features
from training.reference import reference_to_store_frames


def _reference_rows() -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "TRANSACTION_ID": [7, 8],
            "TX_DATETIME": pd.to_datetime(
                ["2018-07-25 00:00:31", "2018-07-25 23:59:59"]
            ),
            "CUSTOMER_ID": [11, 12],
            "TERMINAL_ID": [21, 22],
            "TX_FRAUD": [0, 1],
            "TX_FRAUD_SCENARIO": [0, 1],
        }
    )
    for name in MODEL_INPUTS:
        rows[name] = 1
    return rows


def test_reference_to_store_frames_columns() -> None:
    features, labels = reference_to_store_frames(_reference_rows())

    assert list(features.columns) == list(FEATURE_COLUMNS)
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert "TX_FRAUD_SCENARIO" not in features.columns
    assert features["transaction_id"].tolist() == ["7", "8"]
    assert features["customer_id"].tolist() == ["11", "12"]
    assert all(features[name].dtype == "float64" for name in MODEL_INPUTS)


def test_reference_to_store_frames_utc_times() -> None:
    features, labels = reference_to_store_frames(_reference_rows())

    # 2018-07-25T00:00:31Z
    assert features["event_ms"].iloc[0] == 1_532_476_831_000
    assert (labels["transaction_ms"] == features["event_ms"]).all()
    assert (labels["label_ms"] - labels["transaction_ms"] == 7 * MS_PER_DAY).all()
    assert labels["fraud"].tolist() == [0, 1]


def test_reference_store_row_counts(reference_store: Path) -> None:
    joined = load_labelled_features(reference_store)

    # Counts of the reference file as its data notice states them.
    assert len(joined) == 201_295
    assert int(joined["fraud"].sum()) == 1_792
