"""Feature lookup paths: Redis, the PostgreSQL fallback and defaults.

Every path must give the features of the offline row, which is
``transaction_features`` over the key's whole history.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from fraudcore.features import (
    MODEL_INPUTS,
    NO_DEVICE_COUNT,
    CustomerEvent,
    DeviceEvent,
    TerminalLabel,
    transaction_features,
)
from fraudcore.store import (
    customer_key,
    device_key,
    encode_customer_member,
    terminal_key,
)
from fraudcore.timeutil import MS_PER_DAY, format_timestamp_ms
from services.scorer.clients import create_pg_pool, create_redis
from services.scorer.feature_store import HistoryLookup, HistoryQuery
from services.scorer.idempotency import PENDING_PREFIX, decision_key
from services.scorer.metrics import ScorerMetrics
from services.scorer.registry import ServedModel
from services.scorer.settings import ScorerSettings
from tests.services.scorer.conftest import SeededStores, ServedScorer, closed_port

EVENT_MS = 1_712_400_123_456  # 2024-04-06T10:42:03.456Z, a Saturday
AMOUNT = 84.25


def transaction_id(stores: SeededStores) -> str:
    """The id of the scored transaction: one per test, as decisions are kept."""
    return f"tx-current-{stores.customer_id}"


def make_history(
    stores: SeededStores,
) -> tuple[list[CustomerEvent], list[TerminalLabel]]:
    """Build a history around ``EVENT_MS`` with the window edges and ties covered."""
    current = transaction_id(stores)
    rng = random.Random(11)
    # Terminal ids with the member layout's separators and quotes in them.
    terminals = [stores.terminal_id, 'term|"1"', "t,2", "t]3"]
    events = [
        CustomerEvent(
            EVENT_MS - rng.randint(1, 40 * MS_PER_DAY),
            str(1000 + i),
            round(rng.uniform(1, 400), 2),
            rng.choice(terminals),
        )
        for i in range(80)
    ]
    window_start = EVENT_MS - 30 * MS_PER_DAY
    day_start = EVENT_MS - MS_PER_DAY
    events += [
        CustomerEvent(window_start, "edge-out", 11.0, "t-edge-out"),  # open window
        CustomerEvent(window_start + 1, "edge-in", 12.5, "t-edge-in"),
        CustomerEvent(day_start, "day-edge-out", 3.0, "t-day-out"),
        CustomerEvent(day_start + 1, "day-edge-in", 4.0, "t-day-in"),
        CustomerEvent(EVENT_MS, current, AMOUNT, stores.terminal_id),  # the request
        CustomerEvent(EVENT_MS, "9", 5.0, "t-tie-before"),  # same ms: a peer
        CustomerEvent(EVENT_MS, f"{current}-later", 7.0, "t-tie-after"),  # a peer
        CustomerEvent(EVENT_MS + 1_000, "2000", 99.0, "t-after"),  # after
    ]
    labels = [
        TerminalLabel(
            EVENT_MS - rng.randint(0, 40 * MS_PER_DAY), str(3000 + i), rng.randint(0, 1)
        )
        for i in range(60)
    ]
    labels += [
        TerminalLabel(window_start, "label-edge-out", 1),
        TerminalLabel(EVENT_MS + 1, "label-after", 1),
    ]
    return events, labels


def make_device_history(stores: SeededStores) -> list[DeviceEvent]:
    """Build device events from several customers, at the window edges and ties."""
    current = transaction_id(stores)
    rng = random.Random(12)
    events = [
        DeviceEvent(
            EVENT_MS - rng.randint(1, 10 * MS_PER_DAY),
            str(5000 + i),
            rng.choice([stores.customer_id, "c|1", 'c"2']),
        )
        for i in range(30)
    ]
    week_start = EVENT_MS - 7 * MS_PER_DAY
    events += [
        DeviceEvent(week_start, "week-edge-out", "c-week-out"),
        DeviceEvent(week_start + 1, "week-edge-in", "c-week-in"),
        DeviceEvent(EVENT_MS, current, stores.customer_id),  # the request itself
        DeviceEvent(EVENT_MS, "9", "c-tie-before"),  # same ms: a peer
        DeviceEvent(EVENT_MS, f"{current}-later", "c-tie-after"),  # a peer
        DeviceEvent(EVENT_MS + 1, "later", "c-after"),
    ]
    return events


def forget_redis(stores: SeededStores, timeout_seconds: float = 10.0) -> None:
    """Empty this test's Redis keys once the scorer has stored its decision.

    The scorer replaces its pending claim with the decision in the background.
    A flush before that write leaves the decision behind, so the next request
    with the same id would get it back as a replay.
    """
    key = decision_key(stores.prefix, transaction_id(stores))
    deadline = time.monotonic() + timeout_seconds
    while True:
        stored = stores.redis.get(key)
        if stored is not None and not stored.startswith(PENDING_PREFIX):
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_seconds} s waiting for decision {key}"
            )
        time.sleep(0.01)
    stores.flush_redis()


def redis_then_postgres(
    served: ServedScorer, stores: SeededStores, device: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the test's transaction with Redis, then again once Redis is empty."""
    from_redis = served.decision(request_body(stores, device))
    forget_redis(stores)
    return from_redis, served.decision(request_body(stores, device))


