"""The pandas batch reference against the shared per-event definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudcore.features import (
    LABEL_DELAY_DAYS,
    MODEL_INPUTS,
    CustomerEvent,
    TerminalLabel,
    transaction_features,
)
from fraudcore.timeutil import MS_PER_DAY
from streaming.batch_features import batch_features
from streaming.simulator import simulate_transactions


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    return simulate_transactions(n_customers=60, n_terminals=80, n_days=45, seed=3)


def per_event_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Features from fraudcore.features, one transaction at a time."""
    event_ms = transactions["TX_DATETIME"].to_numpy("datetime64[ms]").astype(np.int64)
    frame = transactions.assign(event_ms=event_ms)
    customers: dict[int, list[CustomerEvent]] = {}
    terminals: dict[int, list[TerminalLabel]] = {}
    for row in frame.itertuples(index=False):
        label = TerminalLabel(
            row.event_ms + LABEL_DELAY_DAYS * MS_PER_DAY,
            str(row.TRANSACTION_ID),
            row.TX_FRAUD,
        )
        terminals.setdefault(row.TERMINAL_ID, []).append(label)
    rows = []
    for row in frame.itertuples(index=False):
        history = customers.setdefault(row.CUSTOMER_ID, [])
        values = transaction_features(
            row.event_ms,
            str(row.TRANSACTION_ID),
            row.TX_AMOUNT,
            history,
            terminals.get(row.TERMINAL_ID, []),
        )
        history.append(
            CustomerEvent(row.event_ms, str(row.TRANSACTION_ID), row.TX_AMOUNT)
        )
        rows.append({"TRANSACTION_ID": row.TRANSACTION_ID, **values})
    return pd.DataFrame(rows)


def test_batch_features_match_per_event_definitions(transactions):
    batch = batch_features(transactions).set_index("TRANSACTION_ID")
    events = per_event_features(transactions).set_index("TRANSACTION_ID")
    batch = batch.loc[events.index]
    assert len(batch) == len(transactions) > 1_000
    tied = transactions.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)
    untied = transactions.loc[~tied, "TRANSACTION_ID"]
    for name in MODEL_INPUTS:
        np.testing.assert_allclose(
            batch.loc[untied, name],
            events.loc[untied, name],
            rtol=1e-9,
            atol=1e-9,
            err_msg=name,
        )


def test_batch_features_frauds_raise_terminal_risk(transactions):
    batch = batch_features(transactions)
    assert batch["TERMINAL_ID_RISK_7DAY_WINDOW"].max() > 0
    assert batch["TERMINAL_ID_NB_TX_1DAY_WINDOW"].min() == 0
