"""Repeated transaction ids: replays, conflicts and one event and row per id."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fraudcore.schema import TransactionRecord
from services.scorer.idempotency import (
    DecisionWriter,
    StoredDecision,
    decision_key,
    pending_marker,
    request_digest,
)
from services.scorer.metrics import ScorerMetrics
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


@pytest.fixture
def kafka_settings(
    live_settings: ScorerSettings, kafka_topics: KafkaTopics
) -> ScorerSettings:
    """Live settings producing to this module's topics."""
    return live_settings.model_copy(update=kafka_topics.settings_update())


def stored_rows(dsn: str, transaction_id: str, wait_seconds: float = 5.0) -> int:
    """Count the durable rows of a transaction once the writer had time to write."""
    deadline = time.monotonic() + wait_seconds
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            count = conn.execute(
                "SELECT count(*) FROM scored_transactions WHERE transaction_id = %s",
                (transaction_id,),
            ).fetchone()
            if (count and count[0]) or time.monotonic() > deadline:
                return int(count[0]) if count else 0
            time.sleep(0.05)


def decision_lines(caplog: pytest.LogCaptureFixture, transaction_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.endswith("decisions") and transaction_id in r.getMessage()
    ]


def test_same_body_replays_stored_decision(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    kafka_settings: ScorerSettings,
    kafka_topics: KafkaTopics,
    stores: SeededStores,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.scorer.decisions")
    served = run_scorer(kafka_settings)
    body = unique_transaction(stores)
    transaction_id = str(body["transaction_id"])

    first = served.score(body)
    # The same transaction spelled with aliases and reordered keys.
    aliased = {k: v for k, v in reversed(body.items()) if k != "customer_id"}
    aliased["user_id"] = body["customer_id"]
    second = served.score(aliased)

    assert first.status_code == 200
    assert second.status_code == 200
    assert second.content == first.content
    assert len(decision_lines(caplog, transaction_id)) == 1
    assert stored_rows(stores.dsn, transaction_id) == 1
    transactions = consume(kafka_topics.bootstrap, kafka_topics.transactions, 1)
    decisions = consume(kafka_topics.bootstrap, kafka_topics.decisions, 1)
    assert [v for _, v, _ in transactions if transaction_id.encode() in v] != []
    assert len([v for _, v, _ in transactions if transaction_id.encode() in v]) == 1
    assert len([v for _, v, _ in decisions if transaction_id.encode() in v]) == 1
    metrics = served.client.get("/metrics").text
    assert "fraud_score_idempotent_replays_total 1.0" in metrics


def test_different_body_conflicts(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings)
    body = unique_transaction(stores)

    served.score(body)
    response = served.score(body | {"amount": 999.0})

    assert response.status_code == 409
    detail = response.json()["detail"]
    assert detail == (
        f"transaction {body['transaction_id']!r} was already scored with a "
        "different body; send the same body or a new transaction_id."
    )


def test_concurrent_duplicates_store_one_decision(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.scorer.decisions")
    served = run_scorer(live_settings)
    body = unique_transaction(stores)

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{served.base_url}/score", json=body, timeout=10)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))

    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert len(decision_lines(caplog, str(body["transaction_id"]))) == 1
    assert stored_rows(stores.dsn, str(body["transaction_id"])) == 1


def test_postgres_claims_when_redis_down(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    closed = f"redis://127.0.0.1:{closed_port()}/0"
    served = run_scorer(live_settings.model_copy(update={"redis_url": closed}))
    body = unique_transaction(stores)

    first = served.score(body)
    second = served.score(body)
    conflict = served.score(body | {"amount": 1.0})

    assert first.status_code == 200
    assert first.json()["feature_source"] == "postgres"
    assert json.loads(second.content) == json.loads(first.content)
    assert conflict.status_code == 409
    assert stored_rows(stores.dsn, str(body["transaction_id"])) == 1


def test_writer_copies_redis_claims_to_postgres(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings)
    body = unique_transaction(stores)

    response = served.decision(body)

    assert stored_rows(stores.dsn, str(body["transaction_id"])) == 1
    with psycopg.connect(stores.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT customer_id, terminal_id, decision, response::text "
            "FROM scored_transactions WHERE transaction_id = %s",
            (body["transaction_id"],),
        ).fetchone()
    assert row is not None
    assert row[:3] == (stores.customer_id, stores.terminal_id, response["decision"])
    assert json.loads(row[3]) == response


def write_marker(stores: SeededStores, transaction_id: str, marker: bytes) -> None:
    """Put another request's pending marker in Redis, as its lookup would."""
    stores.redis.set(decision_key(stores.prefix, transaction_id), marker, ex=60)


def test_stale_marker_is_taken_over(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings)
    body = unique_transaction(stores)
    digest = request_digest(TransactionRecord.model_validate(body))
    write_marker(stores, str(body["transaction_id"]), pending_marker(digest, 1))

    response = served.score(body)

    assert response.status_code == 200
    assert stored_rows(stores.dsn, str(body["transaction_id"])) == 1


def test_fresh_marker_of_other_body_conflicts(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings)
    body = unique_transaction(stores)
    now_ms = time.time_ns() // 1_000_000
    write_marker(stores, str(body["transaction_id"]), pending_marker("0" * 64, now_ms))

    response = served.score(body)

    assert response.status_code == 409
    assert "already scored with a different body" in response.json()["detail"]


def test_fresh_marker_of_same_body_times_out(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings.model_copy(update={"request_deadline_ms": 50.0}))
    body = unique_transaction(stores)
    digest = request_digest(TransactionRecord.model_validate(body))
    now_ms = time.time_ns() // 1_000_000
    write_marker(stores, str(body["transaction_id"]), pending_marker(digest, now_ms))

    response = served.score(body)

    assert response.status_code == 409
    assert "still being scored by an earlier request" in response.json()["detail"]


def stored_decision(
    transaction_id: str, shadows: tuple[str, ...] = ()
) -> StoredDecision:
    response = {"transaction_id": transaction_id, "decision": "allow"}
    return StoredDecision(
        transaction_id=transaction_id,
        request_sha256="0" * 64,
        customer_id="c",
        terminal_id="t",
        transaction_ms=1_712_400_000_000,
        model_version="v1",
        probability=0.25,
        decision="allow",
        response=json.dumps(response).encode(),
        decided_at="2024-04-06T10:40:00.123Z",
        shadow_versions=shadows,
    )


def test_writer_counts_written_and_duplicate_rows(stores: SeededStores) -> None:
    metrics = ScorerMetrics()
    run_id = uuid.uuid4().hex[:8]
    first, second = f"w-{run_id}-1", f"w-{run_id}-2"

    async def write_twice() -> tuple[bool, bool]:
        async with AsyncConnectionPool(stores.dsn, open=False) as pool:
            writer = DecisionWriter(pool, max_rows=10, metrics=metrics)
            writer.add(stored_decision(first))
            written_first = await writer.flush_batch()
            writer.add(stored_decision(first))
            writer.add(stored_decision(second, shadows=("v2", "v3")))
            written_second = await writer.flush_batch()
            assert writer.backlog() == 0
            return written_first, written_second

    flushed = asyncio.run(write_twice())

    assert flushed == (True, True)
    written = metrics.registry.get_sample_value(
        "fraud_score_decision_rows_total", {"outcome": "written"}
    )
    duplicate = metrics.registry.get_sample_value(
        "fraud_score_decision_rows_total", {"outcome": "duplicate"}
    )
    assert written == 2.0
    assert duplicate == 1.0
    with psycopg.connect(stores.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shadow_versions, response->>'decision', decided_at "
            "FROM scored_transactions WHERE transaction_id = %s",
            (second,),
        ).fetchone()
    assert row is not None
    assert row[0] == ["v2", "v3"]
    assert row[1] == "allow"
    assert row[2].isoformat() == "2024-04-06T10:40:00.123000+00:00"