def request_body(stores: SeededStores, device: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "transaction_id": transaction_id(stores),
        "customer_id": stores.customer_id,
        "terminal_id": stores.terminal_id,
        "amount": AMOUNT,
        "timestamp": format_timestamp_ms(EVENT_MS),
    }
    if device:
        body["device_id"] = stores.device_id
    return body


def offline_features(
    stores: SeededStores,
    events: list[CustomerEvent],
    labels: list[TerminalLabel],
    devices: list[DeviceEvent] | None = None,
) -> dict[str, float]:
    return transaction_features(
        EVENT_MS,
        transaction_id(stores),
        AMOUNT,
        events,
        labels,
        customer_id=stores.customer_id,
        terminal_id=stores.terminal_id,
        device_id=None if devices is None else stores.device_id,
        device_history=devices or [],
    )


def test_query_covers_longest_window() -> None:
    query = HistoryQuery.for_transaction("c", "t", EVENT_MS)

    assert query.end_ms == EVENT_MS
    assert query.start_ms == EVENT_MS - 30 * MS_PER_DAY


def test_redis_timeout_falls_through_to_default(silent_port: int) -> None:
    settings = ScorerSettings(
        redis_url=f"redis://127.0.0.1:{silent_port}/0",
        pg_dsn=f"postgresql://fraud:fraud@127.0.0.1:{closed_port()}/fraud",
        redis_timeout_seconds=0.05,
        pg_timeout_seconds=0.1,
    )
    metrics = ScorerMetrics()

    async def lookup() -> tuple[str, float]:
        redis = create_redis(settings)
        pool = create_pg_pool(settings)
        await pool.open(wait=False)
        try:
            histories = HistoryLookup(redis, pool, "p", 0.05, 0.1, metrics)
            started = time.perf_counter()
            lookup = await histories.fetch(HistoryQuery("c", "t", 0, EVENT_MS))
            return lookup.source, time.perf_counter() - started
        finally:
            await redis.aclose()
            await pool.close()

    source, elapsed = asyncio.run(lookup())

    assert source == "default"
    # Both timeouts plus scheduling slack; without them the lookup would hang.
    assert elapsed < 1.0
    failures = metrics.errors.labels(kind="redis_unavailable")._value.get()
    assert failures == 1.0


@pytest.mark.integration
def test_busy_loop_still_reads_redis_reply(
    stores: SeededStores, redis_url: str
) -> None:
    events, labels = make_history(stores)
    stores.seed_redis(events, labels)
    settings = ScorerSettings(
        redis_url=redis_url,
        pg_dsn=f"postgresql://fraud:fraud@127.0.0.1:{closed_port()}/fraud",
    )
    metrics = ScorerMetrics()

    async def lookup() -> str:
        redis = create_redis(settings)
        pool = create_pg_pool(settings)
        await pool.open(wait=False)
        try:
            await redis.ping()
            histories = HistoryLookup(redis, pool, stores.prefix, 0.005, 0.1, metrics)
            query = HistoryQuery.for_transaction(
                stores.customer_id, stores.terminal_id, EVENT_MS
            )
            # The first lookup loads the script into Redis, so that the one
            # below is a single round trip.
            await histories.fetch(query)
            # Redis replies within a millisecond, but the loop is busy for
            # 30 ms, so the 5 ms budget is over before the reply can be read.
            # The server's loop is uvloop, whose libuv runs due timers before
            # it polls the sockets.
            asyncio.get_running_loop().call_soon(time.sleep, 0.03)
            return (await histories.fetch(query)).source
        finally:
            await redis.aclose()
            await pool.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        source = runner.run(lookup())

    assert source == "redis"
    assert metrics.errors.labels(kind="redis_unavailable")._value.get() == 0.0


