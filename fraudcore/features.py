"""Feature definitions shared by the stream job, the training job and the scorer.

Every function here computes the features of one transaction at its own event
time ``t`` from the events of its keys, and ignores anything after ``t``. The
scorer calls them on the events of the online store. The stream job computes
the same features in Flink SQL generated from the constants below
(:mod:`streaming.feature_sql`), and the tests compare both with the pandas
reference of :mod:`streaming.batch_features`.

Semantics follow the fraud-detection handbook's baseline features:

* customer windows ``(t - n days, t]``, the current transaction included;
* terminal windows over transactions in ``(t - 7 - n days, t - 7 days]``, because
  labels become known 7 days after the transaction. A label event carries the
  time it became known, so the same set is the labels known in ``(t - n, t]``.

Velocity and device features extend the baseline with the same window rules:

* the seconds since the customer's previous transaction, looked for within the
  longest window ``(t - 30 days, t]``;
* the amount divided by the customer's 30-day mean amount;
* the number of distinct terminals of the customer in ``(t - 1 day, t]``;
* the device's transactions in ``(t - 1 day, t]`` and its distinct customers in
  ``(t - 7 days, t]``, for transactions that carry a ``device_id``.

Every count includes the current transaction. Transactions of one key in the same
millisecond are peers, as rows with equal times are in a SQL ``RANGE`` window:
each one's windows contain all of them, and the seconds since the previous
transaction are 0 when a peer exists (:func:`counts_event`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, tzinfo
from typing import Any, NamedTuple, TypeVar

from fraudcore.timeutil import MS_PER_DAY, utc_datetime

WINDOW_DAYS = (1, 7, 30)
LABEL_DELAY_DAYS = 7

# Hours 0..6 count as night, Saturday and Sunday as weekend, in the zone given to
# calendar_features (FRAUD_FEATURE_TIMEZONE, UTC by default, as in the dataset).
NIGHT_LAST_HOUR = 6

# How long a key's events stay in the online store after its newest event. It is
# the longest window plus the label delay, because labels run that far ahead of
# the transactions they label. A further week lets a transaction a week older
# than the newest event of its key still find its whole window.
STATE_RETENTION_DAYS = max(WINDOW_DAYS) + LABEL_DELAY_DAYS + 7
STATE_RETENTION_MS = STATE_RETENTION_DAYS * MS_PER_DAY

CALENDAR_FEATURES = ("TX_DURING_WEEKEND", "TX_DURING_NIGHT")
CUSTOMER_FEATURES = tuple(
    name
    for days in WINDOW_DAYS
    for name in (
        f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW",
        f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW",
    )
)
TERMINAL_FEATURES = tuple(
    name
    for days in WINDOW_DAYS
    for name in (
        f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW",
        f"TERMINAL_ID_RISK_{days}DAY_WINDOW",
    )
)
BASELINE_FEATURES = CALENDAR_FEATURES + CUSTOMER_FEATURES + TERMINAL_FEATURES

LONGEST_WINDOW_MS = max(WINDOW_DAYS) * MS_PER_DAY
# History that a transaction's customer, velocity and device features read.
MAX_LOOKBACK_DAYS = max(WINDOW_DAYS)
TERMINAL_COUNT_WINDOW_DAYS = 1
DEVICE_TX_WINDOW_DAYS = 1
DEVICE_CUSTOMER_WINDOW_DAYS = 7
DEVICE_LOOKBACK_DAYS = max(DEVICE_TX_WINDOW_DAYS, DEVICE_CUSTOMER_WINDOW_DAYS)
DEVICE_LOOKBACK_MS = DEVICE_LOOKBACK_DAYS * MS_PER_DAY

# Seconds since the previous transaction when the customer has none in the
# longest window: the window's length, so the value only grows with the gap.
NO_PREVIOUS_TX_SECONDS = LONGEST_WINDOW_MS / 1000
# Amount-to-mean ratio when the 30-day mean is 0. Amounts are >= 0 and the mean
# includes the current amount, so that happens only when the amount is 0 too.
ZERO_MEAN_AMOUNT_RATIO = 1.0
# Device features of a transaction without a device_id. Counts with a device
# include the transaction itself, so 0 can mean only "no device".
NO_DEVICE_COUNT = 0.0

VELOCITY_FEATURES = (
    "CUSTOMER_ID_SECONDS_SINCE_PREV_TX",
    "CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO",
    "CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW",
)
DEVICE_FEATURES = (
    "DEVICE_ID_NB_TX_1DAY_WINDOW",
    "DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW",
)

# Model input order: the ONNX graph takes one float row in exactly this order.
MODEL_INPUTS = ("TX_AMOUNT",) + BASELINE_FEATURES + VELOCITY_FEATURES + DEVICE_FEATURES


# Event shapes the functions accept: the named tuples below or plain tuples.
CustomerEventTuple = tuple[int, str, float, str]
TerminalLabelTuple = tuple[int, str, int]
DeviceEventTuple = tuple[int, str, str]
EventT = TypeVar("EventT", CustomerEventTuple, DeviceEventTuple)


class CustomerEvent(NamedTuple):
    """One past transaction of a customer, as kept in the online store.

    The functions below read events by position, so plain ``(event_ms,
    transaction_id, amount, terminal_id)`` tuples work too: the stream job keeps
    those in its state because they pickle several times faster than named tuples.
    """

    event_ms: int
    transaction_id: str
    amount: float
    terminal_id: str


class TerminalLabel(NamedTuple):
    """A known label of a terminal's transaction; ``label_ms``: when it became known.

    Plain ``(label_ms, transaction_id, fraud)`` tuples work too.
    """

    label_ms: int
    transaction_id: str
    fraud: int


class DeviceEvent(NamedTuple):
    """One past transaction made on a device; plain tuples work too."""

    event_ms: int
    transaction_id: str
    customer_id: str


def counts_event(event_ms: int, transaction_id: str, event: tuple[Any, ...]) -> bool:
    """Return whether the transaction at ``event_ms`` counts ``event`` of its keys.

    It counts every event up to its own time, other transactions of the same
    millisecond included, and not its own stored copy (the same identifier).
    """
    return event[0] < event_ms or (event[0] == event_ms and event[1] != transaction_id)


def _counted_events(
    event_ms: int, transaction_id: str, events: Iterable[EventT]
) -> list[EventT]:
    """Return the events that the transaction counts, by :func:`counts_event`."""
    return [event for event in events if counts_event(event_ms, transaction_id, event)]


def calendar_features(event_ms: int, zone: tzinfo = UTC) -> dict[str, float]:
    """Compute the weekend and night flags of an event time in ``zone``."""
    moment = utc_datetime(event_ms).astimezone(zone)
    return {
        "TX_DURING_WEEKEND": float(moment.weekday() >= 5),
        "TX_DURING_NIGHT": float(moment.hour <= NIGHT_LAST_HOUR),
    }


def customer_features(
    event_ms: int,
    transaction_id: str,
    amount: float,
    history: Iterable[CustomerEventTuple],
) -> dict[str, float]:
    """Compute the customer's count and mean amount per window at ``event_ms``.

    ``history`` may contain the current transaction and events after it; both are
    skipped, and the current transaction is counted once from its own arguments.
    Transactions in the same millisecond count for each other.
    """
    counted = _counted_events(event_ms, transaction_id, history)
    result: dict[str, float] = {}
    for days in WINDOW_DAYS:
        start = event_ms - days * MS_PER_DAY
        amounts = [event[2] for event in counted if event[0] > start]
        amounts.append(amount)
        result[f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW"] = float(len(amounts))
        # fsum is exactly rounded, so the mean does not depend on event order.
        result[f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW"] = math.fsum(amounts) / len(
            amounts
        )
    return result


def velocity_features(
    event_ms: int,
    transaction_id: str,
    amount: float,
    terminal_id: str,
    history: Iterable[CustomerEventTuple],
) -> dict[str, float]:
    """Compute the customer's velocity features at ``event_ms``.

    They are the seconds since the previous transaction in the longest window
    (:data:`NO_PREVIOUS_TX_SECONDS` without one, 0 when another transaction has
    the same millisecond), ``amount`` over the 30-day mean amount that
    :func:`customer_features` returns, and the distinct terminals of the 1-day
    window. ``history`` is read as in :func:`customer_features`.
    """
    start = event_ms - LONGEST_WINDOW_MS
    window = [
        event
        for event in _counted_events(event_ms, transaction_id, history)
        if event[0] > start
    ]
    previous_ms = max((event[0] for event in window), default=None)
    if previous_ms is None:
        seconds = NO_PREVIOUS_TX_SECONDS
    else:
        seconds = (event_ms - previous_ms) / 1000

    amounts = [event[2] for event in window]
    amounts.append(amount)
    mean = math.fsum(amounts) / len(amounts)
    ratio = amount / mean if mean > 0 else ZERO_MEAN_AMOUNT_RATIO

    day_start = event_ms - TERMINAL_COUNT_WINDOW_DAYS * MS_PER_DAY
    terminals = {event[3] for event in window if event[0] > day_start}
    terminals.add(terminal_id)
    return {
        "CUSTOMER_ID_SECONDS_SINCE_PREV_TX": seconds,
        "CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO": ratio,
        "CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW": float(len(terminals)),
    }


def device_features(
    event_ms: int,
    transaction_id: str,
    customer_id: str,
    device_id: str | None,
    history: Iterable[DeviceEventTuple],
) -> dict[str, float]:
    """Compute the device's 1-day transaction count and 7-day distinct customers.

    Both are :data:`NO_DEVICE_COUNT` when ``device_id`` is None. ``history``
    contains the device's events and may contain the current transaction and
    events after it, which are skipped. Events of the same millisecond count.
    """
    if device_id is None:
        return dict.fromkeys(DEVICE_FEATURES, NO_DEVICE_COUNT)
    counted = _counted_events(event_ms, transaction_id, history)
    tx_start = event_ms - DEVICE_TX_WINDOW_DAYS * MS_PER_DAY
    customer_start = event_ms - DEVICE_CUSTOMER_WINDOW_DAYS * MS_PER_DAY
    transactions = 1 + sum(1 for event in counted if event[0] > tx_start)
    customers = {event[2] for event in counted if event[0] > customer_start}
    customers.add(customer_id)
    return {
        "DEVICE_ID_NB_TX_1DAY_WINDOW": float(transactions),
        "DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW": float(len(customers)),
    }


def terminal_features(
    event_ms: int, labels: Iterable[TerminalLabelTuple]
) -> dict[str, float]:
    """Compute the terminal's labelled count and fraud share per window at ``event_ms``.

    Labels that became known after ``event_ms`` are skipped. The risk is 0 when the
    window contains no labelled transaction.
    """
    known = [label for label in labels if label[0] <= event_ms]
    result: dict[str, float] = {}
    for days in WINDOW_DAYS:
        start = event_ms - days * MS_PER_DAY
        window = [label[2] for label in known if label[0] > start]
        count = len(window)
        result[f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW"] = float(count)
        result[f"TERMINAL_ID_RISK_{days}DAY_WINDOW"] = (
            sum(window) / count if count else 0.0
        )
    return result


def transaction_features(
    event_ms: int,
    transaction_id: str,
    amount: float,
    customer_history: Iterable[CustomerEventTuple],
    terminal_labels: Iterable[TerminalLabelTuple],
    zone: tzinfo = UTC,
    *,
    customer_id: str,
    terminal_id: str,
    device_id: str | None = None,
    device_history: Iterable[DeviceEventTuple] = (),
) -> dict[str, float]:
    """Compute all model inputs of one transaction, in ``MODEL_INPUTS`` order."""
    customer_history = list(customer_history)
    named = {"TX_AMOUNT": amount}
    named |= calendar_features(event_ms, zone)
    named |= customer_features(event_ms, transaction_id, amount, customer_history)
    named |= terminal_features(event_ms, terminal_labels)
    named |= velocity_features(
        event_ms, transaction_id, amount, terminal_id, customer_history
    )
    named |= device_features(
        event_ms, transaction_id, customer_id, device_id, device_history
    )
    return {name: named[name] for name in MODEL_INPUTS}
