"""Layout of the online feature store: Redis keys and their PostgreSQL copy.

Redis keeps one sorted set per customer (its transactions, scored by event time)
and one per terminal (its known labels, scored by the time each became known).
PostgreSQL keeps the same events in two tables; the scorer reads them when Redis
misses or fails, and computes the same features from them.
"""

from __future__ import annotations

from fraudcore.features import CustomerEvent, TerminalLabel

# Redis drops a key that has not been written for this many seconds of wall time.
# Event-time trimming (STATE_RETENTION_MS) keeps live keys small; the TTL removes
# keys of customers and terminals that went quiet.
KEY_TTL_SECONDS = 45 * 86_400

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS customer_events (
    customer_id    text             NOT NULL,
    event_ms       bigint           NOT NULL,
    transaction_id text             NOT NULL,
    amount         double precision NOT NULL,
    PRIMARY KEY (customer_id, event_ms, transaction_id)
);
CREATE TABLE IF NOT EXISTS terminal_labels (
    terminal_id    text     NOT NULL,
    label_ms       bigint   NOT NULL,
    transaction_id text     NOT NULL,
    fraud          smallint NOT NULL,
    PRIMARY KEY (terminal_id, label_ms, transaction_id)
);
CREATE INDEX IF NOT EXISTS customer_events_event_ms ON customer_events (event_ms);
CREATE INDEX IF NOT EXISTS terminal_labels_label_ms ON terminal_labels (label_ms);
"""


def customer_key(prefix: str, customer_id: str) -> str:
    """Return the Redis key of a customer's transactions."""
    return f"{prefix}:customer:{customer_id}"


def terminal_key(prefix: str, terminal_id: str) -> str:
    """Return the Redis key of a terminal's known labels."""
    return f"{prefix}:terminal:{terminal_id}"


def encode_customer_member(event: CustomerEvent) -> str:
    """Encode a customer event as a sorted-set member (``repr`` keeps floats exact)."""
    return f"{event.transaction_id}|{event.amount!r}"


def decode_customer_member(member: str | bytes, score: float) -> CustomerEvent:
    """Decode a member written by :func:`encode_customer_member`."""
    text = member.decode() if isinstance(member, bytes) else member
    transaction_id, _, amount = text.rpartition("|")
    return CustomerEvent(int(score), transaction_id, float(amount))


def encode_label_member(label: TerminalLabel) -> str:
    """Encode a terminal label as a sorted-set member."""
    return f"{label.transaction_id}|{label.fraud}"


def decode_label_member(member: str | bytes, score: float) -> TerminalLabel:
    """Decode a member written by :func:`encode_label_member`."""
    text = member.decode() if isinstance(member, bytes) else member
    transaction_id, _, fraud = text.rpartition("|")
    return TerminalLabel(int(score), transaction_id, int(fraud))
