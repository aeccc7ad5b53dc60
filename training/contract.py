"""Data contract of a training set, checked with Great Expectations before fitting.

The suite is built from ``MODEL_INPUTS``, so a new feature is checked as soon as
it is a model input. Each input gets a type and a null check, plus the range of
the first rule of ``FEATURE_RULES`` whose pattern matches its name:

* counts, durations and ratios (``_NB_``, ``SECONDS_SINCE``, ``_RATIO``) are
  non-negative;
* risks (``_RISK_``) lie in [0, 1];
* amounts (``AMOUNT``) are finite, and greater than 0 in at least
  ``positive_amount_share`` of the rows, because the dataset has 42
  transactions of amount 0.00 among its 1,754,155;
* flags (``TX_DURING_``) are 0 or 1.

An input that matches no rule is only checked to be finite, and a logged
warning names it so that a rule can be added. The label must be 0 or 1 with a
fraud rate within the limits, the ids must be text, and every day of the
training period must have a number of rows within the limits. The checks run in
an ephemeral context on a pandas data source, so no Great Expectations project
folder is created.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from datetime import date
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.core.expect_column_mean_to_be_between import (
    ExpectColumnMeanToBeBetween,
)
from great_expectations.expectations.core.expect_column_to_exist import (
    ExpectColumnToExist,
)
from great_expectations.expectations.core.expect_column_values_to_be_between import (
    ExpectColumnValuesToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_in_set import (
    ExpectColumnValuesToBeInSet,
)
from great_expectations.expectations.core.expect_column_values_to_be_of_type import (
    ExpectColumnValuesToBeOfType,
)
from great_expectations.expectations.core.expect_column_values_to_not_be_null import (
    ExpectColumnValuesToNotBeNull,
)
from great_expectations.expectations.expectation import Expectation

from fraudcore.features import MODEL_INPUTS
from training.dataset import ID_COLUMNS
from training.errors import DataContractError
from training.evaluation import LABEL_COLUMN, TIME_COLUMN, utc_day_numbers

log = logging.getLogger(__name__)

_LARGEST_FLOAT = sys.float_info.max

COUNT = "count"
RISK = "risk"
AMOUNT = "amount"
FLAG = "flag"

# First match wins; patterns are searched in the feature name.
FEATURE_RULES: tuple[tuple[str, str], ...] = (
    (r"_RISK_", RISK),
    (r"_NB_|SECONDS_SINCE|_RATIO$", COUNT),
    (r"AMOUNT", AMOUNT),
    (r"^TX_DURING_", FLAG),
)


@dataclass(frozen=True)
class ContractLimits:
    """Bounds of the contract that are not fixed by a feature's meaning.

    The defaults leave room around the dataset: 0.837% fraud over all days, and
    9,417..9,789 transactions a day from 2018-06-18 to 2018-08-14.
    """

    min_fraud_rate: float = 0.001
    max_fraud_rate: float = 0.05
    min_rows_per_day: int = 100
    # Each day's row count must lie within [median / ratio, median * ratio].
    max_day_ratio: float = 2.0
    max_null_rate: float = 0.0
    positive_amount_share: float = 0.999


@dataclass(frozen=True)
class ContractResult:
    """Outcome of one validation: the expectations run and the failures."""

    name: str
    rows: int
    evaluated: int
    failures: tuple[str, ...]

    @property
    def success(self) -> bool:
        """Whether every expectation passed."""
        return not self.failures


def feature_rule(name: str) -> str | None:
    """Return the kind of range a model input is checked against, or None."""
    for pattern, kind in FEATURE_RULES:
        if re.search(pattern, name):
            return kind
    return None


def row_expectations(limits: ContractLimits) -> list[Expectation]:
    """Build the expectations on the rows of a training set."""
    required = (*ID_COLUMNS, TIME_COLUMN, LABEL_COLUMN, *MODEL_INPUTS)
    expectations: list[Expectation] = [
        ExpectColumnToExist(column=name) for name in required
    ]
    mostly = 1.0 - limits.max_null_rate
    for name in ID_COLUMNS:
        expectations.append(ExpectColumnValuesToBeOfType(column=name, type_="str"))
    for name in (TIME_COLUMN, LABEL_COLUMN):
        expectations.append(ExpectColumnValuesToBeOfType(column=name, type_="int64"))
    expectations += [
        ExpectColumnValuesToBeInSet(column=LABEL_COLUMN, value_set=[0, 1]),
        ExpectColumnMeanToBeBetween(
            column=LABEL_COLUMN,
            min_value=limits.min_fraud_rate,
            max_value=limits.max_fraud_rate,
        ),
    ]
    for name in MODEL_INPUTS:
        expectations += [
            ExpectColumnValuesToBeOfType(column=name, type_="float64"),
            ExpectColumnValuesToNotBeNull(column=name, mostly=mostly),
        ]
        expectations += _range_expectations(name, limits)
    return expectations


def _range_expectations(name: str, limits: ContractLimits) -> list[Expectation]:
    between = ExpectColumnValuesToBeBetween
    kind = feature_rule(name)
    if kind == RISK:
        return [between(column=name, min_value=0.0, max_value=1.0)]
    if kind == COUNT:
        return [between(column=name, min_value=0.0, max_value=_LARGEST_FLOAT)]
    if kind == FLAG:
        in_set = ExpectColumnValuesToBeInSet
        return [in_set(column=name, value_set=[0.0, 1.0])]
    finite = between(column=name, min_value=-_LARGEST_FLOAT, max_value=_LARGEST_FLOAT)
    if kind == AMOUNT:
        positive = between(
            column=name,
            min_value=0.0,
            strict_min=True,
            mostly=limits.positive_amount_share,
        )
        return [finite, positive]
    log.warning(
        "model input %s matches no rule of training.contract.FEATURE_RULES; "
        "only its type, nulls and finiteness are checked",
        name,
    )
    return [finite]


def daily_counts(frame: pd.DataFrame, days: list[date]) -> pd.DataFrame:
    """Count the rows of each day of ``days``; days without rows count 0."""
    numbers = utc_day_numbers(frame[TIME_COLUMN]).value_counts()
    epoch = date(1970, 1, 1)
    return pd.DataFrame(
        {
            "day": [str(day) for day in days],
            "rows": [int(numbers.get((day - epoch).days, 0)) for day in days],
        }
    )


def daily_expectations(
    counts: pd.DataFrame, limits: ContractLimits
) -> list[Expectation]:
    """Build the expectations on the per-day row counts of a training set."""
    median = float(counts["rows"].median())
    low = max(float(limits.min_rows_per_day), median / limits.max_day_ratio)
    return [
        ExpectColumnValuesToBeBetween(
            column="rows", min_value=low, max_value=median * limits.max_day_ratio
        ),
    ]


def validate_training_set(
    frame: pd.DataFrame,
    name: str,
    days: list[date],
    limits: ContractLimits = ContractLimits(),
) -> ContractResult:
    """Validate a training set's rows and its rows per day.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
        Training rows with the ids, ``event_ms``, ``fraud`` and the model inputs.
    name : str
        Name of the training set in the failure report, such as a fold's name.
    days : list of datetime.date
        Days of the training period; each must have rows within the limits.
    limits : ContractLimits

    Returns
    -------
    ContractResult
    """
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("training")
    failures: list[str] = []
    evaluated = 0
    counts = daily_counts(frame, days)
    batches = (
        ("rows", frame, row_expectations(limits)),
        ("days", counts, daily_expectations(counts, limits)),
    )
    for batch_name, data, expectations in batches:
        suite = gx.ExpectationSuite(name=f"{name}-{batch_name}")
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = (
            source.add_dataframe_asset(batch_name)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": data})
        )
        outcome = batch.validate(suite, result_format="SUMMARY")
        evaluated += len(outcome.results)
        failures += [
            describe_failure(result.to_json_dict(), batch_name, data)
            for result in outcome.results
            if not result.success
        ]
    return ContractResult(name, len(frame), evaluated, tuple(failures))


def describe_failure(result: dict[str, Any], batch: str, data: pd.DataFrame) -> str:
    """Describe one failed expectation in a line: what was expected and observed."""
    config = result["expectation_config"]
    arguments = {
        key: value
        for key, value in config["kwargs"].items()
        if key not in ("batch_id", "column")
    }
    column = config["kwargs"].get("column")
    subject = f"column {column!r}" if column else "the table"
    details = result.get("result") or {}

    expected = ", ".join(
        f"{key}={_readable(value)}" for key, value in arguments.items()
    )
    line = f"{config['type']} on {subject} of the {batch}"
    if expected:
        line += f" ({expected})"

    if "unexpected_count" in details:
        examples = details.get("partial_unexpected_list") or []
        line += (
            f": {details['unexpected_count']:,} of {details['element_count']:,} "
            f"values unexpected ({details['unexpected_percent']:.3g}%), "
            f"for example {examples[:5]}"
        )
        if batch == "days":
            bad = data.loc[details.get("partial_unexpected_index_list") or [], "day"]
            line += f" on {', '.join(bad.tolist())}"
    elif "observed_value" in details:
        line += f": observed {_readable(details['observed_value'])}"

    exception = (result.get("exception_info") or {}).get("exception_message")
    if exception:
        line += f": {exception}"
    return line


def _readable(value: Any) -> str:
    if isinstance(value, float) and abs(value) == _LARGEST_FLOAT:
        return "-max float" if value < 0 else "max float"
    if hasattr(value, "item"):
        value = value.item()
    return repr(value)


def check_training_set(
    frame: pd.DataFrame,
    name: str,
    days: list[date],
    limits: ContractLimits = ContractLimits(),
) -> ContractResult:
    """Validate a training set and raise when any expectation failed.

    Raises
    ------
    DataContractError
        With one line per failed expectation.
    """
    result = validate_training_set(frame, name, days, limits)
    if not result.success:
        report = "\n".join(
            [
                f"training set {name} ({result.rows:,} rows) failed "
                f"{len(result.failures)} of {result.evaluated} expectations:",
                *(f"  - {line}" for line in result.failures),
            ]
        )
        raise DataContractError(report)
    log.info(
        "training set %s passed %d expectations on %d rows",
        name,
        result.evaluated,
        result.rows,
    )
    return result
