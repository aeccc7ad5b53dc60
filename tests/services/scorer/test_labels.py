"""POST /labels: lookups of the scored transaction, Kafka and idempotency."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import psycopg
import pytest

from fraudcore.schema import decode_label
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import (
    KafkaTopics,
    SeededStores,
    ServedScorer,
    closed_port,
    consume,
    unique_transaction,
)

pytestmark = pytest.mark.integration

LABEL_TIME = "2024-04-13T10:42:03.456Z"


def label_body(transaction_id: str, **changes: object) -> dict[str, object]:
    return {"transaction_id": transaction_id, "label": 1, "time": LABEL_TIME} | changes


def label_rows(dsn: str, transaction_id: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT source, fraud, label_ms FROM transaction_labels "
            "WHERE transaction_id = %s ORDER BY source",
            (transaction_id,),
        ).fetchall()


@pytest.fixture
def kafka_scorer(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    kafka_topics: KafkaTopics,
) -> ServedScorer:
    return run_scorer(live_settings.model_copy(update=kafka_topics.settings_update()))


def test_label_published_once_with_transaction_fields(
    kafka_scorer: ServedScorer, kafka_topics: KafkaTopics, stores: SeededStores
) -> None:
    body = unique_transaction(stores)
    transaction_id = str(body["transaction_id"])
    kafka_scorer.score(body)

    first = kafka_scorer.client.post("/labels", json=label_body(transaction_id))
    again = kafka_scorer.client.post("/labels", json=label_body(transaction_id))

    assert first.status_code == 200
    assert first.json() == label_body(transaction_id) | {
        "source": "chargeback",
        "created": True,
    }
    assert again.status_code == 200
    assert again.json()["created"] is False
    deadline = time.monotonic() + 30
    while kafka_scorer.runtime.events.backlog() and time.monotonic() < deadline:
        time.sleep(0.05)
    messages = [
        m
        for m in consume(kafka_topics.bootstrap, kafka_topics.labels, 1)
        if orjson.loads(m[1])["transaction_id"] == transaction_id
    ]
    assert len(messages) == 1
    key, value, timestamp = messages[0]
    label = decode_label(value)
    assert key == stores.terminal_id.encode()
    assert label.customer_id == stores.customer_id
    assert label.terminal_id == stores.terminal_id
    assert label.transaction_timestamp == body["timestamp"]
    assert label.label_timestamp == LABEL_TIME
    assert label.fraud == 1
    assert timestamp == label.event_ms
    assert label_rows(stores.dsn, transaction_id) == [("chargeback", 1, label.event_ms)]


def test_review_and_chargeback_are_two_labels(
    kafka_scorer: ServedScorer, stores: SeededStores
) -> None:
    body = unique_transaction(stores)
    transaction_id = str(body["transaction_id"])
    kafka_scorer.score(body)

    review = kafka_scorer.client.post(
        "/labels", json=label_body(transaction_id, label=0, source="review")
    )
    chargeback = kafka_scorer.client.post("/labels", json=label_body(transaction_id))

    assert review.json()["created"] is True
    assert chargeback.json()["created"] is True
    sources = [row[:2] for row in label_rows(stores.dsn, transaction_id)]
    assert sources == [("chargeback", 1), ("review", 0)]


def test_changed_label_conflicts(
    kafka_scorer: ServedScorer, stores: SeededStores
) -> None:
    body = unique_transaction(stores)
    transaction_id = str(body["transaction_id"])
    kafka_scorer.score(body)
    kafka_scorer.client.post("/labels", json=label_body(transaction_id))

    response = kafka_scorer.client.post(
        "/labels", json=label_body(transaction_id, label=0)
    )

    assert response.status_code == 409
    assert "already has a different chargeback label" in response.json()["detail"]


def test_unknown_transaction_returns_404(kafka_scorer: ServedScorer) -> None:
    response = kafka_scorer.client.post("/labels", json=label_body("never-scored"))

    assert response.status_code == 404
    assert response.json() == {
        "detail": "transaction 'never-scored' was never scored here, so it cannot "
        "be labelled."
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"label": 2}, "field 'label'"),
        ({"label": True}, "field 'label'"),
        ({"time": "soon"}, "ISO-8601"),
        ({"source": "guess"}, "field 'source'"),
        ({"reason": "x"}, "field 'reason'"),
    ],
)
def test_invalid_label_rejected(
    kafka_scorer: ServedScorer, changes: dict[str, object], expected: str
) -> None:
    response = kafka_scorer.client.post("/labels", json=label_body("t", **changes))

    assert response.status_code == 422
    assert expected in response.json()["detail"]


def test_label_found_in_postgres_after_redis_loss(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    body = unique_transaction(stores)
    transaction_id = str(body["transaction_id"])
    run_scorer(live_settings).score(body)
    deadline = time.monotonic() + 10
    with psycopg.connect(stores.dsn, autocommit=True) as conn:
        while (
            time.monotonic() < deadline
            and not conn.execute(
                "SELECT 1 FROM scored_transactions WHERE transaction_id = %s",
                (transaction_id,),
            ).fetchone()
        ):
            time.sleep(0.05)
    closed = f"redis://127.0.0.1:{closed_port()}/0"
    later = run_scorer(live_settings.model_copy(update={"redis_url": closed}))

    response = later.client.post("/labels", json=label_body(transaction_id))

    assert response.status_code == 200
    assert label_rows(stores.dsn, transaction_id)[0][:2] == ("chargeback", 1)
