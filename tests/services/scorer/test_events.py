"""Kafka events: their content, and a broker that is down and then up.

The outage is a TCP proxy of the test in front of the shared broker: the scorer
bootstraps through the proxy, which refuses connections until the test starts
it. The broker itself keeps running for everyone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from fraudcore.schema import TransactionRecord, encode
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import (
    KafkaTopics,
    SeededStores,
    ServedScorer,
    TcpProxy,
    consume,
    unique_transaction,
)

pytestmark = pytest.mark.integration

DECISION_FIELDS = {
    "transaction_id",
    "model_version",
    "probability",
    "decision",
    "rules",
    "reasons",
    "feature_source",
    "degraded",
    "decided_at",
}


@pytest.fixture
def kafka_proxy(kafka_bootstrap: str) -> Iterator[TcpProxy]:
    """A proxy to the shared broker, not started: the broker looks down."""
    host, _, port = kafka_bootstrap.rpartition(":")
    proxy = TcpProxy((host, int(port)))
    yield proxy
    proxy.stop()


def messages_of(
    topics: KafkaTopics, topic: str, ids: set[str], timeout: float = 30.0
) -> list[tuple[bytes, bytes, int]]:
    """Consume ``topic`` and keep the messages of the given transaction ids.

    Waits for one message per id, and a second more for duplicates.
    """
    return consume(
        topics.bootstrap,
        topic,
        len(ids),
        timeout_seconds=timeout,
        keep=lambda value: orjson.loads(value)["transaction_id"] in ids,
    )


def wait_for_backlog(served: ServedScorer, expected: int) -> int:
    deadline = time.monotonic() + 30
    while served.runtime.events.backlog() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return served.runtime.events.backlog()


def test_events_carry_records_keys_and_times(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    kafka_topics: KafkaTopics,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings.model_copy(update=kafka_topics.settings_update()))
    body = unique_transaction(stores)
    response = served.decision(body)
    record = TransactionRecord.model_validate(body)

    assert wait_for_backlog(served, 0) == 0
    ids = {record.transaction_id}
    transactions = messages_of(kafka_topics, kafka_topics.transactions, ids)
    decisions = messages_of(kafka_topics, kafka_topics.decisions, ids)

    assert transactions == [
        (record.customer_id.encode(), encode(record), record.event_ms)
    ]
    assert len(decisions) == 1
    key, value, _ = decisions[0]
    decision = orjson.loads(value)
    assert key == record.transaction_id.encode()
    assert set(decision) == DECISION_FIELDS
    assert decision == {name: response[name] for name in DECISION_FIELDS}


def test_backlog_delivered_after_broker_returns(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    kafka_topics: KafkaTopics,
    kafka_proxy: TcpProxy,
    stores: SeededStores,
) -> None:
    update = kafka_topics.settings_update() | {"kafka_bootstrap": kafka_proxy.address}
    served = run_scorer(live_settings.model_copy(update=update))
    bodies = [unique_transaction(stores) for _ in range(20)]

    statuses = [served.score(body).status_code for body in bodies]
    backlog_while_down = served.runtime.events.backlog()
    kafka_proxy.start()
    backlog_after = wait_for_backlog(served, 0)

    assert statuses == [200] * 20
    assert backlog_while_down == 40
    assert backlog_after == 0
    ids = {str(body["transaction_id"]) for body in bodies}
    transactions = messages_of(kafka_topics, kafka_topics.transactions, ids)
    decisions = messages_of(kafka_topics, kafka_topics.decisions, ids)
    assert sorted(orjson.loads(v)["transaction_id"] for _, v, _ in transactions) == (
        sorted(ids)
    )
    assert len(decisions) == 20
    metrics = served.client.get("/metrics").text
    assert "fraud_score_kafka_backlog_messages 0.0" in metrics


def test_full_buffer_drops_and_counts(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    kafka_proxy: TcpProxy,
    stores: SeededStores,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = live_settings.model_copy(
        update={"kafka_bootstrap": kafka_proxy.address, "kafka_buffer_messages": 6}
    )
    served = run_scorer(settings)
    caplog.set_level(logging.WARNING, logger="services.scorer.events")

    statuses = [served.score(unique_transaction(stores)).status_code for _ in range(5)]
    metrics = served.client.get("/metrics").text

    assert statuses == [200] * 5
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("fraud_score_events_total") and 'outcome="dropped"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in dropped) == 4.0
    assert 'fraud_score_errors_total{kind="kafka_buffer_full"} 4.0' in metrics
    assert "kafka buffer full (6 messages)" in caplog.text
