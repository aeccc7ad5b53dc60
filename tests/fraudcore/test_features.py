"""Feature definitions on hand-made histories."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from fraudcore.features import (
    BASELINE_FEATURES,
    DEVICE_FEATURES,
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    NO_PREVIOUS_TX_SECONDS,
    VELOCITY_FEATURES,
    CustomerEvent,
    DeviceEvent,
    TerminalLabel,
    calendar_features,
    counts_event,
    customer_features,
    device_features,
    terminal_features,
    transaction_features,
    velocity_features,
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
        CustomerEvent(T - MS_PER_DAY, "a", 10.0, "t1"),  # 1 day back: outside
        CustomerEvent(T - MS_PER_DAY + 1, "b", 20.0, "t2"),  # just inside
        CustomerEvent(T - 30 * MS_PER_DAY, "c", 40.0, "t3"),  # outside 30 days
    ]
    result = customer_features(T, "x", 30.0, history)
    assert result["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2.0
    assert result["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 25.0
    assert result["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 3.0
    assert result["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 20.0


def test_customer_features_skip_current_and_later():
    history = [
        CustomerEvent(T, "x", 30.0, "t1"),  # the current transaction, stored
        CustomerEvent(T + 1, "later", 99.0, "t2"),
        CustomerEvent(T, "y", 50.0, "t3"),  # same millisecond: a peer
        CustomerEvent(T, "w", 70.0, "t4"),  # same millisecond: a peer
    ]
    result = customer_features(T, "x", 30.0, history)
    assert result["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3.0
    assert result["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 50.0


def test_counts_event_peers_but_not_itself():
    assert counts_event(T, "10", (T, "9"))
    assert counts_event(T, "9", (T, "10"))
    assert counts_event(T, "9", (T - 1, "9"))
    assert not counts_event(T, "9", (T, "9"))
    assert not counts_event(T, "9", (T + 1, "8"))


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
    result = transaction_features(
        T, "x", 12.0, [], [], customer_id="c", terminal_id="t"
    )
    assert tuple(result) == MODEL_INPUTS
    assert MODEL_INPUTS[1 : 1 + len(BASELINE_FEATURES)] == BASELINE_FEATURES
    assert MODEL_INPUTS[-5:] == VELOCITY_FEATURES + DEVICE_FEATURES
    assert result["TX_AMOUNT"] == 12.0
    assert result["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 1.0
    assert result["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_TX_SECONDS
    assert result["CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO"] == 1.0
    assert result["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"] == 1.0
    assert result["DEVICE_ID_NB_TX_1DAY_WINDOW"] == NO_DEVICE_COUNT


def test_transaction_features_with_device():
    devices = [DeviceEvent(T - 1, "earlier", "other-customer")]
    result = transaction_features(
        T,
        "x",
        12.0,
        [],
        [],
        customer_id="c",
        terminal_id="t",
        device_id="d",
        device_history=devices,
    )
    assert result["DEVICE_ID_NB_TX_1DAY_WINDOW"] == 2.0
    assert result["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"] == 2.0


def test_customer_features_mean_independent_of_order():
    amounts = [0.1, 0.2, 0.3, 0.7, 1.1]
    events = [CustomerEvent(T - i - 1, f"e{i}", a, "t") for i, a in enumerate(amounts)]
    forward = customer_features(T, "x", 0.5, events)
    backward = customer_features(T, "x", 0.5, list(reversed(events)))
    assert forward == backward


def test_velocity_features_peer_is_previous():
    history = [
        CustomerEvent(T - 90_000, "old", 10.0, "t1"),
        CustomerEvent(T, "9", 20.0, "t2"),  # same ms as "10" and "11": peers
        CustomerEvent(T, "11", 30.0, "t3"),
        CustomerEvent(T + 5, "later", 40.0, "t4"),
    ]
    stored = velocity_features(T, "9", 20.0, "t2", history)
    new = velocity_features(T, "10", 50.0, "t2", history)
    alone = velocity_features(T, "9", 20.0, "t2", history[:2])
    assert stored["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 0.0
    assert new["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 0.0
    assert new["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"] == 3.0
    assert alone["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 90.0


def test_velocity_features_previous_window_edge():
    at_edge = [CustomerEvent(T - 30 * MS_PER_DAY, "edge", 10.0, "t")]
    inside = [CustomerEvent(T - 30 * MS_PER_DAY + 1, "inside", 10.0, "t")]
    none = velocity_features(T, "x", 10.0, "t", at_edge)
    found = velocity_features(T, "x", 10.0, "t", inside)
    assert none["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_TX_SECONDS
    assert found["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_TX_SECONDS - 0.001


def test_velocity_features_ratio_uses_30day_mean():
    history = [
        CustomerEvent(T - 2 * MS_PER_DAY, "a", 10.0, "t1"),
        CustomerEvent(T - 40 * MS_PER_DAY, "old", 1000.0, "t1"),
    ]
    velocity = velocity_features(T, "x", 50.0, "t2", history)
    customer = customer_features(T, "x", 50.0, history)
    mean = customer["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"]
    assert mean == 30.0
    assert velocity["CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO"] == 50.0 / mean
    # Terminal t1 was used two days ago, outside the 1-day window.
    assert velocity["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"] == 1.0


def test_velocity_features_zero_amounts_ratio_one():
    history = [CustomerEvent(T - 1, "a", 0.0, "t")]
    result = velocity_features(T, "x", 0.0, "t", history)
    assert result["CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO"] == 1.0


def test_velocity_features_terminals_window_bounds():
    history = [
        CustomerEvent(T - MS_PER_DAY, "a", 1.0, "t1"),  # 1 day back: outside
        CustomerEvent(T - MS_PER_DAY + 1, "b", 1.0, "t2"),
        CustomerEvent(T - 5, "c", 1.0, "t2"),
        CustomerEvent(T - 4, "d", 1.0, "t3"),
    ]
    result = velocity_features(T, "x", 1.0, "t3", history)
    assert result["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"] == 2.0


def test_device_features_absent_device():
    history = [DeviceEvent(T - 1, "a", "c1")]
    result = device_features(T, "x", "c2", None, history)
    assert result == dict.fromkeys(DEVICE_FEATURES, NO_DEVICE_COUNT)


def test_device_features_window_bounds_and_ties():
    history = [
        DeviceEvent(T - 7 * MS_PER_DAY, "week-edge", "c1"),  # outside both
        DeviceEvent(T - 7 * MS_PER_DAY + 1, "week-in", "c2"),
        DeviceEvent(T - MS_PER_DAY, "day-edge", "c3"),  # outside the 1-day window
        DeviceEvent(T - MS_PER_DAY + 1, "day-in", "c2"),
        DeviceEvent(T, "10", "c4"),  # same ms: a peer
        DeviceEvent(T, "9", "c5"),  # the current transaction, stored already
        DeviceEvent(T + 1, "later", "c6"),
    ]
    result = device_features(T, "9", "c5", "d", history)
    assert result["DEVICE_ID_NB_TX_1DAY_WINDOW"] == 3.0
    assert result["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"] == 4.0
