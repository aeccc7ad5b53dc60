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

Each lookup has a deadline on the event loop's clock. Redis gets
``redis_timeout_seconds`` or less, and PostgreSQL whatever remains. The same
Redis round trip also reads the transaction's stored decision, if any, so the
idempotency check costs no extra round trip.
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


@dataclass(frozen=True)
class RedisReply:
    """What one Redis round trip returned: histories (None on a miss) and more."""

    histories: Histories | None
    stored_decision: bytes | None


@dataclass(frozen=True)
class Lookup:
    """Histories of one transaction, their store, and the decision stored in Redis.

    ``stored_decision`` is None when Redis has none or did not respond;
    ``redis_responded`` tells the two apart.
    """

    histories: Histories
    source: FeatureSource
    stored_decision: bytes | None = None
    redis_responded: bool = False


async def read_redis(
    client: Redis, prefix: str, query: HistoryQuery, decision_key: str | None = None
) -> RedisReply:
    """Read both histories, and the value at ``decision_key``, in one round trip.

    ``histories`` is None when neither history key exists (a miss).
    """
    customer = customer_key(prefix, query.customer_id)
    terminal = terminal_key(prefix, query.terminal_id)
    low = f"({query.start_ms}"
    async with client.pipeline(transaction=False) as pipe:
        pipe.exists(customer)
        pipe.exists(terminal)
        pipe.zrangebyscore(customer, low, query.end_ms, withscores=True)
        pipe.zrangebyscore(terminal, low, query.end_ms, withscores=True)
        if decision_key is not None:
            pipe.get(decision_key)
        has_customer, has_terminal, events, labels, *stored = await pipe.execute()

    stored_decision = stored[0] if stored else None
    if not has_customer and not has_terminal:
        return RedisReply(None, stored_decision)
    histories = Histories(
        customer=[decode_customer_member(member, score) for member, score in events],
        terminal=[decode_label_member(member, score) for member, score in labels],
    )
    return RedisReply(histories, stored_decision)


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

    async def fetch(
        self,
        query: HistoryQuery,
        deadline: float | None = None,
        decision_key: str | None = None,
    ) -> Lookup:
        """Return the histories of ``query``, their store and the stored decision.

        Args:
            query: Keys and window to read.
            deadline: ``loop.time()`` by which the lookup must end; None allows
                each store its full timeout.
            decision_key: Redis key of the transaction's stored decision, read in
                the same round trip.
        """
        loop = asyncio.get_running_loop()
        end = deadline if deadline is not None else loop.time() + self._pg_timeout
        redis_budget = min(self._redis_timeout, end - loop.time())
        reply = await self._try_redis(query, redis_budget, decision_key)
        if reply is not None and reply.histories is not None:
            return Lookup(reply.histories, "redis", reply.stored_decision, True)
        stored = None if reply is None else reply.stored_decision

        pg_budget = min(self._pg_timeout, end - loop.time())
        found = await self._try_postgres(query, pg_budget)
        source: FeatureSource = "postgres" if found is not None else "default"
        return Lookup(found or Histories(), source, stored, reply is not None)

    async def _try_redis(
        self, query: HistoryQuery, budget: float, decision_key: str | None
    ) -> RedisReply | None:
        if budget <= 0:
            self._metrics.errors.labels(kind="deadline_exceeded").inc()
            return None
        try:
            async with asyncio.timeout(budget):
                return await read_redis(self._redis, self._prefix, query, decision_key)
        except REDIS_FAILURES as exc:
            self._metrics.errors.labels(kind="redis_unavailable").inc()
            self._redis_warning.warn(
                "redis lookup failed, falling back to postgresql: %s", _describe(exc)
            )
            return None

    async def _try_postgres(
        self, query: HistoryQuery, budget: float
    ) -> Histories | None:
        if budget <= 0:
            self._metrics.errors.labels(kind="deadline_exceeded").inc()
            self._pg_warning.warn(
                "no time left for the postgresql fallback, using default features"
            )
            return None
        try:
            # NOTE: on timeout psycopg first sends the server a cancel request,
            # which can delay the fallback past the timeout. The server-side
            # statement_timeout set in clients.py bounds slow queries.
            async with asyncio.timeout(budget):
                return await read_postgres(self._pg_pool, query, budget)
        except PG_FAILURES as exc:
            self._metrics.errors.labels(kind="postgres_unavailable").inc()
            self._pg_warning.warn(
                "postgresql lookup failed, using default features: %s", _describe(exc)
            )
            return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
