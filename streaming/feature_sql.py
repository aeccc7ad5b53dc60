"""Flink SQL of the feature job's windows, generated from fraudcore.features.

Each key's windows are one event-time ``OVER (PARTITION BY key ORDER BY
rowtime)`` aggregation, with aggregate functions of this repository that run in
the JVM (``streaming/java``, see :data:`FUNCTIONS`)::

    transactions ─ by customer: 1, 7, 30 days, previous ─┬─ by device: 1, 7 days ─┐
                                                           └─ without a device ─────┤
    labels ─────────────────────────────────── union, by terminal: 1, 7, 30 days ─ rows

Flink's own ``RANGE BETWEEN INTERVAL … PRECEDING`` windows compute the aggregates
of one ``SELECT`` over one window length only, so seven lengths would take seven
operators, each of which walks every timestamp of the key's window for every
row. One accumulator per key that keeps the rows of the longest window and
computes every length from them is several times cheaper (see
docs/streaming.md).

The window function sees the rows of a key in event-time order, and all rows of
one millisecond before it is asked for their result, so such rows are peers, as
:func:`fraudcore.features.counts_event` defines them. The lengths, defaults and
names all come from :mod:`fraudcore.features`.

The sources must provide a ``rowtime`` attribute with watermarks, and no row may
arrive at or behind the watermark, because the ``OVER`` operators drop such rows
without a trace. The feature job sends those rows to the late-events topic
before they reach SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

from fraudcore.features import (
    CALENDAR_FEATURES,
    DEVICE_CUSTOMER_WINDOW_DAYS,
    DEVICE_FEATURES,
    DEVICE_TX_WINDOW_DAYS,
    LONGEST_WINDOW_MS,
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    NO_PREVIOUS_TX_SECONDS,
    TERMINAL_COUNT_WINDOW_DAYS,
    TERMINAL_FEATURES,
    WINDOW_DAYS,
    ZERO_MEAN_AMOUNT_RATIO,
)
from fraudcore.timeutil import MS_PER_DAY

# SQL names of the aggregate functions, and their Java classes.
FUNCTIONS = {
    "WINDOW_TOTALS": "org.fraudplatform.streaming.WindowTotals",
    "WINDOW_DISTINCT": "org.fraudplatform.streaming.WindowDistinct",
    "PREVIOUS_TIME": "org.fraudplatform.streaming.PreviousTime",
}

# Columns of the transactions and labels views, besides ``rowtime``.
TRANSACTION_COLUMNS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "device_id",
    "amount",
    "event_ms",
    *CALENDAR_FEATURES,
)
LABEL_COLUMNS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "transaction_ms",
    "label_ms",
    "fraud",
)
# Columns of the offline store's rows, with their SQL types. Training and the
# demo read these files, so the layout stays as it is.
FEATURE_ROW_COLUMNS = (
    ("transaction_id", "STRING"),
    ("customer_id", "STRING"),
    ("terminal_id", "STRING"),
    ("event_ms", "BIGINT"),
    ("device_id", "STRING"),
    *((name, "DOUBLE") for name in MODEL_INPUTS),
    ("dt", "STRING"),
)
LABEL_ROW_COLUMNS = (
    ("transaction_id", "STRING"),
    ("customer_id", "STRING"),
    ("terminal_id", "STRING"),
    ("transaction_ms", "BIGINT"),
    ("label_ms", "BIGINT"),
    ("fraud", "INT"),
    ("dt", "STRING"),
)
# The features a transaction has before its terminal's windows, in this order.
TRANSACTION_SIDE_FEATURES = tuple(
    name for name in MODEL_INPUTS if name not in TERMINAL_FEATURES
)
# The offline store is partitioned by the UTC day of the event time.
DAY_PARTITION = "DATE_FORMAT(rowtime, 'yyyy-MM-dd')"


def quoted(name: str) -> str:
    """Quote a column or view name for Flink SQL."""
    return f"`{name}`"


def double(value: float) -> str:
    """Return a DOUBLE literal of ``value``."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def milliseconds(days: int) -> str:
    """Return a BIGINT literal of ``days`` in milliseconds."""
    return f"CAST({days * MS_PER_DAY} AS BIGINT)"


