"""Recording of fraud labels: PostgreSQL first, then the labels topic.

A label is identified by its transaction and its source, so a review outcome
and a later chargeback of the same transaction are two labels. Sending the same
label again returns the recorded one and produces no event. Sending another
label or time for the same transaction and source is a conflict (409).
"""

from __future__ import annotations

import asyncio

from fraudcore.schema import LabelRecord
from fraudcore.timeutil import format_timestamp_ms, parse_timestamp_ms
from services.scorer.errors import (
    IdempotencyConflict,
    LabelStoreUnavailable,
    TransactionNotFound,
)
from services.scorer.feature_store import PG_FAILURES
from services.scorer.idempotency import ClaimUnavailable, StoredDecision
from services.scorer.runtime import Runtime
from services.scorer.schemas import LabelIn, LabelOut

INSERT_LABEL_SQL = """
INSERT INTO transaction_labels (transaction_id, source, fraud, label_ms)
VALUES (%s, %s, %s, %s)
ON CONFLICT (transaction_id, source) DO NOTHING
RETURNING transaction_id
"""
SELECT_LABEL_SQL = """
SELECT fraud, label_ms FROM transaction_labels
WHERE transaction_id = %s AND source = %s
"""


async def find_decision(runtime: Runtime, transaction_id: str) -> StoredDecision:
    """Return the stored decision of a transaction.

    Raises:
        TransactionNotFound: if this service never scored the transaction.
        LabelStoreUnavailable: if neither Redis nor PostgreSQL responded.
    """
    try:
        found = await runtime.decisions.find(transaction_id)
    except ClaimUnavailable:
        raise LabelStoreUnavailable(
            "the decision store did not respond, so the label was not recorded; "
            "retry later."
        ) from None
    if found is None:
        raise TransactionNotFound(
            f"transaction {transaction_id!r} was never scored here, so it cannot "
            "be labelled."
        )
    return found


async def insert_label(runtime: Runtime, label: LabelIn, label_ms: int) -> bool:
    """Insert the label; return False when the same label was recorded before.

    Raises:
        IdempotencyConflict: if another label or time is recorded for the same
            transaction and source.
        LabelStoreUnavailable: if PostgreSQL did not respond.
    """
    timeout = runtime.settings.pg_timeout_seconds
    key = (label.transaction_id, label.source)
    try:
        async with asyncio.timeout(timeout):
            async with runtime.pg_pool.connection(timeout=timeout) as conn:
                cursor = await conn.execute(
                    INSERT_LABEL_SQL, (*key, label.label, label_ms)
                )
                if await cursor.fetchone() is not None:
                    return True
                cursor = await conn.execute(SELECT_LABEL_SQL, key)
                recorded = await cursor.fetchone()
    except PG_FAILURES:
        raise LabelStoreUnavailable(
            "PostgreSQL did not respond, so the label was not recorded; retry later."
        ) from None
    if recorded is not None and tuple(recorded) == (label.label, label_ms):
        return False
    raise IdempotencyConflict(
        f"transaction {label.transaction_id!r} already has a different "
        f"{label.source} label; send the recorded label or another source."
    )


async def record_label(runtime: Runtime, label: LabelIn) -> LabelOut:
    """Record a label in PostgreSQL and, if it is new, publish it to Kafka."""
    decision = await find_decision(runtime, label.transaction_id)
    label_ms = parse_timestamp_ms(label.time)
    created = await insert_label(runtime, label, label_ms)
    if created:
        runtime.events.publish_label(
            LabelRecord(
                transaction_id=decision.transaction_id,
                customer_id=decision.customer_id,
                terminal_id=decision.terminal_id,
                transaction_timestamp=format_timestamp_ms(decision.transaction_ms),
                label_timestamp=format_timestamp_ms(label_ms),
                fraud=label.label,
            )
        )
    runtime.metrics.label_requests.labels(
        source=label.source, outcome="created" if created else "repeated"
    ).inc()
    return LabelOut(
        transaction_id=label.transaction_id,
        label=label.label,
        time=label.time,
        source=label.source,
        created=created,
    )
