"""Event histories of one transaction: Redis first, then PostgreSQL, then empty.

Both stores are read over the same window ``(t - 30 days, t]``, with ``t`` the
transaction's event time in ms and 30 days the longest feature window, and the
device's events over ``(t - 7 days, t]``, the longest device window. The
customer's events, the terminal's labels and, for a transaction with a
``device_id``, the device's events come back in one round trip.
:func:`fraudcore.features.transaction_features` then skips the current
transaction and anything after its event time, so every source yields the
features of the offline row.

A Redis key *misses* when it does not exist. An existing key with no events in
the window is a hit: the stream job trims each key relative to its own newest
event and never empties it, so a key that exists contains every retained event of
its customer or terminal, and an empty window is a fact. The scorer falls
back to PostgreSQL only when both keys miss, which is what a flushed, restarted
or not yet filled Redis looks like. When only one key misses, that customer or
terminal has no retained events (a new customer, or a terminal without known
labels yet), and Redis is trusted, which keeps a PostgreSQL query off the path
of every new customer. A missing device key is trusted in the same way. Redis
errors, timeouts and members of another layout also fall back to PostgreSQL,
and a PostgreSQL failure leaves empty histories with the source ``default``.

For a model trained with customer segments, the same round trip reads the
customer's segment under the model's segmentation version, and Redis is trusted
for it whenever that version is listed among the versions kept in Redis: a
missing hash field then means a customer without a segment. When the version is
not kept in Redis (removed as older, or never published there), the segment is
read from ``customer_segments`` in PostgreSQL, in the same PostgreSQL pipeline
as the histories when Redis missed. A customer without a segment anywhere, or a
failed read, gets ``None``, which the scorer feeds to the model as
:data:`fraudcore.segments.NO_SEGMENT`.

Each lookup has a deadline on the event loop's clock. Redis gets
``redis_timeout_seconds`` or less, and PostgreSQL whatever remains. The Redis
timeout does not expire while the lookup has its reply and only waits for its
turn on the loop (:func:`services.scorer.event_loop.responsive_timeout`), so a
busy worker answers late rather than fall back for a reply that came in time.
The same Redis round trip also claims the transaction id for idempotency (see
:mod:`services.scorer.idempotency`), so the claim costs no extra round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from fraudcore.features import (
    DEVICE_LOOKBACK_MS,
    WINDOW_DAYS,
    CustomerEvent,
    CustomerEventTuple,
    DeviceEvent,
    DeviceEventTuple,
    TerminalLabel,
    TerminalLabelTuple,
)
from fraudcore.segments import (
    SEGMENT_PG_SQL,
    decode_segment,
    segment_key,
    versions_key,
)
from fraudcore.store import (
    InvalidMemberError,
    customer_key,
    decode_customer_members,
    decode_device_members,
    decode_label_members,
    device_key,
    terminal_key,
)
from fraudcore.timeutil import MS_PER_DAY
from services.scorer.clients import REDIS_LIMIT_SECONDS
from services.scorer.event_loop import responsive_timeout
from services.scorer.logs import ThrottledWarning
from services.scorer.metrics import ScorerMetrics
from services.scorer.redis_client import MultiplexedRedis, Script
from services.scorer.schemas import FeatureSource

logger = logging.getLogger(__name__)

LOOKBACK_MS = max(WINDOW_DAYS) * MS_PER_DAY

CUSTOMER_EVENTS_SQL = """
SELECT event_ms, transaction_id, amount, terminal_id FROM customer_events
WHERE customer_id = %s AND event_ms > %s AND event_ms <= %s
ORDER BY event_ms, transaction_id
"""
DEVICE_EVENTS_SQL = """
SELECT event_ms, transaction_id, customer_id FROM device_events
WHERE device_id = %s AND event_ms > %s AND event_ms <= %s
ORDER BY event_ms, transaction_id
"""
TERMINAL_LABELS_SQL = """
SELECT label_ms, transaction_id, fraud FROM terminal_labels
WHERE terminal_id = %s AND label_ms > %s AND label_ms <= %s
ORDER BY label_ms, transaction_id
"""

REDIS_FAILURES = (RedisError, OSError, TimeoutError)
PG_FAILURES = (psycopg.Error, OSError, TimeoutError)


@dataclass(frozen=True)
class HistoryQuery:
    """Keys and time window ``(start_ms, end_ms]`` of one lookup.

    The device, when given, is read over ``(device_start_ms, end_ms]``. With a
    ``segmentation_version``, the customer's segment under it is read as well.
    """

    customer_id: str
    terminal_id: str
    start_ms: int
    end_ms: int
    device_id: str | None = None
    segmentation_version: str | None = None

    @classmethod
    def for_transaction(
        cls,
        customer_id: str,
        terminal_id: str,
        event_ms: int,
        device_id: str | None = None,
        segmentation_version: str | None = None,
    ) -> HistoryQuery:
        """Build the query that covers every feature window at ``event_ms``."""
        return cls(
            customer_id,
            terminal_id,
            event_ms - LOOKBACK_MS,
            event_ms,
            device_id,
            segmentation_version,
        )

    @property
    def device_start_ms(self) -> int:
        """Start of the device's window, no earlier than ``start_ms``."""
        return max(self.start_ms, self.end_ms - DEVICE_LOOKBACK_MS)


