"""Stored decisions: idempotent replays of ``POST /score`` and label lookups.

The first request that claims a transaction id decides, and only its decision
goes out to Kafka and the decision log. A later request with that id gets the
stored response back if its body is the same, and 409 if not.

Redis is the synchronous store. The feature lookup's round trip claims the id
with ``SET NX GET`` of a pending marker (atomic across workers), so a new
transaction pays no extra round trip. Once decided, the marker is replaced by
the decision in a background pipeline that batches many requests. A request
that meets another's pending marker for the same body waits for the decision
until its deadline. A marker older than ``PENDING_STALE_SECONDS`` (its worker
died) is taken over, unless PostgreSQL already has the decision.

PostgreSQL keeps the durable copy in ``scored_transactions``. A background task
writes it in batches, off the request path, because a synchronous insert would
add a round trip and a WAL write to every request. When Redis does not respond,
the claim is an ``INSERT ... ON CONFLICT DO NOTHING`` in PostgreSQL instead.

Limits: a replay is recognised for ``idempotency_ttl_seconds`` after the first
request, as long as Redis keeps its data or PostgreSQL has the decision. A replay
after that wins again, and its events go out twice; its durable row is then
counted as ``duplicate``. When neither store responds, the request is scored
without a claim, and counted as ``idempotency_unavailable``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from fraudcore.schema import TransactionRecord, encode
from services.scorer.feature_store import PG_FAILURES, REDIS_FAILURES, ClaimRequest
from services.scorer.logs import ThrottledWarning
from services.scorer.metrics import ScorerMetrics
from services.scorer.redis_client import MultiplexedRedis

logger = logging.getLogger(__name__)

# A claim made after the request's deadline still gets this long, because
# skipping it would give up idempotency.
MIN_CLAIM_SECONDS = 0.002
WRITER_BATCH_ROWS = 2_000
PENDING_PREFIX = b"pending|"
PENDING_STALE_SECONDS = 5.0
PENDING_POLL_SECONDS = 0.001
STORE_TIMEOUT_SECONDS = 1.0
WRITER_INTERVAL_SECONDS = 0.05
WRITER_RETRY_SECONDS = 1.0

INSERT_ONE_SQL = """
INSERT INTO scored_transactions (transaction_id, request_sha256, customer_id,
    terminal_id, transaction_ms, model_version, probability, decision, response,
    decided_at, shadow_versions)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::json, %s::timestamptz, %s)
ON CONFLICT (transaction_id) DO NOTHING
RETURNING transaction_id
"""
# A batch is copied into a temporary table, then inserted in one statement that
# skips the transactions already stored. That took about 4 us of the event
# loop's CPU per row, against 11 us for one INSERT per row (batches of 2,000),
# and stays idempotent.
STAGE_BATCH_SQL = """
CREATE TEMPORARY TABLE IF NOT EXISTS staged_decisions
    (LIKE scored_transactions) ON COMMIT DELETE ROWS
