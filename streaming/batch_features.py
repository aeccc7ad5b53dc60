"""Batch reference of the feature definitions in plain pandas.

Computes for a whole transactions table what the stream job computes one event at
a time, with time-based rolling windows. It is the yardstick of the stream
benchmark and an independent check of :mod:`fraudcore.features`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from fraudcore.features import (
    DEVICE_CUSTOMER_WINDOW_DAYS,
    DEVICE_FEATURES,
    DEVICE_TX_WINDOW_DAYS,
    LABEL_DELAY_DAYS,
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    NO_PREVIOUS_TX_SECONDS,
    TERMINAL_COUNT_WINDOW_DAYS,
    WINDOW_DAYS,
    ZERO_MEAN_AMOUNT_RATIO,
)

IntArray = npt.NDArray[np.int64]


def batch_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Compute the model inputs of every transaction.

    Parameters
    ----------
    transactions : pandas.DataFrame of shape (n_transactions, n_columns)
        Rows in the layout of ``transactions.parquet`` (TRANSACTION_ID,
        TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD, ...), with
        integer transaction ids. An optional ``DEVICE_ID`` column gives each
        transaction's device, missing values meaning none.

    Returns
    -------
    pandas.DataFrame of shape (n_transactions, 1 + len(MODEL_INPUTS))
        ``TRANSACTION_ID`` and the model inputs, in time order.
    """
    frame = transactions.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    frame = frame.reset_index(drop=True)
    result = pd.DataFrame({"TRANSACTION_ID": frame["TRANSACTION_ID"]})
    result["TX_AMOUNT"] = frame["TX_AMOUNT"]
    result["TX_DURING_WEEKEND"] = (frame["TX_DATETIME"].dt.weekday >= 5).astype(float)
    result["TX_DURING_NIGHT"] = (frame["TX_DATETIME"].dt.hour <= 6).astype(float)
    result = result.join(_customer_windows(frame))
    result = result.join(_terminal_windows(frame))
    result = result.join(_velocity(frame, result))
    result = result.join(_device_windows(frame))
    return result[["TRANSACTION_ID", *MODEL_INPUTS]]