@dataclass(frozen=True)
class Histories:
    """A customer's events, a terminal's known labels and a device's events.

    ``segment`` is the customer's segment under the query's segmentation
    version, None without a version or a segment.
    """

    customer: Sequence[CustomerEventTuple] = field(default_factory=list)
    terminal: Sequence[TerminalLabelTuple] = field(default_factory=list)
    device: Sequence[DeviceEventTuple] = field(default_factory=list)
    segment: int | None = None


@dataclass(frozen=True)
class RedisReply:
    """Reply of one Redis round trip: histories (None on a miss) and the claim.

    ``segment_known`` is True when the histories' segment is final for the
    query's segmentation version, because Redis keeps that version or the
    query has none.
    """

    histories: Histories | None
    stored_decision: bytes | None
    segment_known: bool = True


@dataclass(frozen=True)
class Lookup:
    """Histories of one transaction, their store, and the outcome of its claim.

    When Redis responded (``redis_responded``) to a lookup with a claim,
    ``stored_decision`` is None if this request claimed the transaction id, else
    the value stored before: a decision or another request's pending marker.
    """

    histories: Histories
    source: FeatureSource
    stored_decision: bytes | None = None
    redis_responded: bool = False


# One script call instead of a pipeline of up to seven commands: the client
# packs and parses one command, which costs less CPU per request. Scores come
# back as strings, members as bytes. ARGV[3] is the number of device keys (0 or
# 1) after the two history keys, and ARGV[4] the start of the device window.
# ARGV[5] is the segmentation version, or an empty string for none. With a
# version, the next two keys are the customer's segment hash and the sorted set
# of versions kept in Redis. With one more key the script also claims the
# transaction id: SET NX GET stores the pending marker ARGV[6] for ARGV[7]
# seconds and returns nil, or returns the value stored before and changes
# nothing.
# NOTE: the script reads keys of several entities. Redis Cluster allows that
# only when they hash to one slot, so the scorer needs a single Redis server.
LOOKUP_SCRIPT = """
local has_customer = redis.call('EXISTS', KEYS[1])
local has_terminal = redis.call('EXISTS', KEYS[2])
local events = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local labels = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], ARGV[2], 'WITHSCORES')
local device_keys = tonumber(ARGV[3])
local devices = {}
if device_keys == 1 then
    devices = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[4], ARGV[2], 'WITHSCORES')
end
local segment_keys = 0
local segment = false
local version_kept = false
if ARGV[5] ~= '' then
    segment_keys = 2
    segment = redis.call('HGET', KEYS[3 + device_keys], ARGV[5])
    version_kept = redis.call('ZSCORE', KEYS[4 + device_keys], ARGV[5])
end
local stored = false
local claim_key = KEYS[3 + device_keys + segment_keys]
if claim_key then
    stored = redis.call('SET', claim_key, ARGV[6], 'NX', 'GET', 'EX', ARGV[7])
end
return {has_customer, has_terminal, events, labels, devices, stored, segment,
    version_kept}
"""


