"""Layout of the customer segments in the online stores, and their lookup.

The segmentation job (:mod:`training.segmentation`) assigns every customer a
segment id under a segmentation version, and writes the same rows to three
places:

* Redis: one hash per customer, ``<prefix>:segment:<customer_id>``, with one
  field per segmentation version whose value is the segment id in decimal text.
  The sorted set ``<prefix>:segmentation:versions`` contains the published
  versions, scored by publication time in epoch ms, so its highest member is
  the newest. Only the newest ``REDIS_KEPT_VERSIONS`` versions stay in Redis.
* PostgreSQL: the table ``customer_segments`` below, which keeps every version.
* The offline store: ``<offline_store>/segments/version=<v>/part.parquet``.

A model trained with the segments of version ``v`` must be served with the
segments of the same version, so every lookup takes the version explicitly.

Such a model takes one more input after ``MODEL_INPUTS``: ``CUSTOMER_SEGMENT``,
the segment id as a number, or ``NO_SEGMENT`` for a customer without a segment
in that version. Training and the scorer use the same default.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from fraudcore.features import MODEL_INPUTS

# Versions older than the newest few are removed from Redis at publication, so
# that a model trained on a recent version keeps finding its segments while the
# hashes do not grow with every run. PostgreSQL and Parquet keep every version.
REDIS_KEPT_VERSIONS = 3

CUSTOMER_SEGMENT = "CUSTOMER_SEGMENT"
# Segment ids are 0, 1, ..., so -1 is no segment's id. Trees can split it off
# with one threshold, below every real id.
NO_SEGMENT = -1
SEGMENTED_MODEL_INPUTS = (*MODEL_INPUTS, CUSTOMER_SEGMENT)

SEGMENTS_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS customer_segments (
    customer_id          text        NOT NULL,
    segmentation_version text        NOT NULL,
    segment              integer     NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, segmentation_version)
);
CREATE INDEX IF NOT EXISTS customer_segments_version
    ON customer_segments (segmentation_version);
"""

# The scorer's PostgreSQL fallback: parameters (customer_id, segmentation_version).
SEGMENT_PG_SQL = """
SELECT segment FROM customer_segments
WHERE customer_id = %s AND segmentation_version = %s
"""


def model_inputs(segmentation_version: str | None) -> tuple[str, ...]:
    """Return the input names of a model trained with or without segments."""
    return MODEL_INPUTS if segmentation_version is None else SEGMENTED_MODEL_INPUTS


def segment_key(prefix: str, customer_id: str) -> str:
    """Return the Redis key of a customer's segments, one hash field per version."""
    return f"{prefix}:segment:{customer_id}"


def versions_key(prefix: str) -> str:
    """Return the Redis key of the sorted set of published segmentation versions."""
    return f"{prefix}:segmentation:versions"


def decode_segment(value: str | bytes | None) -> int | None:
    """Decode a hash field value written by the segmentation job."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    return int(text)


def segment_of(
    client: redis.Redis, prefix: str, customer_id: str, version: str
) -> int | None:
    """Read a customer's segment under ``version`` from Redis.

    Returns None when the customer has no segment in that version: a customer
    first seen after the segmentation ran, or a version no longer kept in Redis.
    """
    value = client.hget(segment_key(prefix, customer_id), version)
    return decode_segment(value)  # type: ignore[arg-type]


async def segment_of_async(
    client: redis.asyncio.Redis, prefix: str, customer_id: str, version: str
) -> int | None:
    """Read a customer's segment under ``version`` with a ``redis.asyncio`` client.

    Returns None in the same cases as :func:`segment_of`.
    """
    value = await client.hget(segment_key(prefix, customer_id), version)  # type: ignore[misc]
    return decode_segment(value)


def newest_version(client: redis.Redis, prefix: str) -> str | None:
    """Return the newest segmentation version published to Redis, or None."""
    members = client.zrevrange(versions_key(prefix), 0, 0)
    if not members:
        return None
    member: Any = members[0]  # type: ignore[index]
    return member.decode() if isinstance(member, bytes) else str(member)