def _by_key(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values([key, "TX_DATETIME", "TRANSACTION_ID"], kind="stable")


def _time_keys(ordered: pd.DataFrame, key: str, span_ms: int) -> IntArray:
    """Return one rising integer per row of ``ordered`` that orders (key, time).

    Times rise within a key, and keys follow each other, so one sorted array of
    these serves every key's searches for times up to ``span_ms`` apart.
    """
    group = ordered.groupby(key, sort=False).ngroup().to_numpy()
    times = ordered["TX_DATETIME"].to_numpy("datetime64[ms]").astype(np.int64)
    span = int(times.max() - times.min()) + span_ms + 1
    return group * span + (times - times.min())


def _peer_bounds(ordered: pd.DataFrame, key: str) -> tuple[IntArray, IntArray]:
    """Return the first and last position of each row's same-time peers.

    Peers are the rows of ``ordered`` with the row's key and time. A row
    without any is its own first and last peer.
    """
    keys = _time_keys(ordered, key, 0)
    first = np.searchsorted(keys, keys, side="left")
    last = np.searchsorted(keys, keys, side="right") - 1
    return first, last


def _rolling(
    frame: pd.DataFrame, key: str, value: str, window: str, peers: bool = True
) -> tuple[pd.Series, pd.Series]:
    """Return the rolling count and sum of ``value`` per ``key``, in frame order.

    A pandas window ends at its own row. With ``peers``, every row takes the
    values of its last same-time peer, whose window contains all of them.
    """
    ordered = _by_key(frame, key)
    # Sorted by key, the groups come out contiguous and in row order, so the
    # rolling results line up with ``ordered`` row for row.
    rolled = ordered.set_index("TX_DATETIME").groupby(key, sort=False)[value]
    rolled = rolled.rolling(window)
    counts = rolled.count().to_numpy()
    totals = rolled.sum().to_numpy()
    if peers:
        _, last = _peer_bounds(ordered, key)
        counts, totals = counts[last], totals[last]
    count = pd.Series(counts, index=ordered.index)
    total = pd.Series(totals, index=ordered.index)
    return count.reindex(frame.index), total.reindex(frame.index)


def _customer_windows(frame: pd.DataFrame) -> pd.DataFrame:
    columns = {}
    for days in WINDOW_DAYS:
        count, total = _rolling(frame, "CUSTOMER_ID", "TX_AMOUNT", f"{days}D")
        columns[f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW"] = count
        columns[f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW"] = total / count
    return pd.DataFrame(columns)


def _terminal_windows(frame: pd.DataFrame) -> pd.DataFrame:
    # Transactions in (t - delay - n days, t - delay] are the difference of the
    # windows ending at t with lengths delay + n and delay. Both windows end at
    # the same row, so its same-time peers cancel out and need no spreading.
    delayed_count, delayed_frauds = _rolling(
        frame, "TERMINAL_ID", "TX_FRAUD", f"{LABEL_DELAY_DAYS}D", peers=False
    )
    columns = {}
    for days in WINDOW_DAYS:
        span = f"{LABEL_DELAY_DAYS + days}D"
        count, frauds = _rolling(frame, "TERMINAL_ID", "TX_FRAUD", span, peers=False)
        window_count = count - delayed_count
        window_frauds = frauds - delayed_frauds
        risk = (window_frauds / window_count.where(window_count > 0)).fillna(0.0)
        columns[f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW"] = window_count
        columns[f"TERMINAL_ID_RISK_{days}DAY_WINDOW"] = risk
    return pd.DataFrame(columns)


def _velocity(frame: pd.DataFrame, customer: pd.DataFrame) -> pd.DataFrame:
    ordered = _by_key(frame, "CUSTOMER_ID")
    gap = ordered.groupby("CUSTOMER_ID", sort=False)["TX_DATETIME"].diff()
    # A same-time peer is the previous transaction of every row it ties with.
    first, last = _peer_bounds(ordered, "CUSTOMER_ID")
    gap = gap.mask(first != last, pd.Timedelta(0))
    seconds = gap.dt.total_seconds()
    longest = pd.Timedelta(days=max(WINDOW_DAYS))
    # Only a previous transaction inside the longest window counts.
    seconds = seconds.where(gap < longest, NO_PREVIOUS_TX_SECONDS)

    mean = customer[f"CUSTOMER_ID_AVG_AMOUNT_{max(WINDOW_DAYS)}DAY_WINDOW"]
    ratio = (frame["TX_AMOUNT"] / mean.where(mean > 0)).fillna(ZERO_MEAN_AMOUNT_RATIO)

    terminals = _distinct_in_window(
        frame, "CUSTOMER_ID", "TERMINAL_ID", TERMINAL_COUNT_WINDOW_DAYS
    )
    return pd.DataFrame(
        {
            "CUSTOMER_ID_SECONDS_SINCE_PREV_TX": seconds.reindex(frame.index),
            "CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO": ratio,
            "CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW": terminals,
        }
    )


def _device_windows(frame: pd.DataFrame) -> pd.DataFrame:
    result = pd.DataFrame(NO_DEVICE_COUNT, index=frame.index, columns=DEVICE_FEATURES)
    if "DEVICE_ID" not in frame:
        return result
    with_device = frame[frame["DEVICE_ID"].notna()]
    if with_device.empty:
        return result
    count, _ = _rolling(
        with_device, "DEVICE_ID", "TX_AMOUNT", f"{DEVICE_TX_WINDOW_DAYS}D"
    )
    customers = _distinct_in_window(
        with_device, "DEVICE_ID", "CUSTOMER_ID", DEVICE_CUSTOMER_WINDOW_DAYS
    )
    result.loc[with_device.index, "DEVICE_ID_NB_TX_1DAY_WINDOW"] = count
    result.loc[with_device.index, "DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"] = customers
    return result


def _distinct_in_window(
    frame: pd.DataFrame, key: str, value: str, days: int
) -> pd.Series:
    """Count the distinct ``value`` of each row's ``key`` over ``(t - days, t]``.

    Counting in row order, each row counts once for every later row of its key
    until the next row with the same value, or until it leaves the window,
    whichever comes first. Those spans are added up as +1/-1 steps and a
    running sum. Every row then takes the count of its last same-time peer,
    which has seen all of them.
    """
    ordered = _by_key(frame, key)
    rows = np.arange(len(ordered))
    keys = _time_keys(ordered, key, days * 86_400_000)
    left_window = np.searchsorted(keys, keys + days * 86_400_000, side="left")

    pair = ordered.groupby([key, value], sort=False).ngroup().to_numpy()
    next_same = pd.Series(rows).groupby(pair).shift(-1).to_numpy()
    next_same = np.where(np.isnan(next_same), len(ordered), next_same).astype(np.int64)
    ends = np.minimum(left_window, next_same)

    steps = np.zeros(len(ordered) + 1, dtype=np.int64)
    np.add.at(steps, rows, 1)
    np.add.at(steps, ends, -1)
    counts = np.cumsum(steps[:-1]).astype(float)
    _, last = _peer_bounds(ordered, key)
    return pd.Series(counts[last], index=ordered.index).reindex(frame.index)
