"""Writes each key's events to the online store: Redis, and PostgreSQL as its copy.

Writes are idempotent (a sorted-set member and a primary key per transaction)
and commute: Redis trims each key relative to the newest event it holds, not to
the newest event of the write. Writing the same events again, or in another
order, leaves the store as writing them once in order does.

The feature job also publishes every write as a changelog record (see
:func:`encode_change`, and :func:`changelog_query` for the same records in
Flink SQL), which :mod:`streaming.online_loader` applies.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import psycopg
import redis

from fraudcore import store
from fraudcore.features import (
    STATE_RETENTION_MS,
    CustomerEvent,
    DeviceEvent,
    TerminalLabel,
)

log = logging.getLogger(__name__)

TRIM_EVERY_FLUSHES = 200
# Bounds of one script call: Lua's unpack() takes a few thousand values at
# most, and Redis serves no other client while a script runs. A call of 100
# keys of about 20 members each took 0.55 ms of Redis time on the 2-core
# machine of docs/benchmarks.md.
MEMBERS_PER_SCRIPT_CALL = 1_000
KEYS_PER_SCRIPT_CALL = 100

# COPY into a temporary table, then one INSERT that skips rows already stored:
# an order of magnitude faster than row-by-row inserts, and still idempotent.
_STAGE_TABLES = """
CREATE TEMPORARY TABLE IF NOT EXISTS staged_customer_events
    (LIKE customer_events) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE IF NOT EXISTS staged_terminal_labels
    (LIKE terminal_labels) ON COMMIT DELETE ROWS;
CREATE TEMPORARY TABLE IF NOT EXISTS staged_device_events
    (LIKE device_events) ON COMMIT DELETE ROWS;
"""
_COPY_CUSTOMER_EVENTS = (
    "COPY staged_customer_events"
    " (customer_id, event_ms, transaction_id, amount, terminal_id) FROM STDIN"
)
_COPY_DEVICE_EVENTS = (
    "COPY staged_device_events (device_id, event_ms, transaction_id, customer_id)"
    " FROM STDIN"
)
_COPY_TERMINAL_LABELS = (
    "COPY staged_terminal_labels (terminal_id, label_ms, transaction_id, fraud)"
    " FROM STDIN"
)
_MERGE_STAGED = """
INSERT INTO customer_events SELECT * FROM staged_customer_events
ON CONFLICT DO NOTHING;
INSERT INTO terminal_labels SELECT * FROM staged_terminal_labels
ON CONFLICT DO NOTHING;
INSERT INTO device_events SELECT * FROM staged_device_events
ON CONFLICT DO NOTHING;
"""

_TABLE_COLUMNS_SQL = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = ANY(%s)
ORDER BY table_name, ordinal_position
"""


# Adds members to each sorted set of KEYS, drops those older than the retention
# before the newest member of the set, and renews the key's TTL. One call for
# many keys saves the client most of its per-command work.
# ARGV: retention_ms, ttl_seconds, then for each key in KEYS the number of its
# members followed by that many score, member pairs.
# NOTE: Redis Cluster runs a script only on keys of one hash slot, so this
# needs a single Redis server, as the scorer's lookup script does.
_ADD_TRIMMED = """
local retention = tonumber(ARGV[1])
local position = 3
for _, key in ipairs(KEYS) do
  local last = position + 2 * tonumber(ARGV[position])
  redis.call('ZADD', key, unpack(ARGV, position + 1, last))
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (tonumber(newest) - retention))
  redis.call('EXPIRE', key, ARGV[2])
  position = last + 1
end
"""


class StoreSchemaError(RuntimeError):
    """Online-store table whose columns differ from ``store.PG_COLUMNS``."""


def ensure_schema(pg_dsn: str) -> None:
    """Create the online store's PostgreSQL tables, and check existing ones.

    Raises:
        StoreSchemaError: if a table exists with other columns, such as a
            ``customer_events`` table of an older layout without ``terminal_id``.
    """
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(store.PG_SCHEMA)
        rows = conn.execute(_TABLE_COLUMNS_SQL, [list(store.PG_COLUMNS)]).fetchall()
    found: dict[str, list[str]] = defaultdict(list)
    for table, column in rows:
        found[table].append(column)
    for table, expected in store.PG_COLUMNS.items():
        if tuple(found[table]) != expected:
            raise StoreSchemaError(
                f"table {table} has columns {found[table]}, expected "
                f"{list(expected)}; it was created by another version. Drop it "
                "(the feature job refills it when it reads the topics from the "
                "start) or point FRAUD_PG_DSN at another database."
            )