@dataclass(frozen=True)
class ClaimRequest:
    """The Redis key of a transaction's decision and the marker that claims it."""

    key: str
    marker: bytes
    ttl_seconds: int


async def read_redis(
    script: Script, prefix: str, query: HistoryQuery, claim: ClaimRequest | None
) -> RedisReply:
    """Read the histories, and claim the transaction id, in one round trip.

    ``script`` is :data:`LOOKUP_SCRIPT` registered on the client. ``histories``
    is None when neither the customer nor the terminal key exists (a miss).
    ``stored_decision`` is None when the claim succeeded, else the value stored
    before.

    Raises:
        InvalidMemberError: if a customer, terminal or device member, or the
            segment, has another layout.
    """
    keys = [
        customer_key(prefix, query.customer_id),
        terminal_key(prefix, query.terminal_id),
    ]
    device_keys = 0
    if query.device_id is not None:
        keys.append(device_key(prefix, query.device_id))
        device_keys = 1
    args: list[str | int | bytes] = [f"({query.start_ms}", query.end_ms]
    args += [device_keys, f"({query.device_start_ms}"]
    version = query.segmentation_version
    args.append(version or "")
    if version is not None:
        keys += [segment_key(prefix, query.customer_id), versions_key(prefix)]
    if claim is not None:
        keys.append(claim.key)
        args += [claim.marker, claim.ttl_seconds]
    reply = await script(keys=keys, args=args)
    has_customer, has_terminal, events, labels, devices, stored = reply[:6]
    segment, version_kept = reply[6:]

    if not has_customer and not has_terminal:
        return RedisReply(None, stored)
    histories = Histories(
        customer=decode_customer_members(events),
        terminal=decode_label_members(labels),
        device=decode_device_members(devices),
        segment=_segment(segment),
    )
    return RedisReply(histories, stored, version is None or version_kept is not None)


def _segment(value: bytes | None) -> int | None:
    try:
        return decode_segment(value)
    except ValueError:
        raise InvalidMemberError(
            "segment hash field is not a decimal integer"
        ) from None


async def read_postgres(
    pool: AsyncConnectionPool, query: HistoryQuery, timeout_seconds: float
) -> Histories:
    """Read the histories and the segment from PostgreSQL in one pipeline."""
    window = (query.start_ms, query.end_ms)
    device_rows = []
    segment_row = None
    async with pool.connection(timeout=timeout_seconds) as conn:
        async with conn.pipeline():
            events = await conn.execute(
                CUSTOMER_EVENTS_SQL, (query.customer_id, *window)
            )
            labels = await conn.execute(
                TERMINAL_LABELS_SQL, (query.terminal_id, *window)
            )
            if query.device_id is not None:
                device_window = (query.device_start_ms, query.end_ms)
                devices = await conn.execute(
                    DEVICE_EVENTS_SQL, (query.device_id, *device_window)
                )
            event_rows = await events.fetchall()
            label_rows = await labels.fetchall()
            if query.segmentation_version is not None:
                segments = await conn.execute(
                    SEGMENT_PG_SQL, (query.customer_id, query.segmentation_version)
                )
            if query.device_id is not None:
                device_rows = await devices.fetchall()
            if query.segmentation_version is not None:
                segment_row = await segments.fetchone()

    return Histories(
        customer=[
            CustomerEvent(int(ms), str(tx), float(amount), str(terminal))
            for ms, tx, amount, terminal in event_rows
        ],
        terminal=[
            TerminalLabel(int(ms), str(tx), int(fraud)) for ms, tx, fraud in label_rows
        ],
        device=[
            DeviceEvent(int(ms), str(tx), str(customer))
            for ms, tx, customer in device_rows
        ],
        segment=None if segment_row is None else int(segment_row[0]),
    )


