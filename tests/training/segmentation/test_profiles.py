"""Tests of the customer profiles built from offline-store rows."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from fraudcore.timeutil import MS_PER_DAY
from tests.training.factories import epoch_ms, store_frames
from training.errors import InputDataError
from training.reference import write_offline_store
from training.segmentation.profiles import (
    PROFILE_COLUMNS,
    build_customer_profiles,
    load_customer_profiles,
)

DAY = date(2018, 7, 25)  # a Wednesday
HOUR_MS = MS_PER_DAY // 24


def _rows() -> list[dict[str, object]]:
    start = epoch_ms(DAY, hour=0)
    return [
        # Customer 10: three transactions over two days, two terminals.
        _row("1", "10", "t1", start + 3 * HOUR_MS, 10.0, night=1.0),
        _row("2", "10", "t2", start + 15 * HOUR_MS, 20.0),
        _row("3", "10", "t1", start + MS_PER_DAY + 3 * HOUR_MS, 60.0, night=1.0),
        # Customer 9: one transaction on the third day, a Friday.
        _row("4", "9", "t3", start + 2 * MS_PER_DAY + 12 * HOUR_MS, 5.0),
    ]


def _row(
    transaction_id: str,
    customer_id: str,
    terminal_id: str,
    event_ms: int,
    amount: float,
    night: float = 0.0,
    weekend: float = 0.0,
) -> dict[str, object]:
    return {
        "transaction_id": transaction_id,
        "customer_id": customer_id,
        "terminal_id": terminal_id,
        "event_ms": event_ms,
        "fraud": 0,
        "TX_AMOUNT": amount,
        "TX_DURING_NIGHT": night,
        "TX_DURING_WEEKEND": weekend,
    }


def _features() -> pd.DataFrame:
    features, _ = store_frames(_rows())
    return features


def test_profiles_columns_and_order() -> None:
    profiles = build_customer_profiles(_features())

    assert list(profiles.columns) == ["customer_id", *PROFILE_COLUMNS]
    # Decimal ids sort as numbers: 9 before 10.
    assert profiles["customer_id"].tolist() == ["9", "10"]


def test_profiles_values_of_one_customer() -> None:
    profile = build_customer_profiles(_features()).set_index("customer_id").loc["10"]

    # The rows cover 3 UTC days.
    assert profile["transactions_per_day"] == pytest.approx(3 / 3)
    assert profile["active_day_share"] == pytest.approx(2 / 3)
    assert profile["amount_mean"] == pytest.approx(30.0)
    assert profile["amount_std"] == pytest.approx(pd.Series([10, 20, 60]).std())
    assert profile["amount_median"] == 20.0
    assert profile["amount_max"] == 60.0
    assert profile["night_share"] == pytest.approx(2 / 3)
    assert profile["weekend_share"] == 0.0
    assert profile["distinct_terminals"] == 2.0
    # Gaps of 12 h and 12 h.
    assert profile["mean_hours_between_transactions"] == pytest.approx(12.0)


def test_profiles_single_transaction_has_missing_spread() -> None:
    profile = build_customer_profiles(_features()).set_index("customer_id").loc["9"]

    assert pd.isna(profile["amount_std"])
    assert pd.isna(profile["mean_hours_between_transactions"])
    assert profile["transactions_per_day"] == pytest.approx(1 / 3)


def test_profiles_reject_no_rows() -> None:
    with pytest.raises(InputDataError, match="no feature rows"):
        build_customer_profiles(_features().iloc[:0])


def test_load_profiles_stops_at_end_day(tmp_path: Path) -> None:
    write_offline_store(*store_frames(_rows()), tmp_path)

    profiles = load_customer_profiles(tmp_path, end=date(2018, 7, 27))

    assert profiles["customer_id"].tolist() == ["10"]
    # Two days are covered before the end day.
    assert profiles["transactions_per_day"].iloc[0] == pytest.approx(3 / 2)


def test_load_profiles_starts_at_start_day(tmp_path: Path) -> None:
    write_offline_store(*store_frames(_rows()), tmp_path)

    profiles = load_customer_profiles(tmp_path, start=date(2018, 7, 26))

    assert profiles["customer_id"].tolist() == ["9", "10"]
    assert profiles.set_index("customer_id").loc["10", "amount_mean"] == 60.0
