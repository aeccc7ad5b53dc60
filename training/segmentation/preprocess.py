"""Preprocessing of the feature table before clustering.

Steps, in order, each recorded in :class:`PreprocessReport`:

1. Drop non-numeric columns (booleans count as numeric, 0 and 1).
2. Drop columns without a single finite value.
3. Replace missing and infinite values by the column median.
4. Drop constant columns (zero variance), which cannot separate clusters.
5. Scale robustly: subtract the median and divide by the interquartile range,
   as ``sklearn.preprocessing.RobustScaler`` does. A column whose interquartile
   range is 0 while its values still vary (mostly one value, a few others) is
   divided by its standard deviation instead, because RobustScaler would leave
   it unscaled in its original units.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.errors import InputDataError

log = logging.getLogger(__name__)


@dataclass
class PreprocessReport:
    """Record of the columns preprocessing dropped, imputed and scaled."""

    input_rows: int = 0
    input_columns: list[str] = field(default_factory=list)
    id_column: str | None = None
    dropped_non_numeric: dict[str, str] = field(default_factory=dict)
    dropped_all_missing: list[str] = field(default_factory=list)
    imputed: dict[str, dict[str, float | int]] = field(default_factory=dict)
    dropped_constant: dict[str, float] = field(default_factory=dict)
    scaled_by_std: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    center: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values."""
        return {
            "input_rows": self.input_rows,
            "input_columns": self.input_columns,
            "id_column": self.id_column,
            "dropped_non_numeric": self.dropped_non_numeric,
            "dropped_all_missing": self.dropped_all_missing,
            "imputed_with_median": self.imputed,
            "dropped_constant": self.dropped_constant,
            "scaled_by_std_because_iqr_is_zero": self.scaled_by_std,
            "features": self.features,
            "center_median": self.center,
            "scale": self.scale,
        }


@dataclass(frozen=True)
class Preprocessed:
    """The clustering input and the same rows in original units.

    Attributes
    ----------
    scaled : numpy.ndarray of shape (n_rows, n_features)
        Imputed and robustly scaled values, the input of every clustering method.
    imputed : pandas.DataFrame of shape (n_rows, n_features)
        The same columns in original units after imputation.
    report : PreprocessReport
    """

    scaled: npt.NDArray[np.float64]
    imputed: pd.DataFrame
    report: PreprocessReport


def preprocess(frame: pd.DataFrame, id_column: str | None = None) -> Preprocessed:
    """Run every preprocessing step on a table of features.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
        The input table. Column names are converted to text.
    id_column : str or None
        Column that identifies a row; it is never a feature.

    Returns
    -------
    Preprocessed

    Raises
    ------
    InputDataError
        If the table has no rows, lacks ``id_column`` or has no numeric column
        that varies.
    """
    report = PreprocessReport(
        input_rows=len(frame),
        input_columns=[str(name) for name in frame.columns],
        id_column=id_column,
    )
    if frame.empty:
        raise InputDataError(
            f"input table has {len(frame)} rows and {frame.shape[1]} columns; "
            "expected at least one row of numeric features."
        )
    if id_column is not None and id_column not in frame.columns:
        raise InputDataError(
            f"id column {id_column!r} is not in the input; expected one of "
            f"{report.input_columns}."
        )
    features = frame.drop(columns=[id_column]) if id_column else frame
    features = features.rename(columns=str)
    numeric = _drop_non_numeric(features, report)
    numeric = _drop_all_missing(numeric, report)
    imputed = _impute_median(numeric, report)
    imputed = _drop_constant(imputed, report)
    if imputed.shape[1] == 0:
        raise InputDataError(
            f"input table has no numeric column that varies; expected at least one, "
            f"received columns {report.input_columns}."
        )
    report.features = list(imputed.columns)
    scaled = _robust_scale(imputed, report)
    _log_report(report)
    return Preprocessed(scaled=scaled, imputed=imputed, report=report)


def _drop_non_numeric(frame: pd.DataFrame, report: PreprocessReport) -> pd.DataFrame:
    numeric_columns: dict[str, pd.Series] = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            numeric_columns[name] = column.astype("float64")
        elif pd.api.types.is_numeric_dtype(column) and not (
            pd.api.types.is_complex_dtype(column)
        ):
            numeric_columns[name] = column.astype("float64")
        else:
            report.dropped_non_numeric[name] = str(column.dtype)
    return pd.DataFrame(numeric_columns, index=frame.index)


def _drop_all_missing(frame: pd.DataFrame, report: PreprocessReport) -> pd.DataFrame:
    finite = np.isfinite(frame.to_numpy())
    empty = [
        name
        for name, any_finite in zip(frame.columns, finite.any(axis=0), strict=True)
        if not any_finite
    ]
    report.dropped_all_missing = empty
    return frame.drop(columns=empty)


def _impute_median(frame: pd.DataFrame, report: PreprocessReport) -> pd.DataFrame:
    values = frame.to_numpy(copy=True)
    missing = ~np.isfinite(values)
    for position, name in enumerate(frame.columns):
        count = int(missing[:, position].sum())
        if count == 0:
            continue
        column = values[:, position]
        median = float(np.median(column[~missing[:, position]]))
        column[missing[:, position]] = median
        report.imputed[name] = {"missing": count, "median": median}
    return pd.DataFrame(values, columns=frame.columns, index=frame.index)


def _drop_constant(frame: pd.DataFrame, report: PreprocessReport) -> pd.DataFrame:
    values = frame.to_numpy()
    constant = np.ptp(values, axis=0) == 0 if len(values) else np.ones(0, bool)
    for name, is_constant in zip(frame.columns, constant, strict=True):
        if is_constant:
            report.dropped_constant[name] = float(frame[name].iloc[0])
    return frame.drop(columns=list(report.dropped_constant))


def _robust_scale(
    frame: pd.DataFrame, report: PreprocessReport
) -> npt.NDArray[np.float64]:
    values = frame.to_numpy(dtype=np.float64)
    center = np.median(values, axis=0)
    q25, q75 = np.percentile(values, [25, 75], axis=0)
    scale = q75 - q25
    zero_iqr = scale == 0
    scale[zero_iqr] = values[:, zero_iqr].std(axis=0)
    report.scaled_by_std = [
        name for name, z in zip(frame.columns, zero_iqr, strict=True) if z
    ]
    report.center = dict(zip(frame.columns, center.tolist(), strict=True))
    report.scale = dict(zip(frame.columns, scale.tolist(), strict=True))
    scaled: npt.NDArray[np.float64] = (values - center) / scale
    return scaled


def _log_report(report: PreprocessReport) -> None:
    log.info(
        "preprocessing kept %d of %d columns for %d rows",
        len(report.features),
        len(report.input_columns),
        report.input_rows,
    )
    if report.dropped_non_numeric:
        log.info("dropped non-numeric columns: %s", report.dropped_non_numeric)
    if report.dropped_all_missing:
        log.info("dropped columns without values: %s", report.dropped_all_missing)
    if report.imputed:
        log.info("imputed missing values with the median: %s", report.imputed)
    if report.dropped_constant:
        log.info("dropped constant columns: %s", report.dropped_constant)
