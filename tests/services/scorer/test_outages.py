"""Dependency outages: Redis and PostgreSQL stopped and started under a live scorer.

Redis is a redis-server this test starts on its own port. PostgreSQL is the
shared server behind a TCP proxy of the test, which the test cuts and restores.
The shared servers themselves are never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from fraudcore.features import CustomerEvent
from fraudcore.timeutil import parse_timestamp_ms
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import (
    PrivateRedis,
    SeededStores,
    ServedScorer,
    TcpProxy,
    closed_port,
    hung_store_settings,
    unique_transaction,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_proxy(store_dsn: str) -> Iterator[TcpProxy]:
    """A started proxy in front of the shared PostgreSQL."""
    parts = urlsplit(store_dsn)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.start()
    yield proxy
    proxy.stop()


def proxied_dsn(dsn: str, proxy: TcpProxy) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.replace(f":{parts.port}", f":{proxy.port}")
    return parts._replace(netloc=netloc).geturl()


def earlier_events(body: dict[str, object]) -> list[CustomerEvent]:
    event_ms = parse_timestamp_ms(str(body["timestamp"]))
    return [CustomerEvent(event_ms - 60_000, "earlier", 10.0, "terminal-earlier")]


def seed_private_redis(
    private_redis: PrivateRedis, stores: SeededStores, body: dict[str, object]
) -> None:
    """Seed the private Redis with one earlier event of the body's customer."""
    client = redis.Redis.from_url(private_redis.url)
    seeded = SeededStores(
        stores.prefix,
        stores.customer_id,
        stores.terminal_id,
        stores.device_id,
        client,
        stores.dsn,
    )
    seeded.seed_redis(earlier_events(body), [])
    client.close()


def test_redis_and_postgres_outage_and_recovery(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
    private_redis: PrivateRedis,
    pg_proxy: TcpProxy,
) -> None:
    settings = live_settings.model_copy(
        update={
            "redis_url": private_redis.url,
            "pg_dsn": proxied_dsn(stores.dsn, pg_proxy),
            "return_features": False,
        }
    )
    first = unique_transaction(stores)
    stores.seed_postgres(earlier_events(first), [])
    seed_private_redis(private_redis, stores, first)
    served = run_scorer(settings)
    sources = {}

    sources["both up"] = served.decision(first)["feature_source"]
    private_redis.stop()
    redis_down = served.score(unique_transaction(stores))
    sources["redis down"] = redis_down.json()["feature_source"]
    pg_proxy.stop()
    both_down = served.score(unique_transaction(stores))
    ready_down = served.client.get("/readyz")
    private_redis.start()
    pg_proxy.start()
    recovery = recover(served, stores, private_redis)
    ready_up = served.client.get("/readyz")

    assert sources == {"both up": "redis", "redis down": "postgres"}
    assert redis_down.status_code == 200
    assert both_down.status_code == 200
    payload = both_down.json()
    assert payload["feature_source"] == "default"
    assert payload["degraded"] is True
    assert payload["decision"] in {"review", "block"}
    assert ready_down.status_code == 503
    assert ready_down.json()["reason"] == "neither Redis nor PostgreSQL responds."
    assert {r.status_code for r in recovery} == {200}
    assert recovery[-1].json()["feature_source"] == "redis"
    assert ready_up.status_code == 200
    metrics = served.client.get("/metrics").text
    assert "fraud_score_degraded_total" in metrics


def recover(
    served: ServedScorer, stores: SeededStores, private_redis: PrivateRedis
) -> list[httpx.Response]:
    """Score until features come from the restarted Redis again, for up to 20 s.

    The restarted Redis is empty, so it is seeded again first. Every response
    on the way is returned, so the caller can check that none failed.
    """
    responses = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = unique_transaction(stores)
        seed_private_redis(private_redis, stores, body)
        responses.append(served.score(body))
        if responses[-1].json().get("feature_source") == "redis":
            break
        time.sleep(0.1)
    return responses


@pytest.mark.parametrize(
    ("policy", "expected"), [("allow", "allow"), ("block", "block")]
)
def test_degraded_policy_setting(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: object,
    policy: str,
    expected: str,
) -> None:
    settings = offline_settings.model_copy(
        update={
            "degraded_decision": policy,
            "review_threshold": 1.0,
            "block_threshold": 1.0,
        }
    )
    served = run_scorer(settings)
    served.runtime.install(served_model)  # type: ignore[arg-type]

    payload = served.decision(
        {
            "transaction_id": "t-1",
            "customer_id": "c",
            "terminal_id": "t",
            "amount": 1.0,
            "timestamp": "2024-04-06T10:00:00Z",
        }
    )

    assert payload["degraded"] is True
    assert payload["decision"] == expected


def test_deadline_bounds_hung_stores(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: object,
    silent_port: int,
) -> None:
    # Both stores hang and their own timeouts are far longer than the client's,
    # so only the request deadline lets the response arrive.
    settings = hung_store_settings(
        offline_settings,
        silent_port,
        redis_timeout_seconds=30.0,
        pg_timeout_seconds=30.0,
        request_deadline_ms=200.0,
    )
    served = run_scorer(settings)
    served.runtime.install(served_model)  # type: ignore[arg-type]
    served.client.timeout = 5.0

    response = served.score(
        {
            "transaction_id": "t-2",
            "customer_id": "c",
            "terminal_id": "t",
            "amount": 1.0,
            "timestamp": "2024-04-06T10:00:00Z",
        }
    )

    assert response.status_code == 200
    assert response.json()["feature_source"] == "default"
    metrics = served.client.get("/metrics").text
    assert 'fraud_score_errors_total{kind="redis_unavailable"} 1.0' in metrics


def test_closed_kafka_does_not_block(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    settings = live_settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{closed_port()}"}
    )
    served = run_scorer(settings)

    responses = [served.score(unique_transaction(stores)) for _ in range(5)]

    assert [r.status_code for r in responses] == [200] * 5
    assert served.runtime.events.backlog() == 10
