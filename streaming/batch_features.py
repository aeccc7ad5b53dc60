"""Batch reference of the feature definitions in plain pandas.

Computes for a whole transactions table what the stream job computes one event at
a time, with time-based rolling windows. It is the yardstick of the stream
benchmark and an independent check of :mod:`fraudcore.features`.
"""

from __future__ import annotations

import pandas as pd

from fraudcore.features import LABEL_DELAY_DAYS, MODEL_INPUTS, WINDOW_DAYS


def batch_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Compute the model inputs of every transaction.

    Parameters
    ----------
    transactions : pandas.DataFrame of shape (n_transactions, 9)
        Rows in the layout of ``transactions.parquet`` (TRANSACTION_ID,
        TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD, ...).

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
    return result[["TRANSACTION_ID", *MODEL_INPUTS]]


def _rolling(
    frame: pd.DataFrame, key: str, value: str, window: str
) -> tuple[pd.Series, pd.Series]:
    """Return the rolling count and sum of ``value`` per ``key``, in frame order."""
    ordered = frame.sort_values([key, "TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    # Sorted by key, the groups come out contiguous and in row order, so the
    # rolling results line up with ``ordered`` row for row.
    rolled = ordered.set_index("TX_DATETIME").groupby(key, sort=False)[value]
    rolled = rolled.rolling(window)
    count = pd.Series(rolled.count().to_numpy(), index=ordered.index)
    total = pd.Series(rolled.sum().to_numpy(), index=ordered.index)
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
    # windows ending at t with lengths delay + n and delay.
    delayed_count, delayed_frauds = _rolling(
        frame, "TERMINAL_ID", "TX_FRAUD", f"{LABEL_DELAY_DAYS}D"
    )
    columns = {}
    for days in WINDOW_DAYS:
        span = f"{LABEL_DELAY_DAYS + days}D"
        count, frauds = _rolling(frame, "TERMINAL_ID", "TX_FRAUD", span)
        window_count = count - delayed_count
        window_frauds = frauds - delayed_frauds
        risk = (window_frauds / window_count.where(window_count > 0)).fillna(0.0)
        columns[f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW"] = window_count
        columns[f"TERMINAL_ID_RISK_{days}DAY_WINDOW"] = risk
    return pd.DataFrame(columns)
