"""The pandas batch reference against the shared per-event definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudcore.features import (
    DEVICE_FEATURES,
    LABEL_DELAY_DAYS,
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    NO_PREVIOUS_TX_SECONDS,
    CustomerEvent,
    DeviceEvent,
    TerminalLabel,
    transaction_features,
)
from fraudcore.timeutil import MS_PER_DAY
from streaming.batch_features import batch_features
from streaming.simulator import add_device_ids, simulate_transactions


def with_ties(frame: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """Add ``count`` copies of random rows at the same second, with new ids.

    A copy keeps the device and the time, takes another terminal and amount, and
    every other copy moves to another customer, so customers and devices both
    get ties.
    """
    rng = np.random.default_rng(seed)
    copies = frame.sample(count, random_state=seed).copy()
    copies["TRANSACTION_ID"] = frame["TRANSACTION_ID"].max() + 1 + np.arange(count)
    copies["TERMINAL_ID"] = rng.permutation(copies["TERMINAL_ID"].to_numpy())
    copies["TX_AMOUNT"] = np.round(copies["TX_AMOUNT"] * 0.5, 2)
    other = rng.permutation(copies["CUSTOMER_ID"].to_numpy())
    copies.loc[copies.index[::2], "CUSTOMER_ID"] = other[::2]
    tied = pd.concat([frame, copies], ignore_index=True)
    return tied.sort_values(["TX_DATETIME", "TRANSACTION_ID"], ignore_index=True)


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    frame = simulate_transactions(n_customers=60, n_terminals=80, n_days=45, seed=3)
    return with_ties(add_device_ids(frame, seed=3), count=200, seed=3)


def per_event_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Features from fraudcore.features, one transaction at a time."""
    event_ms = transactions["TX_DATETIME"].to_numpy("datetime64[ms]").astype(np.int64)
    frame = transactions.assign(event_ms=event_ms)
    if "DEVICE_ID" not in frame:
        frame["DEVICE_ID"] = None
    customers: dict[int, list[CustomerEvent]] = {}
    terminals: dict[int, list[TerminalLabel]] = {}
    devices: dict[str, list[DeviceEvent]] = {}
    for row in frame.itertuples(index=False):
        label = TerminalLabel(
            row.event_ms + LABEL_DELAY_DAYS * MS_PER_DAY,
            str(row.TRANSACTION_ID),
            row.TX_FRAUD,
        )
        terminals.setdefault(row.TERMINAL_ID, []).append(label)
    rows = []
    # Every history contains the whole table, later rows and the row itself
    # included, so the definitions must skip them.
    for row in frame.itertuples(index=False):
        customer = customers.setdefault(row.CUSTOMER_ID, [])
        customer.append(
            CustomerEvent(
                row.event_ms,
                str(row.TRANSACTION_ID),
                row.TX_AMOUNT,
                str(row.TERMINAL_ID),
            )
        )
        device_id = None if pd.isna(row.DEVICE_ID) else str(row.DEVICE_ID)
        if device_id is not None:
            devices.setdefault(device_id, []).append(
                DeviceEvent(row.event_ms, str(row.TRANSACTION_ID), str(row.CUSTOMER_ID))
            )
    for row in frame.itertuples(index=False):
        device_id = None if pd.isna(row.DEVICE_ID) else str(row.DEVICE_ID)
        values = transaction_features(
            row.event_ms,
            str(row.TRANSACTION_ID),
            row.TX_AMOUNT,
            customers[row.CUSTOMER_ID],
            terminals.get(row.TERMINAL_ID, []),
            customer_id=str(row.CUSTOMER_ID),
            terminal_id=str(row.TERMINAL_ID),
            device_id=device_id,
            device_history=devices.get(device_id, []) if device_id else [],
        )
        rows.append({"TRANSACTION_ID": row.TRANSACTION_ID, **values})
    return pd.DataFrame(rows)


def compare(batch: pd.DataFrame, events: pd.DataFrame, ids, names) -> None:
    for name in names:
        np.testing.assert_allclose(
            batch.loc[ids, name],
            events.loc[ids, name],
            rtol=1e-9,
            atol=1e-9,
            err_msg=name,
        )


def test_batch_features_match_per_event_definitions(transactions):
    batch = batch_features(transactions).set_index("TRANSACTION_ID")
    events = per_event_features(transactions).set_index("TRANSACTION_ID")
    batch = batch.loc[events.index]
    assert len(batch) == len(transactions) > 1_000
    tied = transactions.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)
    device_tied = transactions.dropna(subset="DEVICE_ID").duplicated(
        ["DEVICE_ID", "TX_DATETIME"], keep=False
    )
    assert tied.sum() > 100
    assert device_tied.sum() > 100
    # Both count same-time transactions as peers, so ties must match too.
    compare(batch, events, events.index, MODEL_INPUTS)