@pytest.mark.integration
def test_redis_and_postgres_paths_match_offline(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    events, labels = make_history(stores)
    stores.seed_redis(events, labels)
    stores.seed_postgres(events, labels)
    served = run_scorer(live_settings)
    expected = offline_features(stores, events, labels)

    from_redis, from_postgres = redis_then_postgres(served, stores)

    assert from_redis["feature_source"] == "redis"
    assert from_postgres["feature_source"] == "postgres"
    assert list(from_redis["features"]) == list(MODEL_INPUTS)
    assert from_redis["features"] == expected
    assert from_postgres["features"] == expected
    assert from_postgres["probability"] == from_redis["probability"]
    assert expected["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] >= 2.0
    assert expected["TERMINAL_ID_NB_TX_30DAY_WINDOW"] > 0.0
    assert expected["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 0.0  # the tie "9"
    assert expected["CUSTOMER_ID_NB_TERMINALS_1DAY_WINDOW"] >= 3.0
    assert expected["DEVICE_ID_NB_TX_1DAY_WINDOW"] == NO_DEVICE_COUNT


@pytest.mark.integration
def test_device_paths_match_offline(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    events, labels = make_history(stores)
    devices = make_device_history(stores)
    stores.seed_redis(events, labels, devices)
    stores.seed_postgres(events, labels, devices)
    served = run_scorer(live_settings)
    expected = offline_features(stores, events, labels, devices)

    from_redis, from_postgres = redis_then_postgres(served, stores, device=True)

    assert from_redis["feature_source"] == "redis"
    assert from_postgres["feature_source"] == "postgres"
    assert from_redis["features"] == expected
    assert from_postgres["features"] == expected
    assert expected["DEVICE_ID_NB_TX_1DAY_WINDOW"] >= 2.0
    assert expected["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"] >= 3.0


@pytest.mark.integration
def test_missing_device_key_is_new_device(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    events, labels = make_history(stores)
    stores.seed_redis(events, labels)
    stores.seed_postgres(events, labels, make_device_history(stores))
    served = run_scorer(live_settings)

    payload = served.decision(request_body(stores, device=True))

    assert payload["feature_source"] == "redis"
    assert payload["features"] == offline_features(stores, events, labels, [])
    assert payload["features"]["DEVICE_ID_NB_TX_1DAY_WINDOW"] == 1.0
    assert payload["features"]["DEVICE_ID_NB_CUSTOMERS_7DAY_WINDOW"] == 1.0


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["customer", "terminal", "device"])
def test_invalid_member_falls_back_to_postgres(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
    layout: str,
) -> None:
    events, labels = make_history(stores)
    devices = make_device_history(stores)
    stores.seed_postgres(events, labels, devices)
    stores.seed_redis(events, labels, devices)
    # A member of the layout before terminal ids: "transaction_id|amount".
    if layout == "customer":
        key = customer_key(stores.prefix, stores.customer_id)
        stores.redis.zadd(key, {"old-tx|12.5": EVENT_MS - 1})
    elif layout == "terminal":
        key = terminal_key(stores.prefix, stores.terminal_id)
        stores.redis.zadd(key, {encode_customer_member(events[0]): EVENT_MS - 1})
    else:
        key = device_key(stores.prefix, stores.device_id)
        stores.redis.zadd(key, {encode_customer_member(events[0]): EVENT_MS - 1})
    served = run_scorer(live_settings)

    payload = served.decision(request_body(stores, device=True))
    metrics = served.client.get("/metrics").text

    assert payload["feature_source"] == "postgres"
    assert payload["features"] == offline_features(stores, events, labels, devices)
    assert 'fraud_score_errors_total{kind="redis_invalid_member"} 1.0' in metrics


@pytest.mark.integration
def test_existing_key_without_window_events_is_hit(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    events, labels = make_history(stores)
    stale = [CustomerEvent(EVENT_MS - 35 * MS_PER_DAY, "stale", 3.0, "t-stale")]
    stores.seed_redis(stale, [])
    stores.seed_postgres(events, labels)
    served = run_scorer(live_settings)

    payload = served.decision(request_body(stores))

    assert payload["feature_source"] == "redis"
    assert payload["features"] == offline_features(stores, stale, [])
    assert payload["features"]["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1.0


@pytest.mark.integration
def test_terminal_key_alone_is_hit(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    events, labels = make_history(stores)
    stores.seed_redis([], labels)
    stores.seed_postgres(events, labels)
    served = run_scorer(live_settings)

    payload = served.decision(request_body(stores))

    assert payload["feature_source"] == "redis"
    assert payload["features"] == offline_features(stores, [], labels)


@pytest.mark.integration
def test_redis_down_falls_back_to_postgres(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    events, labels = make_history(stores)
    stores.seed_postgres(events, labels)
    closed = f"redis://127.0.0.1:{closed_port()}/0"
    served = run_scorer(live_settings.model_copy(update={"redis_url": closed}))

    payload = served.decision(request_body(stores))
    ready = served.client.get("/readyz")

    assert payload["feature_source"] == "postgres"
    assert payload["features"] == offline_features(stores, events, labels)
    assert ready.status_code == 200
    assert ready.json()["feature_store"] == "postgres"


@pytest.mark.integration
def test_redis_miss_and_postgres_down_uses_default(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
    served_model: ServedModel,
) -> None:
    closed = f"postgresql://fraud:fraud@127.0.0.1:{closed_port()}/fraud"
    served = run_scorer(live_settings.model_copy(update={"pg_dsn": closed}))
    served.runtime.install(served_model)

    payload = served.decision(request_body(stores))
    ready = served.client.get("/readyz")

    assert payload["feature_source"] == "default"
    assert payload["features"] == offline_features(stores, [], [])
    assert ready.status_code == 200
    assert ready.json()["feature_store"] == "redis"


@pytest.mark.integration
def test_live_scorer_ready_and_counted(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    live_settings: ScorerSettings,
    stores: SeededStores,
) -> None:
    served = run_scorer(live_settings)

    ready = served.client.get("/readyz")
    served.score(request_body(stores))
    metrics = served.client.get("/metrics").text

    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model_version": live_settings.model_version,
        "feature_store": "redis",
        "reason": None,
    }
    counted = f'model_version="{live_settings.model_version}"'
    assert counted in metrics
    assert 'fraud_score_feature_source_total{source="postgres"} 1.0' in metrics
