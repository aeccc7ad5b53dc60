"""Event histories of one transaction: Redis first, then PostgreSQL, then empty.

Both stores are read over the same window ``(t - 30 days, t]``, with ``t`` the
transaction's event time in ms and 30 days the longest feature window. The
customer's events and the terminal's labels come back in one round trip.
:func:`fraudcore.features.transaction_features` then skips the current
transaction and anything ordered after it, so every source yields the features
of the offline row.

A Redis key *misses* when it does not exist. An existing key with no events in
the window is a hit: the stream job trims each key relative to its own newest
event and never empties it, so a key that exists contains every retained event of
its customer or terminal, and an empty window is a fact. The scorer falls
back to PostgreSQL only when both keys miss, which is what a flushed, restarted
or not yet filled Redis looks like. When only one key misses, that customer or
terminal has no retained events (a new customer, or a terminal without known
labels yet), and Redis is trusted, which keeps a PostgreSQL query off the path
of every new customer. Redis errors and timeouts also fall back to PostgreSQL,
and a PostgreSQL failure leaves empty histories with the source ``default``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fraudcore.features import WINDOW_DAYS, CustomerEvent, TerminalLabel
from fraudcore.store import (
    customer_key,
    decode_customer_member,
    decode_label_member,
    terminal_key,
)
from fraudcore.timeutil import MS_PER_DAY
from services.scorer.logs import ThrottledWarning
from services.scorer.metrics import ScorerMetrics
from services.scorer.schemas import FeatureSource

logger = logging.getLogger(__name__)

LOOKBACK_MS = max(WINDOW_DAYS) * MS_PER_DAY

CUSTOMER_EVENTS_SQL = """
SELECT event_ms, transaction_id, amount FROM customer_events
WHERE customer_id = %s AND event_ms > %s AND event_ms <= %s
"""
TERMINAL_LABELS_SQL = """
SELECT label_ms, transaction_id, fraud FROM terminal_labels
WHERE terminal_id = %s AND label_ms > %s AND label_ms <= %s
"""

REDIS_FAILURES = (RedisError, OSError, TimeoutError)
PG_FAILURES = (psycopg.Error, OSError, TimeoutError)


@dataclass(frozen=True)
class HistoryQuery:
    """Keys and time window ``(start_ms, end_ms]`` of one lookup."""

    customer_id: str
    terminal_id: str
    start_ms: int
    end_ms: int

    @classmethod
    def for_transaction(
        cls, customer_id: str, terminal_id: str, event_ms: int
    ) -> HistoryQuery:
        """Build the query that covers every feature window at ``event_ms``."""
        return cls(customer_id, terminal_id, event_ms - LOOKBACK_MS, event_ms)


@dataclass(frozen=True)
class Histories:
    """A customer's events and a terminal's known labels within the window."""

    customer: list[CustomerEvent] = field(default_factory=list)
    terminal: list[TerminalLabel] = field(default_factory=list)


async def read_redis(
    client: Redis, prefix: str, query: HistoryQuery
) -> Histories | None:
    """Read both histories from Redis in one pipelined round trip.

    Returns:
        The histories, or None when neither key exists (a miss).
    """
    customer = customer_key(prefix, query.customer_id)
    terminal = terminal_key(prefix, query.terminal_id)
    low = f"({query.start_ms}"
    async with client.pipeline(transaction=False) as pipe:
        pipe.exists(customer)
        pipe.exists(terminal)
        pipe.zrangebyscore(customer, low, query.end_ms, withscores=True)
        pipe.zrangebyscore(terminal, low, query.end_ms, withscores=True)
        has_customer, has_terminal, events, labels = await pipe.execute()

    if not has_customer and not has_terminal:
        return None
    return Histories(
        customer=[decode_customer_member(member, score) for member, score in events],
        terminal=[decode_label_member(member, score) for member, score in labels],
    )


async def read_postgres(
    pool: AsyncConnectionPool, query: HistoryQuery, timeout_seconds: float
) -> Histories:
    """Read both histories from PostgreSQL, both queries in one pipeline."""
    window = (query.start_ms, query.end_ms)
    async with pool.connection(timeout=timeout_seconds) as conn:
        async with conn.pipeline():
            events = await conn.execute(
                CUSTOMER_EVENTS_SQL, (query.customer_id, *window)
            )
            labels = await conn.execute(
                TERMINAL_LABELS_SQL, (query.terminal_id, *window)
            )
            event_rows = await events.fetchall()
            label_rows = await labels.fetchall()

    return Histories(
        customer=[
            CustomerEvent(int(ms), str(tx), float(amt)) for ms, tx, amt in event_rows
        ],
        terminal=[
            TerminalLabel(int(ms), str(tx), int(fraud)) for ms, tx, fraud in label_rows
        ],
    )


class HistoryLookup:
    """Reads histories from Redis, falling back to PostgreSQL and then to empty ones."""

    def __init__(
        self,
        redis: Redis,
        pg_pool: AsyncConnectionPool,
        redis_prefix: str,
        redis_timeout_seconds: float,
        pg_timeout_seconds: float,
        metrics: ScorerMetrics,
    ) -> None:
        self._redis = redis
        self._pg_pool = pg_pool
        self._prefix = redis_prefix
        self._redis_timeout = redis_timeout_seconds
        self._pg_timeout = pg_timeout_seconds
        self._metrics = metrics
        self._redis_warning = ThrottledWarning(logger)
        self._pg_warning = ThrottledWarning(logger)

    async def fetch(self, query: HistoryQuery) -> tuple[Histories, FeatureSource]:
        """Return the histories of ``query`` and the store they came from."""
        found = await self._try_redis(query)
        if found is not None:
            return found, "redis"

        found = await self._try_postgres(query)
        if found is not None:
            return found, "postgres"
        return Histories(), "default"

    async def _try_redis(self, query: HistoryQuery) -> Histories | None:
        try:
            async with asyncio.timeout(self._redis_timeout):
                return await read_redis(self._redis, self._prefix, query)
        except REDIS_FAILURES as exc:
            self._metrics.errors.labels(kind="redis_unavailable").inc()
            self._redis_warning.warn(
                "redis lookup failed, falling back to postgresql: %s", _describe(exc)
            )
            return None

    async def _try_postgres(self, query: HistoryQuery) -> Histories | None:
        try:
            # NOTE: on timeout psycopg first sends the server a cancel request,
            # which can delay the fallback past the timeout. The server-side
            # statement_timeout set in clients.py bounds slow queries.
            async with asyncio.timeout(self._pg_timeout):
                return await read_postgres(self._pg_pool, query, self._pg_timeout)
        except PG_FAILURES as exc:
            self._metrics.errors.labels(kind="postgres_unavailable").inc()
            self._pg_warning.warn(
                "postgresql lookup failed, using default features: %s", _describe(exc)
            )
            return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
