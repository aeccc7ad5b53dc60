"""Layout of the online feature store: Redis keys and their PostgreSQL copy.

Redis keeps one sorted set per customer (its transactions, scored by event time),
one per terminal (its known labels, scored by the time each became known) and
one per device (its transactions, scored by event time). PostgreSQL keeps the
same events in three tables; the scorer reads them when Redis misses or fails,
and computes the same features from them.

Members of the customer and device sets are JSON arrays, because transaction,
terminal and customer ids are free text that may contain any separator.
Decoding accepts exactly the shapes written here and raises
:class:`InvalidMemberError` on anything else, such as members of an older layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from fraudcore.features import (
    CustomerEvent,
    CustomerEventTuple,
    DeviceEvent,
    DeviceEventTuple,
    TerminalLabel,
    TerminalLabelTuple,
)

# Redis drops a key that has not been written for this many seconds of wall time.
# Event-time trimming (STATE_RETENTION_MS) keeps live keys small; the TTL removes
# keys of customers, terminals and devices that went quiet.
KEY_TTL_SECONDS = 45 * 86_400

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS customer_events (
    customer_id    text             NOT NULL,
    event_ms       bigint           NOT NULL,
    transaction_id text             NOT NULL,
    amount         double precision NOT NULL,
    terminal_id    text             NOT NULL,
    PRIMARY KEY (customer_id, event_ms, transaction_id)
);
CREATE TABLE IF NOT EXISTS terminal_labels (
    terminal_id    text     NOT NULL,
    label_ms       bigint   NOT NULL,
    transaction_id text     NOT NULL,
    fraud          smallint NOT NULL,
    PRIMARY KEY (terminal_id, label_ms, transaction_id)
);
CREATE TABLE IF NOT EXISTS device_events (
    device_id      text   NOT NULL,
    event_ms       bigint NOT NULL,
    transaction_id text   NOT NULL,
    customer_id    text   NOT NULL,
    PRIMARY KEY (device_id, event_ms, transaction_id)
);
CREATE INDEX IF NOT EXISTS customer_events_event_ms ON customer_events (event_ms);
CREATE INDEX IF NOT EXISTS terminal_labels_label_ms ON terminal_labels (label_ms);
CREATE INDEX IF NOT EXISTS device_events_event_ms ON device_events (event_ms);
"""

# Columns of each table in PG_SCHEMA, in order. CREATE TABLE IF NOT EXISTS leaves
# a table of an older layout as it is, so callers compare against these.
PG_COLUMNS = {
    "customer_events": (
        "customer_id",
        "event_ms",
        "transaction_id",
        "amount",
        "terminal_id",
    ),
    "terminal_labels": ("terminal_id", "label_ms", "transaction_id", "fraud"),
    "device_events": ("device_id", "event_ms", "transaction_id", "customer_id"),
}


class InvalidMemberError(ValueError):
    """Sorted-set member whose layout differs from this module's."""


def customer_key(prefix: str, customer_id: str) -> str:
    """Return the Redis key of a customer's transactions."""
    return f"{prefix}:customer:{customer_id}"


def terminal_key(prefix: str, terminal_id: str) -> str:
    """Return the Redis key of a terminal's known labels."""
    return f"{prefix}:terminal:{terminal_id}"


def device_key(prefix: str, device_id: str) -> str:
    """Return the Redis key of a device's transactions."""
    return f"{prefix}:device:{device_id}"


def encode_customer_member(event: CustomerEvent) -> str:
    """Encode a customer event as ``[transaction_id, terminal_id, amount]``.

    orjson writes floats as their shortest exact representation, so the amount
    decodes to the same float.
    """
    fields = [event.transaction_id, event.terminal_id, float(event.amount)]
    return orjson.dumps(fields).decode()


def decode_customer_member(member: str | bytes, score: float) -> CustomerEvent:
    """Decode a member written by :func:`encode_customer_member`.

    Raises:
        InvalidMemberError: if the member has another layout.
    """
    return CustomerEvent(*decode_customer_members([member, score])[0])


