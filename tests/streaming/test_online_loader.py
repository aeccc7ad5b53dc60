"""The online-store writer and the changelog loader, on the real servers."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from deploy import stack
from fraudcore.features import (
    STATE_RETENTION_MS,
    CustomerEvent,
    DeviceEvent,
    TerminalLabel,
)
from fraudcore.settings import PlatformSettings
from fraudcore.store import customer_key, device_key, terminal_key
from streaming.online_loader import LoaderSettings, OnlineLoader, start_in_thread
from streaming.online_writer import (
    OnlineStoreWriter,
    apply_change,
    encode_change,
    ensure_schema,
)
from tests.conftest import created_database
from tests.services.scorer.conftest import TcpProxy

DAY_MS = 86_400_000
START_MS = 1_530_000_000_000

Change = tuple[str, str, CustomerEvent | TerminalLabel]


def make_changes(count: int, seed: int) -> list[Change]:
    """Changes of a few customers, terminals and devices over 60 days.

    The span exceeds the retention, so trimming drops some of them.
    """
    rng = random.Random(seed)
    changes: list[Change] = []
    for i in range(count):
        ms = START_MS + rng.randrange(60 * DAY_MS)
        if i % 2:
            amount = round(rng.uniform(1, 300), 2)
            event = CustomerEvent(ms, f"tx-{i}", amount, f"t{rng.randrange(5)}")
            changes.append(("customer", f"c{rng.randrange(5)}", event))
        elif i % 3 == 0:
            device = DeviceEvent(ms, f"tx-{i}", f"c{rng.randrange(5)}")
            changes.append(("device", f"d{rng.randrange(5)}", device))
        else:
            label = TerminalLabel(ms, f"tx-{i}", rng.randrange(2))
            changes.append(("terminal", f"t{rng.randrange(5)}", label))
    return changes


@pytest.fixture
def namespace(
    test_settings: PlatformSettings, base_settings: PlatformSettings
) -> Iterator[PlatformSettings]:
    """Settings with a Redis prefix, changelog topic and database of this test."""
    run = uuid.uuid4().hex[:8]
    with created_database(base_settings, f"fraud_test_writer_{run}") as dsn:
        settings = test_settings.model_copy(
            update={
                "pg_dsn": dsn,
                "redis_prefix": f"{test_settings.redis_prefix}-writer-{run}",
                "online_changelog_topic": f"{test_settings.redis_prefix}-changes-{run}",
            }
        )
        ensure_schema(settings.pg_dsn)
        yield settings
        stack.delete_redis_keys(settings)


def redis_contents(settings: PlatformSettings) -> dict[str, list[tuple[bytes, float]]]:
    client = redis.Redis.from_url(settings.redis_url)
    keys = [customer_key(settings.redis_prefix, f"c{i}") for i in range(5)]
    keys += [terminal_key(settings.redis_prefix, f"t{i}") for i in range(5)]
    keys += [device_key(settings.redis_prefix, f"d{i}") for i in range(5)]
    contents = {key: client.zrange(key, 0, -1, withscores=True) for key in keys}
    client.close()
    return contents


def postgres_contents(settings: PlatformSettings) -> list[list[tuple]]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return [
            conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
            for table in ("customer_events", "terminal_labels", "device_events")
        ]


def write(settings: PlatformSettings, changes: list[Change], batch: int) -> None:
    writer = OnlineStoreWriter(
        settings.redis_url, settings.pg_dsn, settings.redis_prefix
    )
    for start in range(0, len(changes), batch):
        for kind, key, event in changes[start : start + batch]:
            apply_change(writer, encode_change(kind, key, event))
        writer.flush()
    writer.close()


def clear(settings: PlatformSettings) -> None:
    stack.delete_redis_keys(settings)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE customer_events, terminal_labels")


@pytest.mark.integration
def test_repeated_reordered_writes_same_store(
    namespace: PlatformSettings,
) -> None:
    changes = make_changes(600, seed=1)
    write(namespace, sorted(changes, key=lambda change: change[2][0]), batch=50)
    in_order = redis_contents(namespace), postgres_contents(namespace)
    clear(namespace)

    shuffled = changes + changes[:200]
    random.Random(2).shuffle(shuffled)
    write(namespace, shuffled, batch=37)

    assert (redis_contents(namespace), postgres_contents(namespace)) == in_order
    for members in in_order[0].values():
        scores = [score for _, score in members]
        assert min(scores) >= max(scores) - STATE_RETENTION_MS
    # The 60-day span exceeds the retention, so trimming dropped some events.
    assert sum(len(members) for members in in_order[0].values()) < len(changes)


def test_malformed_change_is_rejected() -> None:
    class NoWrites:
        def add_customer_event(self, *args: object) -> None:
            raise AssertionError("a malformed change was queued")

        add_terminal_label = add_customer_event

    for raw in (
        b"{not json",
        b'{"kind": "customer"}',
        b'{"kind": "x", "key": "k", "event": []}',
    ):
        with pytest.raises(ValueError, match="change"):
            apply_change(NoWrites(), raw)  # type: ignore[arg-type]


@pytest.mark.integration
def test_loader_applies_only_committed_changes(namespace: PlatformSettings) -> None:
    topic = namespace.online_changelog_topic
    admin = AdminClient({"bootstrap.servers": namespace.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    committed = make_changes(400, seed=3)
    aborted = [("customer", "c0", CustomerEvent(START_MS, "tx-aborted", 9.0, "t0"))]
    producer = Producer(
        {
            "bootstrap.servers": namespace.kafka_bootstrap,
            "transactional.id": f"{topic}-test",
        }
    )
    producer.init_transactions(30)
    for changes, commit in ((committed, True), (aborted, False)):
        producer.begin_transaction()
        for kind, key, event in changes:
            producer.produce(topic, encode_change(kind, key, event).encode())
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    loader = OnlineLoader(
        LoaderSettings(**namespace.model_dump(), loader_batch_size=64)
    )
    loader.drain()
    stats = loader.run()

    applied = redis_contents(namespace), postgres_contents(namespace)
    clear(namespace)
    write(namespace, committed, batch=100)
    assert stats.applied == len(committed)
    assert applied == (redis_contents(namespace), postgres_contents(namespace))
    admin.delete_topics([topic])[topic].result(timeout=30)


@pytest.mark.integration
def test_loader_retries_until_redis_returns(namespace: PlatformSettings) -> None:
    topic = namespace.online_changelog_topic
    admin = AdminClient({"bootstrap.servers": namespace.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    changes = make_changes(300, seed=4)
    producer = Producer({"bootstrap.servers": namespace.kafka_bootstrap})
    for kind, key, event in changes:
        producer.produce(topic, encode_change(kind, key, event).encode())
    assert producer.flush(30) == 0
    redis_address = urlsplit(namespace.redis_url)
    proxy = TcpProxy((redis_address.hostname or "", redis_address.port or 6379))
    settings = LoaderSettings(
        **namespace.model_dump()
        | {"redis_url": f"redis://{proxy.address}/0", "loader_retry_seconds": 0.2}
    )

    loader, thread = start_in_thread(settings)
    loader.drain()
    deadline = time.monotonic() + 30
    while loader.stats.retries == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.start()
    thread.join(timeout=60)
    proxy.stop()

    applied = redis_contents(namespace), postgres_contents(namespace)
    clear(namespace)
    write(namespace, changes, batch=100)
    assert not thread.is_alive()
    assert loader.error is None
    assert loader.stats.retries >= 1
    assert applied == (redis_contents(namespace), postgres_contents(namespace))
    admin.delete_topics([topic])[topic].result(timeout=30)