def window_totals(time: str, weight: str, value: str, days: Sequence[int]) -> str:
    """Return a ``WINDOW_TOTALS`` call over windows of ``days``, in that order.

    Its result holds, per window, the total weight at index ``2i + 1`` and the
    sum of ``value`` at ``2i + 2`` (SQL arrays count from 1), for the window
    ``days[i]``; :func:`total_weight` and :func:`total_value` index it.
    """
    lengths = ", ".join(milliseconds(length) for length in days)
    return f"WINDOW_TOTALS({time}, {weight}, {value}, ARRAY[{lengths}])"


def total_weight(column: str, days: Sequence[int], length: int) -> str:
    """Return the SQL of the total weight of the ``length``-day window."""
    return f"{column}[{2 * list(days).index(length) + 1}]"


def total_value(column: str, days: Sequence[int], length: int) -> str:
    """Return the SQL of the sum of values of the ``length``-day window."""
    return f"{column}[{2 * list(days).index(length) + 2}]"


class ViewBuilder:
    """Collects ``CREATE TEMPORARY VIEW`` statements of views named by a prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.statements: list[str] = []

    def add(self, name: str, query: str) -> str:
        """Add the view ``<prefix>_<name>`` defined by ``query``; returns its name."""
        view = f"{self.prefix}_{name}"
        self.statements.append(f"CREATE TEMPORARY VIEW {quoted(view)} AS {query}")
        return view


def _select(
    columns: Sequence[str],
    values: dict[str, str],
    source: str,
    where: str | None = None,
) -> str:
    """Return a SELECT of ``columns`` from ``source``, some given by ``values``."""
    items = [
        f"{values[name]} AS {quoted(name)}" if name in values else quoted(name)
        for name in columns
    ]
    query = f"SELECT {', '.join(items)} FROM {quoted(source)}"
    return query if where is None else f"{query} WHERE {where}"


def _over_key(key: str) -> str:
    return f"PARTITION BY {quoted(key)} ORDER BY rowtime"


def _customer_feature_values() -> dict[str, str]:
    """Return the SQL of the features that the customer's windows give."""
    values = {"TX_AMOUNT": "amount"}
    for days in WINDOW_DAYS:
        count = total_weight("customer_totals", WINDOW_DAYS, days)
        total = total_value("customer_totals", WINDOW_DAYS, days)
        values[f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW"] = count
        values[f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW"] = f"{total} / {count}"
    longest = max(WINDOW_DAYS)
    longest_mean = (
        f"({total_value('customer_totals', WINDOW_DAYS, longest)} / "
        f"{total_weight('customer_totals', WINDOW_DAYS, longest)})"
    )
    values["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] = (
        "CASE WHEN previous_ms IS NULL OR event_ms - previous_ms >= "
        f"{LONGEST_WINDOW_MS} THEN {double(NO_PREVIOUS_TX_SECONDS)} "
        "ELSE CAST(event_ms - previous_ms AS DOUBLE) / 1000 END"
    )
    values["CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO"] = (
        f"CASE WHEN {longest_mean} > 0 THEN amount / {longest_mean} "
        f"ELSE {double(ZERO_MEAN_AMOUNT_RATIO)} END"
    )
    values["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"] = (
        "CAST(customer_terminals AS DOUBLE)"
    )
    return values


def _terminal_feature_values() -> dict[str, str]:
    """Return the SQL of the features that the terminal's windows give."""
    values = {}
    for days in WINDOW_DAYS:
        labels = total_weight("terminal_totals", WINDOW_DAYS, days)
        frauds = total_value("terminal_totals", WINDOW_DAYS, days)
        values[f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW"] = labels
        values[f"TERMINAL_ID_RISK_{days}DAY_WINDOW"] = (
            f"CASE WHEN {labels} > 0 THEN {frauds} / {labels} ELSE {double(0.0)} END"
        )
    return values


def feature_views(
    transactions: str, labels: str, prefix: str = "features"
) -> list[str]:
    """Return the statements that define the view ``<prefix>_rows``.

    That view has the columns of :data:`FEATURE_ROW_COLUMNS`: one row per
    transaction with its model inputs, emitted once the watermark passes its
    event time. The functions of :data:`FUNCTIONS` must be registered first.

    Args:
        transactions: a view with :data:`TRANSACTION_COLUMNS` and ``rowtime``.
        labels: a view with :data:`LABEL_COLUMNS` and ``rowtime``, the time the
            label became known.
        prefix: prefix of the views' names.
    """
    views = ViewBuilder(prefix)
    keys = ("transaction_id", "customer_id", "terminal_id", "device_id", "event_ms")
    transaction_columns = [*keys, "rowtime", *TRANSACTION_SIDE_FEATURES]

    customer_windows = views.add(
        "customer_windows",
        f"SELECT *, {window_totals('event_ms', '1', 'amount', WINDOW_DAYS)} OVER w "
        "AS customer_totals, "
        "WINDOW_DISTINCT(event_ms, terminal_id, "
        f"{milliseconds(TERMINAL_COUNT_WINDOW_DAYS)}) OVER w AS customer_terminals, "
        "PREVIOUS_TIME(event_ms) OVER w AS previous_ms "
        f"FROM {quoted(transactions)} WINDOW w AS ({_over_key('customer_id')})",
    )
    customer_values = _customer_feature_values()
    customer = views.add(
        "customer",
        _select(
            [*keys, "rowtime", *CALENDAR_FEATURES, *customer_values],
            customer_values,
            customer_windows,
        ),
    )

    device_windows = views.add(
        "device_windows",
        "SELECT *, "
        f"{window_totals('event_ms', '1', double(0.0), [DEVICE_TX_WINDOW_DAYS])} "
        "OVER w AS device_totals, "
        "WINDOW_DISTINCT(event_ms, customer_id, "
        f"{milliseconds(DEVICE_CUSTOMER_WINDOW_DAYS)}) OVER w AS device_customers "
        f"FROM {quoted(customer)} WHERE device_id IS NOT NULL "
        f"WINDOW w AS ({_over_key('device_id')})",
    )
    tx_name, customers_name = DEVICE_FEATURES
    device_values = {
        tx_name: total_weight(
            "device_totals", [DEVICE_TX_WINDOW_DAYS], DEVICE_TX_WINDOW_DAYS
        ),
        customers_name: "CAST(device_customers AS DOUBLE)",
    }
    no_device = double(NO_DEVICE_COUNT)
    with_device = _select(transaction_columns, device_values, device_windows)
    without_device = _select(
        transaction_columns,
        {tx_name: no_device, customers_name: no_device},
        customer,
        "device_id IS NULL",
    )
    transactions_side = views.add(
        "transactions", f"{with_device} UNION ALL {without_device}"
    )

    # Labels join the transactions by terminal, at the time each became known.
    # A transaction row has weight 0: it reads the windows and is not kept.
    label_values = {
        "device_id": "CAST(NULL AS STRING)",
        "event_ms": "label_ms",
        "is_label": "1",
    } | {name: "CAST(NULL AS DOUBLE)" for name in TRANSACTION_SIDE_FEATURES}
    label_side = _select(
        [*transaction_columns, "is_label", "fraud"], label_values, labels
    )
    terminal_events = views.add(
        "terminal_events",
        f"SELECT *, 0 AS is_label, 0 AS fraud FROM {quoted(transactions_side)} "
        f"UNION ALL {label_side}",
    )
    label_totals = window_totals(
        "event_ms", "is_label", "CAST(fraud AS DOUBLE)", WINDOW_DAYS
    )
    terminal_windows = views.add(
        "terminal_windows",
        f"SELECT *, {label_totals} OVER ({_over_key('terminal_id')}) "
        f"AS terminal_totals FROM {quoted(terminal_events)}",
    )

    outputs = {name: quoted(name) for name in TRANSACTION_SIDE_FEATURES}
    outputs |= _terminal_feature_values()
    views.add(
        "rows",
        "SELECT transaction_id, customer_id, terminal_id, event_ms, device_id, "
        + ", ".join(f"{outputs[name]} AS {quoted(name)}" for name in MODEL_INPUTS)
        + f", {DAY_PARTITION} AS dt FROM {quoted(terminal_windows)} "
        "WHERE is_label = 0",
    )
    return views.statements


def label_rows_query(labels: str) -> str:
    """Return the SELECT of the offline store's label rows from ``labels``."""
    columns = ", ".join(quoted(name) for name in LABEL_COLUMNS)
    return f"SELECT {columns}, {DAY_PARTITION} AS dt FROM {quoted(labels)}"