def decode_customer_members(
    flat: Sequence[str | bytes | float],
) -> list[CustomerEventTuple]:
    """Decode ``ZRANGE ... WITHSCORES`` output of a customer key into event tuples.

    ``flat`` alternates members and scores, as Redis returns them. Scores are
    event times in whole milliseconds. The scorer decodes a customer's whole
    window for every request, so the checks are inlined.

    Raises:
        InvalidMemberError: if a member has another layout, or its score is not
            an integer.
    """
    events: list[CustomerEventTuple] = []
    append = events.append
    loads = orjson.loads
    pairs = iter(flat)
    member: object = None
    try:
        for member, score in zip(pairs, pairs, strict=True):
            fields = loads(member)  # type: ignore[arg-type]
            if type(fields) is not list or len(fields) != 3:
                raise _invalid(member, "a JSON array of 3 fields")
            transaction_id, terminal_id, amount = fields
            if not (
                type(transaction_id) is str
                and type(terminal_id) is str
                and type(amount) is float
            ):
                raise _invalid(member, "[transaction_id, terminal_id, amount]")
            append((int(score), transaction_id, amount, terminal_id))
    except InvalidMemberError:
        raise
    except ValueError:
        # The member is not JSON, or its score is not an integer.
        raise _invalid(member, "a JSON array of 3 fields") from None
    return events


def encode_device_member(event: DeviceEvent) -> str:
    """Encode a device event as ``[transaction_id, customer_id]``."""
    return orjson.dumps([event.transaction_id, event.customer_id]).decode()


def decode_device_members(
    flat: Sequence[str | bytes | float],
) -> list[DeviceEventTuple]:
    """Decode ``ZRANGE ... WITHSCORES`` output of a device key into event tuples.

    Raises:
        InvalidMemberError: if a member has another layout.
    """
    events: list[DeviceEventTuple] = []
    pairs = iter(flat)
    for member, score in zip(pairs, pairs, strict=True):
        transaction_id, customer_id = _json_array(member, 2)
        if not (isinstance(transaction_id, str) and isinstance(customer_id, str)):
            raise _invalid(member, "[transaction_id, customer_id]")
        events.append((int(float(score)), transaction_id, customer_id))
    return events


def encode_label_member(label: TerminalLabel) -> str:
    """Encode a terminal label as a sorted-set member."""
    return f"{label.transaction_id}|{label.fraud}"


def decode_label_member(member: str | bytes, score: float) -> TerminalLabel:
    """Decode a member written by :func:`encode_label_member`.

    Raises:
        InvalidMemberError: if the member has another layout.
    """
    return TerminalLabel(*decode_label_members([member, score])[0])


def decode_label_members(
    flat: Sequence[str | bytes | float],
) -> list[TerminalLabelTuple]:
    """Decode ``ZRANGE ... WITHSCORES`` output of a terminal key into label tuples.

    Raises:
        InvalidMemberError: if a member is not ``transaction_id|fraud`` with a
            fraud of 0 or 1, or its score is not an integer.
    """
    labels: list[TerminalLabelTuple] = []
    append = labels.append
    pairs = iter(flat)
    member: object = None
    try:
        for member, score in zip(pairs, pairs, strict=True):
            text = member.decode() if type(member) is bytes else member
            transaction_id, _, fraud = text.rpartition("|")  # type: ignore[union-attr]
            if not transaction_id or fraud not in ("0", "1"):
                raise _invalid(member, "transaction_id|fraud")
            append((int(score), transaction_id, int(fraud)))
    except InvalidMemberError:
        raise
    except (AttributeError, UnicodeDecodeError, ValueError):
        # Not text, or a score that is not an integer.
        raise _invalid(member, "transaction_id|fraud") from None
    return labels


def _json_array(member: str | bytes | float, length: int) -> list[object]:
    fields = None
    if isinstance(member, str | bytes):
        try:
            fields = orjson.loads(member)
        except orjson.JSONDecodeError:
            pass
    if not isinstance(fields, list) or len(fields) != length:
        raise _invalid(member, f"a JSON array of {length} fields")
    return fields


def _invalid(member: object, expected: str) -> InvalidMemberError:
    return InvalidMemberError(
        f"sorted-set member {member!r} is not {expected}; the key was written "
        "by another version of the feature job, which must rebuild the store."
    )