async def read_postgres_segment(
    pool: AsyncConnectionPool, customer_id: str, version: str, timeout_seconds: float
) -> int | None:
    """Read a customer's segment under ``version`` from PostgreSQL, or None."""
    async with pool.connection(timeout=timeout_seconds) as conn:
        cursor = await conn.execute(SEGMENT_PG_SQL, (customer_id, version))
        row = await cursor.fetchone()
    return None if row is None else int(row[0])


class HistoryLookup:
    """Reads histories from Redis, falling back to PostgreSQL and then to empty ones."""

    def __init__(
        self,
        redis: MultiplexedRedis,
        pg_pool: AsyncConnectionPool,
        redis_prefix: str,
        redis_timeout_seconds: float,
        pg_timeout_seconds: float,
        metrics: ScorerMetrics,
    ) -> None:
        self._script = redis.register_script(LOOKUP_SCRIPT)
        self._pg_pool = pg_pool
        self._prefix = redis_prefix
        self._redis_timeout = redis_timeout_seconds
        self._pg_timeout = pg_timeout_seconds
        self._metrics = metrics
        self._redis_warning = ThrottledWarning(logger)
        self._pg_warning = ThrottledWarning(logger)
        self._segment_warning = ThrottledWarning(logger)

    async def fetch(
        self,
        query: HistoryQuery,
        deadline: float | None = None,
        claim: ClaimRequest | None = None,
    ) -> Lookup:
        """Return the histories of ``query``, their store and the claim's outcome.

        Args:
            query: Keys and window to read.
            deadline: ``loop.time()`` by which the lookup must end; None allows
                each store its full timeout.
            claim: Claim of the transaction id, made in the same round trip.
        """
        loop = asyncio.get_running_loop()
        end = deadline if deadline is not None else loop.time() + self._pg_timeout
        redis_budget = min(self._redis_timeout, end - loop.time())
        reply = await self._try_redis(query, redis_budget, claim)
        if reply is not None and reply.histories is not None:
            histories = reply.histories
            if not reply.segment_known:
                pg_budget = min(self._pg_timeout, end - loop.time())
                segment = await self._try_postgres_segment(query, pg_budget)
                histories = replace(histories, segment=segment)
            return Lookup(histories, "redis", reply.stored_decision, True)
        stored = None if reply is None else reply.stored_decision

        pg_budget = min(self._pg_timeout, end - loop.time())
        found = await self._try_postgres(query, pg_budget)
        source: FeatureSource = "postgres" if found is not None else "default"
        return Lookup(found or Histories(), source, stored, reply is not None)

    async def _try_redis(
        self, query: HistoryQuery, budget: float, claim: ClaimRequest | None
    ) -> RedisReply | None:
        if budget <= 0:
            self._metrics.errors.labels(kind="deadline_exceeded").inc()
            return None
        try:
            limit = max(budget, REDIS_LIMIT_SECONDS)
            async with responsive_timeout(budget, limit):
                return await read_redis(self._script, self._prefix, query, claim)
        except InvalidMemberError:
            # The message would contain the member, and with it identifiers.
            self._metrics.errors.labels(kind="redis_invalid_member").inc()
            self._redis_warning.warn(
                "redis returned members of another layout, falling back to "
                "postgresql; rebuild the online store with the feature job"
            )
            return None
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

    async def _try_postgres_segment(
        self, query: HistoryQuery, budget: float
    ) -> int | None:
        assert query.segmentation_version is not None
        self._segment_warning.warn(
            "segmentation version %s is not kept in redis; reading segments "
            "from postgresql, publish a newer segmentation or retrain",
            query.segmentation_version,
        )
        if budget <= 0:
            self._metrics.errors.labels(kind="deadline_exceeded").inc()
            return None
        try:
            async with asyncio.timeout(budget):
                return await read_postgres_segment(
                    self._pg_pool,
                    query.customer_id,
                    query.segmentation_version,
                    budget,
                )
        except PG_FAILURES as exc:
            self._metrics.errors.labels(kind="postgres_unavailable").inc()
            self._pg_warning.warn(
                "postgresql segment lookup failed, using no segment: %s",
                _describe(exc),
            )
            return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
