"""Feature definitions shared by the stream job, the training job and the scorer.

Every function here computes the features of one transaction at its own event
time ``t`` from the events of its keys, and ignores anything ordered after the
transaction. The stream job and the scorer call the same functions on the same
events, which is what keeps online and offline features equal.

Semantics follow the fraud-detection handbook's baseline features:

* customer windows ``(t - n days, t]``, the current transaction included;
* terminal windows over transactions in ``(t - 7 - n days, t - 7 days]``, because
  labels become known 7 days after the transaction. A label event carries the
  time it became known, so the same set is the labels known in ``(t - n, t]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, tzinfo
from typing import NamedTuple

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

# Model input order: the ONNX graph takes one float row in exactly this order.
MODEL_INPUTS = ("TX_AMOUNT",) + BASELINE_FEATURES


# Event shapes the functions accept: the named tuples below or plain tuples.
CustomerEventTuple = tuple[int, str, float]
TerminalLabelTuple = tuple[int, str, int]


class CustomerEvent(NamedTuple):
    """One past transaction of a customer, as kept in the online store.

    The functions below read events by position, so plain ``(event_ms,
    transaction_id, amount)`` tuples work too: the stream job keeps those in its
    state because they pickle several times faster than named tuples.
    """

    event_ms: int
    transaction_id: str
    amount: float


class TerminalLabel(NamedTuple):
    """A known label of a terminal's transaction; ``label_ms``: when it became known.

    Plain ``(label_ms, transaction_id, fraud)`` tuples work too.
    """

    label_ms: int
    transaction_id: str
    fraud: int


def order_key(event_ms: int, transaction_id: str) -> tuple[int, int, str]:
    """Return the total order of transactions: event time, then identifier.

    Identifiers compare by length first so that decimal identifiers sort as numbers.
    Several transactions of one customer in the same millisecond are ordered by it.
    """
    return (event_ms, len(transaction_id), transaction_id)


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
    """
    current = order_key(event_ms, transaction_id)
    earlier = [
        event
        for event in history
        if event[0] < event_ms
        or (event[0] == event_ms and order_key(event[0], event[1]) < current)
    ]
    result: dict[str, float] = {}
    for days in WINDOW_DAYS:
        start = event_ms - days * MS_PER_DAY
        amounts = [event[2] for event in earlier if event[0] > start]
        amounts.append(amount)
        result[f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW"] = float(len(amounts))
        # fsum is exactly rounded, so the mean does not depend on event order.
        result[f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW"] = math.fsum(amounts) / len(
            amounts
        )
    return result


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
) -> dict[str, float]:
    """Compute all model inputs of one transaction, in ``MODEL_INPUTS`` order."""
    named = {"TX_AMOUNT": amount}
    named |= calendar_features(event_ms, zone)
    named |= customer_features(event_ms, transaction_id, amount, customer_history)
    named |= terminal_features(event_ms, terminal_labels)
    return {name: named[name] for name in MODEL_INPUTS}
