"""Tests of the preprocessing steps: drop, impute, drop constants, scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import RobustScaler

from training.errors import InputDataError
from training.segmentation.preprocess import preprocess


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "amount": [1.0, 2.0, np.nan, 4.0, 10.0],
            "count": [5, 3, 8, 1, 2],
            "name": ["p", "q", "r", "s", "t"],
            "when": pd.to_datetime(["2018-01-01"] * 5),
            "empty": [np.nan] * 5,
            "flat": [7.0] * 5,
            "flag": [True, False, True, False, False],
        }
    )


def test_preprocess_drops_non_numeric_columns() -> None:
    report = preprocess(_table(), id_column="id").report

    assert report.dropped_non_numeric == {"name": "object", "when": "datetime64[ns]"}
    assert "id" not in report.features


def test_preprocess_drops_all_missing_columns() -> None:
    report = preprocess(_table(), id_column="id").report

    assert report.dropped_all_missing == ["empty"]


def test_preprocess_imputes_median() -> None:
    prepared = preprocess(_table(), id_column="id")

    assert prepared.report.imputed == {"amount": {"missing": 1, "median": 3.0}}
    assert prepared.imputed["amount"].tolist() == [1.0, 2.0, 3.0, 4.0, 10.0]


def test_preprocess_imputes_infinite_values() -> None:
    table = pd.DataFrame({"x": [1.0, np.inf, 3.0, -np.inf, 5.0], "y": range(5)})

    prepared = preprocess(table)

    assert prepared.report.imputed == {"x": {"missing": 2, "median": 3.0}}
    assert np.isfinite(prepared.scaled).all()


def test_preprocess_drops_constant_columns() -> None:
    report = preprocess(_table(), id_column="id").report

    assert report.dropped_constant == {"flat": 7.0}
    assert report.features == ["amount", "count", "flag"]


def test_preprocess_reads_booleans_as_numbers() -> None:
    prepared = preprocess(_table(), id_column="id")

    assert prepared.imputed["flag"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_preprocess_matches_robust_scaler() -> None:
    table = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 10.0], "y": [5, 3, 8, 1, 2]})

    prepared = preprocess(table)

    expected = RobustScaler().fit_transform(table.to_numpy(dtype=float))
    np.testing.assert_allclose(prepared.scaled, expected)
    assert prepared.report.scaled_by_std == []


def test_preprocess_scales_zero_iqr_by_std() -> None:
    table = pd.DataFrame({"rare": [0.0] * 9 + [5.0], "x": np.arange(10.0)})

    prepared = preprocess(table)

    assert prepared.report.scaled_by_std == ["rare"]
    assert prepared.report.scale["rare"] == pytest.approx(np.std([0.0] * 9 + [5.0]))
    assert prepared.scaled[-1, 0] == pytest.approx(5.0 / 1.5)


def test_preprocess_rejects_all_constant_columns() -> None:
    table = pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [2, 2, 2], "c": ["x", "y", "z"]})

    with pytest.raises(InputDataError, match="no numeric column that varies"):
        preprocess(table)


def test_preprocess_rejects_empty_table() -> None:
    with pytest.raises(InputDataError, match="has 0 rows"):
        preprocess(pd.DataFrame({"a": []}))


def test_preprocess_rejects_missing_id_column() -> None:
    with pytest.raises(InputDataError, match="id column 'customer_id' is not"):
        preprocess(pd.DataFrame({"a": [1.0, 2.0]}), id_column="customer_id")


def test_preprocess_report_is_complete() -> None:
    report = preprocess(_table(), id_column="id").report.to_dict()

    assert report["input_rows"] == 5
    assert report["input_columns"] == list(_table().columns)
    assert report["id_column"] == "id"
    assert set(report["center_median"]) == {"amount", "count", "flag"}
