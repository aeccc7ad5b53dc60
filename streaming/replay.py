"""Replays a span of the transactions file into Kafka, with delayed fraud labels.

Each transaction goes to the transactions topic keyed by customer, and its label
to the labels topic keyed by terminal, with the label's event time set to the
transaction time plus the label delay. Kafka record timestamps carry the event
times, which is what the feature job's watermarks follow. A ``DEVICE_ID`` column,
when the frame has one, becomes the transactions' ``device_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from confluent_kafka import KafkaException, Producer

from fraudcore.features import LABEL_DELAY_DAYS, WINDOW_DAYS
from fraudcore.schema import LabelRecord, TransactionRecord, encode
from fraudcore.settings import PlatformSettings
from fraudcore.timeutil import MS_PER_DAY, format_timestamp_ms

log = logging.getLogger(__name__)

# The chapter-3 split of the handbook trains from this day on.
FIRST_TRAINING_DAY = date(2018, 7, 25)
LAST_TEST_DAY = date(2018, 8, 14)

# Enough history for the terminal windows of the first training day: the longest
# window ends the label delay before the transaction.
DEFAULT_START = FIRST_TRAINING_DAY - timedelta(days=max(WINDOW_DAYS) + LABEL_DELAY_DAYS)
DEFAULT_END = LAST_TEST_DAY


@dataclass(frozen=True)
class ReplaySource:
    """Transactions to replay and where they came from."""

    frame: pd.DataFrame
    description: str


@dataclass(frozen=True)
class ReplayResult:
    """Counts of what one replay produced."""

    transactions: int
    labels: int
    first_day: date
    last_day: date


def load_source(path: Path, simulate_if_missing: bool = True) -> ReplaySource:
    """Read the transactions file, or simulate data of the same shape when absent.

    Raises:
        FileNotFoundError: if the file is missing and simulation is off.
    """
    if path.exists():
        frame = pd.read_parquet(path)
        return ReplaySource(frame, f"file {path} ({len(frame):,} rows)")
    if not simulate_if_missing:
        raise FileNotFoundError(f"transactions file {path} not found")
    from streaming.simulator import simulate_transactions

    frame = simulate_transactions()
    return ReplaySource(frame, f"simulator ({len(frame):,} rows; {path} not found)")


def select_span(frame: pd.DataFrame, first_day: date, last_day: date) -> pd.DataFrame:
    """Return the rows whose transaction day lies in ``[first_day, last_day]``."""
    day = frame["TX_DATETIME"].dt.date
    selected = frame[(day >= first_day) & (day <= last_day)]
    return selected.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")


def replay(
    settings: PlatformSettings,
    frame: pd.DataFrame,
    first_day: date = DEFAULT_START,
    last_day: date = DEFAULT_END,
) -> ReplayResult:
    """Produce the span's transactions and labels, then wait for every delivery.

    Raises:
        KafkaException: if a record could not be delivered.
    """
    span = select_span(frame, first_day, last_day)
    event_ms = (
        span["TX_DATETIME"].to_numpy("datetime64[ms]").astype(np.int64)
    ).tolist()
    producer = Producer(_producer_config(settings))
    failures: list[str] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    devices = _device_ids(span)
    columns = zip(
        span["TRANSACTION_ID"].tolist(),
        span["CUSTOMER_ID"].tolist(),
        span["TERMINAL_ID"].tolist(),
        span["TX_AMOUNT"].tolist(),
        span["TX_FRAUD"].tolist(),
        event_ms,
        devices,
        strict=True,
    )
    for count, (tx_id, customer, terminal, amount, fraud, ms, device) in enumerate(
        columns
    ):
        transaction, label = _records(
            tx_id, customer, terminal, amount, fraud, ms, device
        )
        _produce(producer, settings.transactions_topic, transaction, on_delivery)
        _produce(producer, settings.labels_topic, label, on_delivery)
        if count % 100_000 == 0 and count:
            log.info("replayed %d of %d transactions", count, len(span))
    remaining = producer.flush(120)
    if failures or remaining:
        raise KafkaException(
            f"{len(failures) + remaining} records were not delivered; first error: "
            f"{failures[0] if failures else 'flush timed out'}"
        )
    return ReplayResult(len(span), len(span), first_day, last_day)


def _device_ids(span: pd.DataFrame) -> list[str | None]:
    if "DEVICE_ID" not in span:
        return [None] * len(span)
    return [None if pd.isna(d) else str(d) for d in span["DEVICE_ID"].tolist()]


def _records(
    tx_id: int,
    customer: int,
    terminal: int,
    amount: float,
    fraud: int,
    ms: int,
    device: str | None,
) -> tuple[TransactionRecord, LabelRecord]:
    timestamp = format_timestamp_ms(ms)
    transaction = TransactionRecord(
        transaction_id=tx_id,
        customer_id=customer,
        terminal_id=terminal,
        amount=amount,
        timestamp=timestamp,
        device_id=device,
    )
    label = LabelRecord(
        transaction_id=tx_id,
        customer_id=customer,
        terminal_id=terminal,
        transaction_timestamp=timestamp,
        label_timestamp=format_timestamp_ms(ms + LABEL_DELAY_DAYS * MS_PER_DAY),
        fraud=fraud,
    )
    return transaction, label


def _produce(
    producer: Producer,
    topic: str,
    record: TransactionRecord | LabelRecord,
    on_delivery: object,
) -> None:
    key = (
        record.customer_id
        if isinstance(record, TransactionRecord)
        else record.terminal_id
    )
    while True:
        try:
            producer.produce(
                topic,
                value=encode(record),
                key=key.encode(),
                timestamp=record.event_ms,
                on_delivery=on_delivery,
            )
            return
        except BufferError:
            # The local queue is full: let deliveries drain it, then retry.
            producer.poll(0.5)


def _producer_config(settings: PlatformSettings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": 20,
        "queue.buffering.max.messages": 500_000,
    }