class OnlineStoreWriter:
    """Buffers customer events, terminal labels and device events for batch writes.

    Args:
        redis_url: URL of the Redis server.
        pg_dsn: DSN of the PostgreSQL database holding the durable copy, or
            None to write Redis only.
        prefix: prefix of every Redis key.
    """

    def __init__(self, redis_url: str, pg_dsn: str | None, prefix: str) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._add_trimmed = self._redis.register_script(_ADD_TRIMMED)
        self._pg: psycopg.Connection[Any] | None = None
        if pg_dsn is not None:
            self._pg = psycopg.connect(pg_dsn)
            self._pg.execute(_STAGE_TABLES)
            self._pg.commit()
        self._prefix = prefix
        self._customers: list[tuple[str, CustomerEvent]] = []
        self._labels: list[tuple[str, TerminalLabel]] = []
        self._devices: list[tuple[str, DeviceEvent]] = []
        self._newest_event_ms = 0
        self._newest_label_ms = 0
        self._flushes = 0

    def __len__(self) -> int:
        return len(self._customers) + len(self._labels) + len(self._devices)

    def add_customer_event(self, customer_id: str, event: CustomerEvent) -> None:
        """Queue one transaction of a customer."""
        self._customers.append((customer_id, event))

    def add_terminal_label(self, terminal_id: str, label: TerminalLabel) -> None:
        """Queue one known label of a terminal's transaction."""
        self._labels.append((terminal_id, label))

    def add_device_event(self, device_id: str, event: DeviceEvent) -> None:
        """Queue one transaction made on a device."""
        self._devices.append((device_id, event))

    def flush(self) -> None:
        """Write everything queued to PostgreSQL, then to Redis.

        PostgreSQL goes first so that Redis never contains an event its durable copy
        lacks.
        """
        if not len(self):
            return
        if self._pg is not None:
            self._write_postgres(self._pg)
        self._write_redis()
        # Device events are the customer events of the same transactions, so the
        # customer events' newest time serves both.
        for _, event in self._customers:
            self._newest_event_ms = max(self._newest_event_ms, event.event_ms)
        for _, label in self._labels:
            self._newest_label_ms = max(self._newest_label_ms, label.label_ms)
        self._customers.clear()
        self._labels.clear()
        self._devices.clear()
        self._flushes += 1
        if self._pg is not None and self._flushes % TRIM_EVERY_FLUSHES == 0:
            self._delete_expired_rows(self._pg)

    def discard(self) -> None:
        """Drop what is queued and release the connections."""
        self._customers.clear()
        self._labels.clear()
        self._devices.clear()
        if self._pg is not None:
            self._pg.close()
        self._redis.close()

    def close(self) -> None:
        """Flush and release the connections."""
        self.flush()
        if self._pg is not None:
            self._pg.close()
        self._redis.close()

    def _delete_expired_rows(self, pg: psycopg.Connection[Any]) -> None:
        # Redis trims per key on every write. PostgreSQL trims in bulk, by the
        # newest event this writer has seen. Its rows are read only inside their
        # window, so rows of quiet keys kept a little longer change no feature.
        event_cutoff = self._newest_event_ms - STATE_RETENTION_MS
        label_cutoff = self._newest_label_ms - STATE_RETENTION_MS
        delete_events = "DELETE FROM customer_events WHERE event_ms < %s"
        delete_labels = "DELETE FROM terminal_labels WHERE label_ms < %s"
        delete_devices = "DELETE FROM device_events WHERE event_ms < %s"
        with pg.transaction():
            pg.execute(delete_events, [event_cutoff])
            pg.execute(delete_labels, [label_cutoff])
            pg.execute(delete_devices, [event_cutoff])

    def _write_postgres(self, pg: psycopg.Connection[Any]) -> None:
        with pg.transaction(), pg.cursor() as cursor:
            with cursor.copy(_COPY_CUSTOMER_EVENTS) as copy:
                for key, event in self._customers:
                    copy.write_row((key, *event))
            with cursor.copy(_COPY_TERMINAL_LABELS) as copy:
                for key, label in self._labels:
                    copy.write_row((key, *label))
            with cursor.copy(_COPY_DEVICE_EVENTS) as copy:
                for key, device_event in self._devices:
                    copy.write_row((key, *device_event))
            cursor.execute(_MERGE_STAGED)

    def _write_redis(self) -> None:
        sets: list[tuple[str, list[tuple[int, str]]]] = []
        for customer_id, events in _group(self._customers).items():
            members = [(e.event_ms, store.encode_customer_member(e)) for e in events]
            sets.append((store.customer_key(self._prefix, customer_id), members))
        for terminal_id, known in _group(self._labels).items():
            members = [(x.label_ms, store.encode_label_member(x)) for x in known]
            sets.append((store.terminal_key(self._prefix, terminal_id), members))
        for device_id, events in _group(self._devices).items():
            members = [(e.event_ms, store.encode_device_member(e)) for e in events]
            sets.append((store.device_key(self._prefix, device_id), members))
        pipe = self._redis.pipeline(transaction=False)
        for keys, arguments in _script_calls(sets):
            self._add_trimmed(keys=keys, args=arguments, client=pipe)
        pipe.execute()


