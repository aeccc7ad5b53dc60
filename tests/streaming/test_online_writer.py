"""The online-store writer and its schema check, on the real Redis and PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

from fraudcore.features import CustomerEvent, DeviceEvent, TerminalLabel
from fraudcore.store import (
    customer_key,
    decode_customer_members,
    decode_device_members,
    device_key,
)
from streaming.online_writer import OnlineStoreWriter, StoreSchemaError, ensure_schema
from tests.conftest import created_database

pytestmark = pytest.mark.integration

# customer_events as it was before the terminal id joined it.
OLD_CUSTOMER_EVENTS = """
CREATE TABLE customer_events (
    customer_id    text             NOT NULL,
    event_ms       bigint           NOT NULL,
    transaction_id text             NOT NULL,
    amount         double precision NOT NULL,
    PRIMARY KEY (customer_id, event_ms, transaction_id)
)
"""


def test_ensure_schema_rejects_old_customer_table(base_settings, run_id):
    with created_database(base_settings, f"fraud_test_{run_id}_old") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(OLD_CUSTOMER_EVENTS)

        with pytest.raises(StoreSchemaError) as raised:
            ensure_schema(dsn)

    message = str(raised.value)
    assert "table customer_events has columns" in message
    assert "'amount'], expected" in message
    assert "'amount', 'terminal_id']" in message
    assert "Drop it" in message


def test_ensure_schema_accepts_current_tables(pg_dsn):
    ensure_schema(pg_dsn)
    ensure_schema(pg_dsn)


def test_writer_round_trip_is_idempotent(pg_dsn, redis_url):
    ensure_schema(pg_dsn)
    run = uuid.uuid4().hex[:10]
    prefix = f"writer-test-{run}"
    customer, device = f"customer-{run}", f"device-{run}"
    events = [
        CustomerEvent(1_000, "tx|1", 12.5, 'terminal "a"'),
        CustomerEvent(2_000, "tx-2", 7.0, "terminal|b"),
    ]
    devices = [DeviceEvent(1_000, "tx|1", customer), DeviceEvent(2_000, "tx-2", "c|2")]
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(2):
            writer = OnlineStoreWriter(redis_url, pg_dsn, prefix)
            for event, device_event in zip(events, devices, strict=True):
                writer.add_customer_event(customer, event)
                writer.add_device_event(device, device_event)
            writer.add_terminal_label("terminal-x", TerminalLabel(3_000, "tx-2", 1))
            writer.close()

        flat = client.zrange(customer_key(prefix, customer), 0, -1, withscores=True)
        stored = decode_customer_members([part for pair in flat for part in pair])
        flat = client.zrange(device_key(prefix, device), 0, -1, withscores=True)
        stored_devices = decode_device_members([part for pair in flat for part in pair])
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT event_ms, transaction_id, amount, terminal_id "
                "FROM customer_events WHERE customer_id = %s ORDER BY event_ms",
                [customer],
            ).fetchall()
            device_rows = conn.execute(
                "SELECT event_ms, transaction_id, customer_id "
                "FROM device_events WHERE device_id = %s ORDER BY event_ms",
                [device],
            ).fetchall()

        assert stored == [tuple(event) for event in events]
        assert stored_devices == [tuple(event) for event in devices]
        assert rows == [tuple(event) for event in events]
        assert device_rows == [tuple(event) for event in devices]
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM customer_events WHERE customer_id = %s", [customer]
            )
            conn.execute("DELETE FROM device_events WHERE device_id = %s", [device])
            conn.execute("DELETE FROM terminal_labels WHERE terminal_id = 'terminal-x'")
