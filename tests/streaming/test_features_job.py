"""The feature job's offline rows against reference features.

The baseline features are compared with the handbook's reference file, and every
model input with the pandas batch reference. The online-store changelog, which
the job builds in Flink SQL, is compared with the Python encoding the loader
reads. Runs the real job on the real Kafka
broker (see the ``streamed_span`` and ``simulated_span`` fixtures).
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka import Consumer

from fraudcore.features import (
    BASELINE_FEATURES,
    DEVICE_FEATURES,
    LABEL_DELAY_DAYS,
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    VELOCITY_FEATURES,
    CustomerEvent,
    DeviceEvent,
    TerminalLabel,
)
from fraudcore.timeutil import MS_PER_DAY
from streaming.online_writer import encode_change
from tests.streaming.offline import compare_with_batch, read_offline_features

pytestmark = pytest.mark.integration

REFERENCE_FILE = "reference-features-2018-07-25-to-2018-08-14.parquet"


def same_second_ties(transactions: pd.DataFrame) -> set[str]:
    """Transactions sharing their second with another one of the same customer."""
    tied = transactions.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)
    return set(transactions.loc[tied, "TRANSACTION_ID"].astype(str))


@pytest.fixture(scope="module")
def compared(streamed_span) -> pd.DataFrame:
    reference = pd.read_parquet(streamed_span.settings.data_dir / REFERENCE_FILE)
    reference["transaction_id"] = reference["TRANSACTION_ID"].astype(str)
    offline = read_offline_features(streamed_span)
    days = offline["dt"].astype(str)
    offline = offline[(days >= "2018-07-25") & (days <= "2018-08-14")]
    return reference.merge(
        offline,
        on="transaction_id",
        how="outer",
        suffixes=("_ref", ""),
        indicator=True,
    )


def test_features_job_writes_one_row_per_transaction(streamed_span, compared):
    offline = read_offline_features(streamed_span)
    assert offline["transaction_id"].is_unique
    assert len(offline) == streamed_span.replayed
    assert (compared["_merge"] == "both").all(), compared["_merge"].value_counts()


def test_features_job_matches_reference_except_ties(streamed_span, compared):
    ties = same_second_ties(streamed_span.transactions)
    differing: dict[str, list[str]] = {}
    for name in BASELINE_FEATURES:
        expected = compared[f"{name}_ref"].to_numpy(dtype=float)
        actual = compared[name].to_numpy(dtype=float)
        bad = ~np.isclose(actual, expected, rtol=1e-9, atol=1e-9)
        for transaction_id in compared.loc[bad, "transaction_id"]:
            differing.setdefault(transaction_id, []).append(name)

    unexplained = {tx: names for tx, names in differing.items() if tx not in ties}
    print(
        f"\n{len(differing)} rows differ, all with same-second ties: "
        f"{sorted(differing)}"
    )
    assert not unexplained, f"rows differing without a same-second tie: {unexplained}"
    assert len(differing) <= 50


def test_features_job_matches_reference_amounts(compared):
    np.testing.assert_array_equal(compared["TX_AMOUNT"], compared["TX_AMOUNT_ref"])


def test_features_job_velocity_matches_batch(streamed_span):
    # Both count same-millisecond transactions as peers, so ties must match too.
    differing = compare_with_batch(streamed_span, VELOCITY_FEATURES)
    assert differing.empty, differing.head(20)


def test_features_job_no_device_defaults(streamed_span):
    offline = read_offline_features(streamed_span)
    assert offline["device_id"].isna().all()
    assert (offline[list(DEVICE_FEATURES)] == NO_DEVICE_COUNT).all(axis=None)


def test_features_job_simulated_matches_batch(simulated_span):
    differing = compare_with_batch(simulated_span, MODEL_INPUTS)
    assert differing.empty, differing.head(20)


def test_features_job_simulated_covers_devices(simulated_span):
    offline = read_offline_features(simulated_span)
    with_device = offline["device_id"].notna()
    assert with_device.any()
    assert not with_device.all()
    assert offline["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"].max() > 1
    assert offline["DEVICE_ID_NB_TX_1DAY_WINDOW"].max() > 1


def read_changelog(settings) -> list[dict]:
    """Return every committed record of the run's online-store changelog."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"changelog-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.online_changelog_topic])
    records: list[dict] = []
    quiet_polls = 0
    try:
        while quiet_polls < 5:
            message = consumer.poll(1.0)
            if message is None:
                quiet_polls += 1
            elif message.error() is None:
                records.append(orjson.loads(message.value()))
                quiet_polls = 0
    finally:
        consumer.close()
    return records


def test_features_job_changelog_matches_encoding(simulated_span):
    frame = simulated_span.transactions
    event_ms = frame["TX_DATETIME"].to_numpy("datetime64[ms]").astype(np.int64)
    expected = []
    for row, ms in zip(frame.itertuples(index=False), event_ms.tolist(), strict=True):
        tx_id, customer = str(row.TRANSACTION_ID), str(row.CUSTOMER_ID)
        terminal = str(row.TERMINAL_ID)
        event = CustomerEvent(ms, tx_id, row.TX_AMOUNT, terminal)
        expected.append(encode_change("customer", customer, event))
        if not pd.isna(row.DEVICE_ID):
            device_event = DeviceEvent(ms, tx_id, customer)
            expected.append(encode_change("device", str(row.DEVICE_ID), device_event))
        label = TerminalLabel(ms + LABEL_DELAY_DAYS * MS_PER_DAY, tx_id, row.TX_FRAUD)
        expected.append(encode_change("terminal", terminal, label))

    records = read_changelog(simulated_span.settings)

    def canonical(record: dict) -> bytes:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)

    assert len(records) == len(expected)
    assert sorted(map(canonical, records)) == sorted(
        canonical(orjson.loads(change)) for change in expected
    )