"""
COPY_BATCH_SQL = "COPY staged_decisions FROM STDIN"
MERGE_BATCH_SQL = """
INSERT INTO scored_transactions SELECT * FROM staged_decisions
ON CONFLICT (transaction_id) DO NOTHING
"""
SELECT_SQL = """
SELECT transaction_id, request_sha256, customer_id, terminal_id, transaction_ms,
    model_version, probability, decision, response::text,
    to_char(decided_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    shadow_versions
FROM scored_transactions WHERE transaction_id = %s
"""


def request_digest(record: TransactionRecord) -> str:
    """Return the sha256 of the record's canonical JSON.

    Aliases, integer ids and key order do not change it, so a retry that spells
    the same transaction differently is still the same request.
    """
    return hashlib.sha256(encode(record)).hexdigest()


def decision_key(prefix: str, transaction_id: str) -> str:
    """Return the Redis key of a transaction's stored decision."""
    return f"{prefix}:decision:{transaction_id}"


def pending_marker(digest: str, claimed_ms: int) -> bytes:
    """Return the value that claims a transaction id until its decision is stored."""
    return PENDING_PREFIX + f"{digest}|{claimed_ms}".encode()


@dataclass(frozen=True)
class Pending:
    """Another request's claim: the digest of its body and when it claimed."""

    digest: str
    claimed_ms: int

    @classmethod
    def parse(cls, raw: bytes) -> Pending | None:
        """Parse a pending marker; None when ``raw`` is a stored decision."""
        if not raw.startswith(PENDING_PREFIX):
            return None
        digest, _, claimed = raw[len(PENDING_PREFIX) :].decode().partition("|")
        return cls(digest, int(claimed))

    def is_stale(self, now_ms: int) -> bool:
        """Return whether the claim is older than ``PENDING_STALE_SECONDS``.

        That is far longer than any request deadline, so its worker has died.
        """
        return now_ms - self.claimed_ms > PENDING_STALE_SECONDS * 1000


@dataclass(frozen=True)
class StoredDecision:
    """A decision as stored: the response bytes and what a label needs."""

    transaction_id: str
    request_sha256: str
    customer_id: str
    terminal_id: str
    transaction_ms: int
    model_version: str
    probability: float
    decision: str
    response: bytes
    decided_at: str
    shadow_versions: tuple[str, ...] = ()

    def to_redis(self) -> bytes:
        """Encode for Redis; the response is embedded as JSON, not as a string."""
        fields = self._row()
        fields["response"] = orjson.Fragment(self.response)
        return orjson.dumps(fields)

    @classmethod
    def from_redis(cls, raw: bytes) -> StoredDecision:
        """Decode a value written by :meth:`to_redis`."""
        fields = orjson.loads(raw)
        fields["response"] = orjson.dumps(fields["response"])
        fields["shadow_versions"] = tuple(fields.get("shadow_versions", ()))
        return cls(**fields)

    def row(self) -> tuple[Any, ...]:
        """Return the ``scored_transactions`` columns in table order."""
        fields = self._row()
        fields["response"] = self.response.decode()
        fields["shadow_versions"] = list(self.shadow_versions)
        return tuple(fields.values())

    def _row(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "request_sha256": self.request_sha256,
            "customer_id": self.customer_id,
            "terminal_id": self.terminal_id,
            "transaction_ms": self.transaction_ms,
            "model_version": self.model_version,
            "probability": self.probability,
            "decision": self.decision,
            "response": self.response,
            "decided_at": self.decided_at,
            "shadow_versions": self.shadow_versions,
        }


# Columns of SELECT_SQL, in its order.
STORED_FIELDS = (
    "transaction_id",
    "request_sha256",
    "customer_id",
    "terminal_id",
    "transaction_ms",
    "model_version",
    "probability",
    "decision",
    "response",
    "decided_at",
    "shadow_versions",
)


class ClaimUnavailable(Exception):
    """Neither Redis nor PostgreSQL took the claim."""


class DecisionStore:
    """Claims transaction ids and finds stored decisions in Redis and PostgreSQL."""

    def __init__(
        self,
        redis: MultiplexedRedis,
        pg_pool: AsyncConnectionPool,
        writer: DecisionWriter,
        *,
        prefix: str,
        ttl_seconds: int,
        redis_timeout_seconds: float,
        pg_timeout_seconds: float,
        metrics: ScorerMetrics,
    ) -> None:
        self._redis = redis
        self._pg_pool = pg_pool
        self._writer = writer
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._redis_timeout = redis_timeout_seconds
        self._pg_timeout = pg_timeout_seconds
        self._metrics = metrics
        self._warning = ThrottledWarning(logger)
        self._finished: list[StoredDecision] = []
        self._finished_event = asyncio.Event()

    def key(self, transaction_id: str) -> str:
        """Return the Redis key of ``transaction_id``'s stored decision."""
        return decision_key(self._prefix, transaction_id)

    def claim_request(self, transaction_id: str, digest: str) -> ClaimRequest:
        """Return the claim that the feature lookup makes in Redis."""
        marker = pending_marker(digest, time.time_ns() // 1_000_000)
        return ClaimRequest(self.key(transaction_id), marker, self._ttl)

    def store(self, decision: StoredDecision) -> None:
        """Replace this request's pending marker with the decision, in the background.

        The decision is also queued for its durable copy in PostgreSQL.
        """
        self._finished.append(decision)
        self._finished_event.set()
        self._writer.add(decision)

    async def run_storer(self) -> None:
        """Write finished decisions to Redis in pipelines until cancelled."""
        while True:
            await self._finished_event.wait()
            self._finished_event.clear()
            await self.store_batch()

    async def store_batch(self) -> None:
        """Write the finished decisions queued so far to Redis in one pipeline."""
        batch, self._finished = self._finished, []
        if not batch:
            return
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                await self._redis.execute_many(
                    (
                        "SET",
                        self.key(decision.transaction_id),
                        decision.to_redis(),
                        "EX",
                        self._ttl,
                    )
                    for decision in batch
                )
        except REDIS_FAILURES as exc:
            # The markers stay until they are stale; replays then find the
            # decisions in PostgreSQL.
            self._metrics.errors.labels(kind="redis_store_decision").inc(len(batch))
            self._warning.warn(
                "storing %d decisions in redis failed: %r", len(batch), exc
            )

    async def wait_for_decision(
        self, transaction_id: str, deadline: float
    ) -> bytes | None:
        """Poll Redis until another request's decision replaces its marker.

        Returns:
            The stored decision, or None when ``deadline`` (``loop.time()``)
            passed first.
        """
        loop = asyncio.get_running_loop()
        key = self.key(transaction_id)
        while loop.time() < deadline:
            await asyncio.sleep(PENDING_POLL_SECONDS)
            try:
                async with asyncio.timeout(self._redis_timeout):
                    raw = await self._redis.get(key)
            except REDIS_FAILURES:
                return None
            if raw is not None and Pending.parse(raw) is None:
                return bytes(raw)
        return None

    async def claim_in_postgres(
        self, decision: StoredDecision, budget: float
    ) -> StoredDecision | None:
        """Store ``decision`` in PostgreSQL unless one is stored for its id.

        Used when Redis did not respond to the lookup. ``budget`` is the time
        left in the request; at least ``MIN_CLAIM_SECONDS`` are used.

        Returns:
            None when ``decision`` was stored, else the decision stored before.

        Raises:
            ClaimUnavailable: if PostgreSQL did not respond.
        """
        budget = max(budget, MIN_CLAIM_SECONDS)
        try:
            async with asyncio.timeout(min(budget, self._pg_timeout)):
                return await self._claim_postgres(decision)
        except PG_FAILURES as exc:
            self._warning.warn("postgresql claim failed: %r", exc)
            raise ClaimUnavailable from exc

    async def find_durable(self, transaction_id: str) -> StoredDecision | None:
        """Find a decision in the writer's buffer or in PostgreSQL.

        Raises:
            ClaimUnavailable: if PostgreSQL did not respond.
        """
        pending = self._writer.pending(transaction_id)
        if pending is not None:
            return pending
        try:
            async with asyncio.timeout(self._pg_timeout):
                async with self._pg_pool.connection(timeout=self._pg_timeout) as conn:
                    return await _select(conn, transaction_id)
        except PG_FAILURES as exc:
            self._warning.warn("postgresql lookup of a decision failed: %r", exc)
            raise ClaimUnavailable from exc

    async def _claim_postgres(self, decision: StoredDecision) -> StoredDecision | None:
        async with self._pg_pool.connection(timeout=self._pg_timeout) as conn:
            cursor = await conn.execute(INSERT_ONE_SQL, decision.row())
            if await cursor.fetchone() is not None:
                return None
            found = await _select(conn, decision.transaction_id)
        if found is None:
            raise ClaimUnavailable("the conflicting row disappeared")
        return found

    async def find(self, transaction_id: str) -> StoredDecision | None:
        """Find a stored decision in Redis, the writer's buffer, then PostgreSQL.

        Raises:
            ClaimUnavailable: if Redis and PostgreSQL both failed, so the
                transaction may exist.
        """
        try:
            async with asyncio.timeout(self._redis_timeout):
                raw = await self._redis.get(self.key(transaction_id))
            if raw is not None and Pending.parse(raw) is None:
                return StoredDecision.from_redis(raw)
        except REDIS_FAILURES as exc:
            self._warning.warn("redis lookup of a decision failed: %r", exc)
        return await self.find_durable(transaction_id)


async def _select(conn: Any, transaction_id: str) -> StoredDecision | None:
    cursor = await conn.execute(SELECT_SQL, (transaction_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    fields = dict(zip(STORED_FIELDS, row, strict=True))
    fields["response"] = fields["response"].encode()
    fields["shadow_versions"] = tuple(fields["shadow_versions"])
    return StoredDecision(**fields)


class DecisionWriter:
    """Writes decisions to ``scored_transactions`` in batches, in the background.

    At most ``max_rows`` wait; a decision beyond that is dropped from the
    durable copy, counted and logged. While PostgreSQL is down the rows wait and
    the batch is retried every ``WRITER_RETRY_SECONDS``.
    """

    def __init__(
        self, pg_pool: AsyncConnectionPool, max_rows: int, metrics: ScorerMetrics
    ) -> None:
        self._pg_pool = pg_pool
        self._max_rows = max_rows
        self._metrics = metrics
        self._rows: OrderedDict[str, StoredDecision] = OrderedDict()
        self._wake = asyncio.Event()
        self._warning = ThrottledWarning(logger)

    def add(self, decision: StoredDecision) -> None:
        """Queue a decision for writing, or drop it when the buffer is full."""
        if len(self._rows) >= self._max_rows:
            self._metrics.decision_rows.labels(outcome="dropped").inc()
            self._warning.warn(
                "decision buffer full (%d rows); dropped the durable copy of a "
                "decision",
                self._max_rows,
            )
            return
        self._rows[decision.transaction_id] = decision
        self._wake.set()

    def pending(self, transaction_id: str) -> StoredDecision | None:
        """Return a decision that is queued but not written yet."""
        return self._rows.get(transaction_id)

    def backlog(self) -> int:
        """Return the number of decisions waiting to be written."""
        return len(self._rows)

    async def run(self) -> None:
        """Write queued decisions until cancelled."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(WRITER_INTERVAL_SECONDS)
            if not await self.flush_batch():
                await asyncio.sleep(WRITER_RETRY_SECONDS)
            if not self._rows:
                self._wake.clear()

    async def flush_batch(self) -> bool:
        """Write up to ``WRITER_BATCH_ROWS`` decisions; return whether it worked."""
        batch = list(itertools.islice(self._rows.values(), WRITER_BATCH_ROWS))
        if not batch:
            return True
        try:
            async with self._pg_pool.connection() as conn:
                async with conn.transaction():
                    await conn.execute(STAGE_BATCH_SQL)
                    cursor = conn.cursor()
                    async with cursor.copy(COPY_BATCH_SQL) as copy:
                        for decision in batch:
                            await copy.write_row(decision.row())
                    await cursor.execute(MERGE_BATCH_SQL)
        except PG_FAILURES as exc:
            self._warning.warn(
                "writing %d decisions to postgresql failed, retrying: %r",
                len(self._rows),
                exc,
            )
            return False
        for decision in batch:
            self._rows.pop(decision.transaction_id, None)
        written = max(cursor.rowcount, 0)
        self._metrics.decision_rows.labels(outcome="written").inc(written)
        if written < len(batch):
            self._metrics.decision_rows.labels(outcome="duplicate").inc(
                len(batch) - written
            )
        return True

    async def drain(self, timeout_seconds: float) -> int:
        """Write what is queued, for up to ``timeout_seconds``; return what is left."""
        try:
            async with asyncio.timeout(timeout_seconds):
                while self._rows and await self.flush_batch():
                    pass
        except TimeoutError:
            pass
        if self._rows:
            logger.error(
                "%d decisions were not written to postgresql before shutdown",
                len(self._rows),
            )
        return len(self._rows)
