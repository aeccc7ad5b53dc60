"""Feature definitions on hand-made histories."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from fraudcore.features import (
    MODEL_INPUTS,
    CustomerEvent,
    TerminalLabel,
    calendar_features,
    customer_features,
    order_key,
    terminal_features,
    transaction_features,
)
from fraudcore.timeutil import MS_PER_DAY, parse_timestamp_ms

T = parse_timestamp_ms("2018-08-08T12:00:00Z")  # a Wednesday


def test_calendar_features_follow_zone():
    late_friday_utc = parse_timestamp_ms("2018-07-27T23:30:00Z")
    assert calendar_features(late_friday_utc) == {
        "TX_DURING_WEEKEND": 0.0,
        "TX_DURING_NIGHT": 0.0,
    }
    brussels = calendar_features(late_friday_utc, ZoneInfo("Europe/Brussels"))
    assert brussels == {"TX_DURING_WEEKEND": 1.0, "TX_DURING_NIGHT": 1.0}


def test_calendar_features_night_ends_after_hour_six():
    assert (
        calendar_features(parse_timestamp_ms("2018-08-08T06:59:59Z"))["TX_DURING_NIGHT"]
        == 1.0
    )
    assert (
        calendar_features(parse_timestamp_ms("2018-08-08T07:00:00Z"))["TX_DURING_NIGHT"]
        == 0.0
    )


def test_customer_features_window_bounds():
    history = [
        CustomerEvent(T - MS_PER_DAY, "a", 10.0),  # exactly 1 day back: outside
        CustomerEvent(T - MS_PER_DAY + 1, "b", 20.0),  # just inside
        CustomerEvent(T - 30 * MS_PER_DAY, "c", 40.0),  # outside 30 days
    ]
    result = customer_features(T, "x", 30.0, history)
    assert result["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2.0
    assert result["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 25.0
    assert result["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 3.0
    assert result["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 20.0


def test_customer_features_skip_current_and_later():
    history = [
        CustomerEvent(T, "x", 30.0),  # the current transaction, stored already
        CustomerEvent(T + 1, "later", 99.0),
        CustomerEvent(T, "y", 50.0),  # same millisecond, ordered after "x"
        CustomerEvent(T, "w", 70.0),  # same millisecond, ordered before "x"
    ]
    result = customer_features(T, "x", 30.0, history)
    assert result["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2.0
    assert result["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 50.0


def test_order_key_sorts_decimal_ids_as_numbers():
    assert order_key(T, "9") < order_key(T, "10")
    assert order_key(T, "10") < order_key(T + 1, "9")


def test_terminal_features_window_bounds():
    labels = [
        TerminalLabel(T, "known-now", 1),  # known at t: counts
        TerminalLabel(T + 1, "known-later", 1),  # not known yet
        TerminalLabel(T - MS_PER_DAY, "a-day-ago", 0),  # outside the 1-day window
        TerminalLabel(T - MS_PER_DAY + 1, "inside", 0),
    ]
    result = terminal_features(T, labels)
    assert result["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2.0
    assert result["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.5
    assert result["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 3.0
    assert result["TERMINAL_ID_RISK_7DAY_WINDOW"] == pytest.approx(1 / 3)


def test_terminal_features_risk_zero_without_labels():
    result = terminal_features(T, [])
    assert result["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0.0
    assert result["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.0


def test_transaction_features_in_model_order():
    result = transaction_features(T, "x", 12.0, [], [])
    assert tuple(result) == MODEL_INPUTS
    assert result["TX_AMOUNT"] == 12.0
    assert result["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 1.0


def test_customer_features_mean_independent_of_order():
    amounts = [0.1, 0.2, 0.3, 0.7, 1.1]
    events = [CustomerEvent(T - i - 1, f"e{i}", a) for i, a in enumerate(amounts)]
    forward = customer_features(T, "x", 0.5, events)
    backward = customer_features(T, "x", 0.5, list(reversed(events)))
    assert forward == backward