def test_batch_features_data_covers_new_cases(transactions):
    batch = batch_features(transactions)
    device_missing = transactions["DEVICE_ID"].isna().to_numpy()
    assert device_missing.any()
    assert (batch.loc[device_missing, list(DEVICE_FEATURES)] == NO_DEVICE_COUNT).all(
        axis=None
    )
    assert batch["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"].max() > 1
    assert batch["DEVICE_ID_NB_TX_1DAY_WINDOW"].max() > 1
    assert batch["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"].max() > 1
    assert (batch["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_TX_SECONDS).any()


def edge_cases() -> pd.DataFrame:
    """Hand-made rows at ties, window edges and without previous or device."""
    start = pd.Timestamp("2018-05-01 12:00:00")
    day = pd.Timedelta(days=1)
    second = pd.Timedelta(seconds=1)
    rows = [
        # customer 1: first ever, then exactly 30 days later (window is open),
        # then 30 days minus a second after that.
        (1, start, 1, 1, 10.0, "a"),
        (2, start + 30 * day, 1, 2, 20.0, "a"),
        (3, start + 60 * day - second, 1, 3, 0.0, None),
        # customer 2: three peers in one second at two terminals, then two
        # peers exactly one day later, when the first three left the 1-day window.
        (10, start, 2, 5, 0.0, "shared"),
        (11, start, 2, 6, 0.0, "shared"),
        (12, start, 2, 5, 4.0, "b"),
        (13, start + day, 2, 6, 1.0, "shared"),
        (14, start + day, 2, 7, 2.0, None),
        # customer 3 shares the device 6 days after customer 2 last used it,
        # then exactly 7 days after.
        (20, start + 7 * day, 3, 5, 5.0, "shared"),
        (21, start + 8 * day, 3, 5, 5.0, "shared"),
        # customer 4: one transaction of 0, so its 30-day mean is 0.
        (30, start, 4, 8, 0.0, None),
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "TRANSACTION_ID",
            "TX_DATETIME",
            "CUSTOMER_ID",
            "TERMINAL_ID",
            "TX_AMOUNT",
            "DEVICE_ID",
        ],
    )
    return frame.assign(TX_FRAUD=0)


def test_batch_features_edge_cases_match_definitions():
    frame = edge_cases()
    batch = batch_features(frame).set_index("TRANSACTION_ID")
    events = per_event_features(frame).set_index("TRANSACTION_ID")
    compare(batch, events, events.index, MODEL_INPUTS)


def test_batch_features_edge_case_values():
    batch = batch_features(edge_cases()).set_index("TRANSACTION_ID")
    since = batch["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"]
    assert since[1] == NO_PREVIOUS_TX_SECONDS
    assert since[2] == NO_PREVIOUS_TX_SECONDS
    assert since[3] == NO_PREVIOUS_TX_SECONDS - 1
    assert since[10] == 0.0  # peers are each other's previous transaction
    assert since[11] == 0.0
    ratio = batch["CUSTOMER_ID_AMOUNT_TO_AVG_30DAY_RATIO"]
    assert ratio[30] == 1.0  # 0 over a mean of 0
    assert ratio[10] == 0.0  # 0 over the mean of its peers, (0 + 0 + 4) / 3
    assert ratio[12] == pytest.approx(3.0)  # 4 over (0 + 0 + 4) / 3
    terminals = batch["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"]
    assert terminals.loc[[10, 11, 12, 13, 14]].tolist() == [2, 2, 2, 2, 2]
    device_tx = batch["DEVICE_ID_NB_TX_1DAY_WINDOW"]
    assert device_tx.loc[[10, 11, 13, 14, 20, 21]].tolist() == [2, 2, 1, 0, 1, 1]
    device_customers = batch["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"]
    assert device_customers.loc[[13, 20, 21]].tolist() == [1, 2, 1]


def test_batch_features_without_device_column(transactions):
    batch = batch_features(transactions.drop(columns="DEVICE_ID"))
    assert (batch[list(DEVICE_FEATURES)] == NO_DEVICE_COUNT).all(axis=None)


def test_batch_features_frauds_raise_terminal_risk(transactions):
    batch = batch_features(transactions)
    assert batch["TERMINAL_ID_RISK_7DAY_WINDOW"].max() > 0
    assert batch["TERMINAL_ID_NB_TX_1DAY_WINDOW"].min() == 0
