"""Tests of the training data contract: clean sets pass, corrupted ones report."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from tests.training.factories import prequential_rows, store_frames
from training.contract import (
    AMOUNT,
    COUNT,
    FLAG,
    RISK,
    ContractLimits,
    check_training_set,
    feature_rule,
    validate_training_set,
)
from training.errors import DataContractError
from training.evaluation import SplitWindow
from training.folds import Fold, build_fold

WINDOW = SplitWindow(date(2018, 7, 25))
DAYS = WINDOW.train_dates()


@pytest.fixture(scope="module")
def training_set() -> pd.DataFrame:
    """A clean training week of 120 transactions a day."""
    features, labels = store_frames(prequential_rows(date(2018, 7, 25), 21))
    return build_fold(features, labels, Fold("fold", WINDOW)).train


def test_contract_passes_clean_set(training_set: pd.DataFrame) -> None:
    result = validate_training_set(training_set, "clean", DAYS)

    assert result.success, result.failures
    assert result.rows == len(training_set)
    assert result.evaluated > 0


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("TERMINAL_ID_RISK_30DAY_WINDOW", RISK),
        ("CUSTOMER_ID_NB_TX_7DAY_WINDOW", COUNT),
        ("CUSTOMER_ID_SECONDS_SINCE_PREV_TX", COUNT),
        ("CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW", COUNT),
        ("CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO", COUNT),
        ("DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW", COUNT),
        ("TX_AMOUNT", AMOUNT),
        ("CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW", AMOUNT),
        ("TX_DURING_WEEKEND", FLAG),
        ("SOMETHING_NEW", None),
    ],
)
def test_feature_rule_by_name(name: str, kind: str | None) -> None:
    assert feature_rule(name) == kind


def test_contract_reports_each_failure(training_set: pd.DataFrame) -> None:
    corrupted = training_set.copy()
    corrupted.loc[corrupted.index[:3], "TERMINAL_ID_RISK_7DAY_WINDOW"] = 1.5
    corrupted.loc[corrupted.index[:2], "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] = -1.0
    corrupted.loc[corrupted.index[5], "TX_AMOUNT"] = np.inf
    corrupted.loc[corrupted.index[6], "TX_DURING_NIGHT"] = 2.0
    corrupted.loc[corrupted.index[7], "TERMINAL_ID_NB_TX_7DAY_WINDOW"] = np.nan
    corrupted["fraud"] = 0

    with pytest.raises(DataContractError, match="training set broken") as raised:
        check_training_set(corrupted, "broken", DAYS)

    report = raised.value.report
    lines = report.splitlines()
    assert "failed 6 of" in lines[0]
    risk = [line for line in lines if "'TERMINAL_ID_RISK_7DAY_WINDOW'" in line]
    assert len(risk) == 1
    assert "expect_column_values_to_be_between" in risk[0]
    assert "3 of" in risk[0]
    assert "1.5" in risk[0]
    assert any("'CUSTOMER_ID_NB_TX_1DAY_WINDOW'" in line for line in lines)
    amount = [line for line in lines if "'TX_AMOUNT'" in line]
    assert len(amount) == 1
    assert "max float" in amount[0]
    assert "[inf]" in amount[0]
    assert any("'TX_DURING_NIGHT'" in line for line in lines)
    assert any(
        "expect_column_values_to_not_be_null" in line
        and "'TERMINAL_ID_NB_TX_7DAY_WINDOW'" in line
        for line in lines
    )
    assert any(
        "expect_column_mean_to_be_between" in line and "observed 0.0" in line
        for line in lines
    )


def test_contract_reports_missing_day(training_set: pd.DataFrame) -> None:
    days = pd.to_datetime(training_set["event_ms"], unit="ms", utc=True).dt.date
    gappy = training_set[days != date(2018, 7, 28)]

    with pytest.raises(DataContractError) as raised:
        check_training_set(gappy, "gappy", DAYS)

    assert "on 2018-07-28" in raised.value.report
    assert "of the days" in raised.value.report


def test_contract_reports_wrong_type(training_set: pd.DataFrame) -> None:
    wrong = training_set.assign(TX_AMOUNT=training_set["TX_AMOUNT"].astype("float32"))

    result = validate_training_set(wrong, "typed", DAYS)

    assert len(result.failures) == 1
    assert (
        "expect_column_values_to_be_of_type on column 'TX_AMOUNT'"
        in (result.failures[0])
    )
    assert "float32" in result.failures[0]


def test_contract_allows_few_zero_amounts(training_set: pd.DataFrame) -> None:
    # The dataset has 42 amounts of 0.00 in 1.75 M transactions.
    limits = ContractLimits(positive_amount_share=0.995)
    few = training_set.copy()
    few.loc[few.index[:4], "TX_AMOUNT"] = 0.0
    many = training_set.copy()
    many.loc[many.index[:5], "TX_AMOUNT"] = 0.0

    assert validate_training_set(few, "few", DAYS, limits).success
    (failure,) = validate_training_set(many, "many", DAYS, limits).failures
    assert "'TX_AMOUNT'" in failure
    assert "5 of 840" in failure
