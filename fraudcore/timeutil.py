"""Event-time parsing: the one place that decides how time zones are read."""

from __future__ import annotations

from datetime import UTC, datetime

# Timestamps without a zone (the dataset's TX_DATETIME is naive) are declared UTC
# here and nowhere else.
NAIVE_TIMESTAMP_ZONE = UTC

MS_PER_DAY = 86_400_000

# Event times outside this range are rejected as corrupt rather than processed.
MIN_EVENT_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_EVENT_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)


def parse_timestamp_ms(value: str) -> int:
    """Parse an ISO-8601 timestamp into epoch milliseconds, reading naive ones as UTC.

    Raises:
        ValueError: if the text is not ISO-8601 or lies outside 2000..2100.
    """
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=NAIVE_TIMESTAMP_ZONE)
    epoch_ms = int(parsed.timestamp() * 1000)
    if not MIN_EVENT_MS <= epoch_ms < MAX_EVENT_MS:
        raise ValueError(f"timestamp {value!r} is outside 2000-01-01..2100-01-01")
    return epoch_ms


def format_timestamp_ms(epoch_ms: int) -> str:
    """Format epoch milliseconds as ISO-8601 UTC with a trailing ``Z``."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_datetime(epoch_ms: int) -> datetime:
    """Return the aware UTC datetime of epoch milliseconds."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