def _script_calls(
    sets: list[tuple[str, list[tuple[int, str]]]],
) -> Iterator[tuple[list[str], list[Any]]]:
    """Split sorted-set additions into the keys and arguments of script calls.

    A key with more than ``MEMBERS_PER_SCRIPT_CALL`` members is spread over
    several calls, which trim it the same way.
    """
    keys: list[str] = []
    arguments: list[Any] = []
    members_in_call = 0
    for key, members in sets:
        for start in range(0, len(members), MEMBERS_PER_SCRIPT_CALL):
            part = members[start : start + MEMBERS_PER_SCRIPT_CALL]
            if keys and (
                len(keys) == KEYS_PER_SCRIPT_CALL
                or members_in_call + len(part) > MEMBERS_PER_SCRIPT_CALL
            ):
                yield keys, [STATE_RETENTION_MS, store.KEY_TTL_SECONDS, *arguments]
                keys, arguments, members_in_call = [], [], 0
            keys.append(key)
            arguments.append(len(part))
            for score, member in part:
                arguments += [score, member]
            members_in_call += len(part)
    if keys:
        yield keys, [STATE_RETENTION_MS, store.KEY_TTL_SECONDS, *arguments]


def _group(pairs: Iterable[tuple[str, Any]]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for key, value in pairs:
        grouped[key].append(value)
    return grouped


def encode_change(
    kind: str, key: str, event: CustomerEvent | TerminalLabel | DeviceEvent
) -> str:
    """Encode one online-store write as a changelog record.

    Args:
        kind: ``"customer"``, ``"terminal"`` or ``"device"``, for a customer
            event, a terminal's label or a device event.
        key: the customer, terminal or device id.
        event: the event, written as the list of its fields.
    """
    return orjson.dumps({"kind": kind, "key": key, "event": list(event)}).decode()


# Changelog kinds, with the event each carries and the SQL view it comes from in
# changelog_query.
_CHANGE_SOURCES = (
    ("customer", "customer_id", CustomerEvent, "transactions", None),
    ("device", "device_id", DeviceEvent, "transactions", "device_id IS NOT NULL"),
    ("terminal", "terminal_id", TerminalLabel, "labels", None),
)


def changelog_query(transactions: str, labels: str) -> str:
    """Return a Flink SQL query of the changelog records of every event.

    Each row is one record in the JSON layout of :func:`encode_change`, built
    in the JVM: a customer change per transaction, a device change per
    transaction with a ``device_id``, and a terminal change per label. The event
    arrays list the event's fields in the order of its named tuple.

    Args:
        transactions: a view whose columns include those of
            :class:`~fraudcore.features.CustomerEvent` and
            :class:`~fraudcore.features.DeviceEvent`, and their keys.
        labels: a view with the columns of
            :class:`~fraudcore.features.TerminalLabel` and ``terminal_id``.
    """
    views = {"transactions": transactions, "labels": labels}
    selects = []
    for kind, key, event_type, view, condition in _CHANGE_SOURCES:
        fields = ", ".join(f"`{field}`" for field in event_type._fields)
        select = (
            f"SELECT JSON_OBJECT('kind' VALUE '{kind}', 'key' VALUE `{key}`, "
            f"'event' VALUE JSON_ARRAY({fields})) FROM `{views[view]}`"
        )
        if condition is not None:
            select += f" WHERE {condition}"
        selects.append(select)
    return " UNION ALL ".join(selects)


def apply_change(writer: OnlineStoreWriter, raw: bytes | str) -> None:
    """Queue the write of one changelog record in ``writer``.

    Raises:
        ValueError: if the record is not one :func:`encode_change` writes.
    """
    try:
        change = orjson.loads(raw)
        kind, key, fields = change["kind"], change["key"], change["event"]
        if kind == "customer":
            writer.add_customer_event(key, CustomerEvent(*fields))
        elif kind == "terminal":
            writer.add_terminal_label(key, TerminalLabel(*fields))
        elif kind == "device":
            writer.add_device_event(key, DeviceEvent(*fields))
        else:
            raise ValueError(f"unknown change kind {kind!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an online-store change record: {exc}") from exc
