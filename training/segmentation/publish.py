"""Publication of customer segments to the offline and online stores.

One segmentation run is one *version*, ``YYYYMMDDTHHMMSS.mmmZ-<hash>``: the UTC
time of the run to the millisecond and the first 12 hex digits of a SHA-256 over
the input table and the parameters. Versions therefore sort by time as text, and
re-running on the same input gives a new version with the same hash part.

Where each version goes (layout in :mod:`fraudcore.segments`):

* ``<offline_store>/segments/version=<v>/part.parquet``, read by
  :func:`load_segments` for training. The file's schema metadata key
  ``profiles_end`` contains the day at which the profiles behind the segments
  stopped (ISO date, not included), when the run had such a cut-off;
* PostgreSQL table ``customer_segments``;
* Redis hashes ``<prefix>:segment:<customer_id>``, read by the scorer with
  :func:`fraudcore.segments.segment_of` or its async variant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from fraudcore.segments import (
    REDIS_KEPT_VERSIONS,
    SEGMENTS_PG_SCHEMA,
    segment_key,
    versions_key,
)
from training.errors import InputDataError

log = logging.getLogger(__name__)

SEGMENTS_DIR = "segments"
PART_FILE = "part.parquet"
SEGMENT_COLUMNS = ("customer_id", "segmentation_version", "segment", "created_at")
REDIS_BATCH_SIZE = 1000
PROFILES_END_KEY = b"profiles_end"

_VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{12}$")

_UPSERT_SQL = """
INSERT INTO customer_segments (customer_id, segmentation_version, segment, created_at)
SELECT customer_id, segmentation_version, segment, created_at FROM segments_staging
ON CONFLICT (customer_id, segmentation_version)
DO UPDATE SET segment = EXCLUDED.segment, created_at = EXCLUDED.created_at
"""


def segmentation_version(
    table: pd.DataFrame, parameters: dict[str, Any], created_at: datetime
) -> str:
    """Name the version of a run from its time, input rows and parameters.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_rows, n_columns)
        The input table, identifiers included.
    parameters : dict
        JSON-serialisable parameters of the run.
    created_at : datetime.datetime
        Time of the run, timezone-aware.

    Returns
    -------
    str
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in table.columns]).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    moment = created_at.astimezone(UTC)
    stamp = f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z"
    return f"{stamp}-{digest.hexdigest()[:12]}"


def segment_rows(
    customer_ids: pd.Series, segments: Any, version: str, created_at: datetime
) -> pd.DataFrame:
    """Build the published rows, one per customer.

    Parameters
    ----------
    customer_ids : pandas.Series of shape (n_customers,)
    segments : array-like of shape (n_customers,)
    version : str
    created_at : datetime.datetime

    Returns
    -------
    pandas.DataFrame of shape (n_customers, 4)
        The columns of ``SEGMENT_COLUMNS``.

    Raises
    ------
    InputDataError
        If a customer id is missing or repeated.
    """
    ids = customer_ids.astype("string")
    if ids.isna().any() or ids.duplicated().any():
        example = ids[ids.isna() | ids.duplicated()].iloc[0]
        raise InputDataError(
            f"customer ids must be present and unique to publish segments, "
            f"got {example!r} missing or repeated."
        )
    return pd.DataFrame(
        {
            "customer_id": ids.astype(str).to_numpy(),
            "segmentation_version": version,
            "segment": pd.array(segments, dtype="int32"),
            "created_at": pd.Timestamp(created_at).tz_convert(UTC),
        }
    ).astype({"created_at": "datetime64[ms, UTC]"})


def write_offline_segments(
    offline_store: Path, rows: pd.DataFrame, profiles_end: date | None = None
) -> Path:
    """Write one version's rows to ``segments/version=<v>/part.parquet``.

    The file is written under a temporary name and then renamed, so readers
    never see a partial file. An existing file of the same version is replaced.

    Parameters
    ----------
    offline_store : Path
    rows : pandas.DataFrame of shape (n_customers, 4)
        As :func:`segment_rows` returns them, all of one version.
    profiles_end : datetime.date or None
        UTC day at which the transactions behind the segments stop (not
        included), stored in the schema metadata; None stores no cut-off.

    Returns
    -------
    Path
        The part file written.
    """
    version = str(rows["segmentation_version"].iloc[0])
    folder = Path(offline_store) / SEGMENTS_DIR / f"version={version}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(rows[list(SEGMENT_COLUMNS)], preserve_index=False)
    if profiles_end is not None:
        metadata = dict(table.schema.metadata or {})
        metadata[PROFILES_END_KEY] = profiles_end.isoformat().encode()
        table = table.replace_schema_metadata(metadata)
    temporary = folder / f".{PART_FILE}.tmp"
    pq.write_table(table, temporary)
    target = folder / PART_FILE
    os.replace(temporary, target)
    log.info("wrote %d segments of version %s to %s", len(rows), version, target)
    return target


def offline_versions(offline_store: Path) -> list[str]:
    """List the versions in the offline store, oldest first."""
    root = Path(offline_store) / SEGMENTS_DIR
    if not root.is_dir():
        return []
    names = [
        path.name.removeprefix("version=")
        for path in root.iterdir()
        if path.name.startswith("version=") and (path / PART_FILE).is_file()
    ]
    return sorted(names)


def load_segments(offline_store: Path, version: str | None = None) -> pd.DataFrame:
    """Read the segments of one version from the offline store.

    Parameters
    ----------
    offline_store : Path
        Root of the offline store.
    version : str or None
        The version to read; None reads the newest one.

    Returns
    -------
    pandas.DataFrame of shape (n_customers, 4)
        ``customer_id`` (str), ``segmentation_version`` (str), ``segment``
        (int32) and ``created_at`` (UTC timestamp).

    Raises
    ------
    InputDataError
        If the version is malformed, or the store has no segments, or none of
        that version.
    """
    available = offline_versions(offline_store)
    if version is not None and not is_version(version):
        raise InputDataError(
            f"segmentation version must look like YYYYMMDDTHHMMSS.mmmZ-<12 hex "
            "digits>, "
            f"got {version!r}."
        )
    if version is None:
        if not available:
            raise InputDataError(
                f"offline store {offline_store} has no segments; expected "
                f"{SEGMENTS_DIR}/version=<v>/{PART_FILE}, run the segmentation job."
            )
        version = available[-1]
    path = _part_path(offline_store, version)
    if not path.is_file():
        raise InputDataError(
            f"segmentation version {version!r} is not in {offline_store}; "
            f"expected one of {available}."
        )
    frame = pq.read_table(path).to_pandas()
    return frame.astype({"customer_id": str, "segmentation_version": str})


def read_profiles_end(offline_store: Path, version: str) -> date | None:
    """Read the profile cut-off stored with a version in the offline store.

    Returns
    -------
    datetime.date or None
        The UTC day at which the profiles stopped, not included; None when the
        version was published without a cut-off.

    Raises
    ------
    InputDataError
        If the version is not in the offline store.
    """
    path = _part_path(offline_store, version)
    if not path.is_file():
        raise InputDataError(
            f"segmentation version {version!r} is not in {offline_store}; "
            f"expected one of {offline_versions(offline_store)}."
        )
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(PROFILES_END_KEY)
    return None if value is None else date.fromisoformat(value.decode())


def write_postgres_segments(conn: psycopg.Connection[Any], rows: pd.DataFrame) -> int:
    """Upsert one version's rows into ``customer_segments`` and commit.

    Rows are copied into a temporary table and merged from there, so that
    publishing the same version twice replaces its rows.

    Returns
    -------
    int
        Number of rows written.
    """
    conn.execute(SEGMENTS_PG_SCHEMA)
    conn.execute(
        "CREATE TEMPORARY TABLE segments_staging "
        "(LIKE customer_segments INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    with conn.cursor() as cursor:
        with cursor.copy(
            "COPY segments_staging (customer_id, segmentation_version, segment, "
            "created_at) FROM STDIN"
        ) as copy:
            for record in _records(rows):
                copy.write_row(record)
        cursor.execute(_UPSERT_SQL)
        written = cursor.rowcount
    conn.commit()
    log.info("wrote %d segments to PostgreSQL table customer_segments", written)
    return written


def write_redis_segments(client: redis.Redis, prefix: str, rows: pd.DataFrame) -> int:
    """Write one version's rows to the customers' Redis hashes.

    The version is then added to the sorted set of versions, and versions
    beyond the newest ``REDIS_KEPT_VERSIONS`` are removed from every hash.

    Returns
    -------
    int
        Number of customers written.
    """
    version = str(rows["segmentation_version"].iloc[0])
    created_ms = int(pd.Timestamp(rows["created_at"].iloc[0]).timestamp() * 1000)
    for batch in _batches(rows):
        with client.pipeline(transaction=False) as pipe:
            for customer_id, segment in batch:
                pipe.hset(segment_key(prefix, customer_id), version, str(segment))
            pipe.execute()
    client.zadd(versions_key(prefix), {version: created_ms})
    log.info("wrote %d segments of version %s to Redis", len(rows), version)
    _trim_redis_versions(client, prefix)
    return len(rows)


def _part_path(offline_store: Path, version: str) -> Path:
    return Path(offline_store) / SEGMENTS_DIR / f"version={version}" / PART_FILE


def _records(rows: pd.DataFrame) -> Iterator[tuple[str, str, int, datetime]]:
    for customer_id, version, segment, created_at in rows[
        list(SEGMENT_COLUMNS)
    ].itertuples(index=False, name=None):
        yield str(customer_id), str(version), int(segment), created_at.to_pydatetime()


def _batches(rows: pd.DataFrame) -> Iterator[list[tuple[str, int]]]:
    pairs = list(
        zip(rows["customer_id"].astype(str), rows["segment"].astype(int), strict=True)
    )
    for start in range(0, len(pairs), REDIS_BATCH_SIZE):
        yield pairs[start : start + REDIS_BATCH_SIZE]


def _trim_redis_versions(client: redis.Redis, prefix: str) -> None:
    old: list[Any] = client.zrevrange(versions_key(prefix), REDIS_KEPT_VERSIONS, -1)  # type: ignore[assignment]
    if not old:
        return
    fields = [v.decode() if isinstance(v, bytes) else str(v) for v in old]
    pattern = _escape_glob(segment_key(prefix, "")) + "*"
    batch: list[Any] = []
    for key in client.scan_iter(match=pattern, count=REDIS_BATCH_SIZE):
        batch.append(key)
        if len(batch) == REDIS_BATCH_SIZE:
            _delete_fields(client, batch, fields)
            batch.clear()
    if batch:
        _delete_fields(client, batch, fields)
    client.zrem(versions_key(prefix), *fields)
    log.info("removed segmentation versions %s from Redis", fields)


def _delete_fields(client: redis.Redis, keys: list[Any], fields: list[str]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hdel(key, *fields)
        pipe.execute()


def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def is_version(text: str) -> bool:
    """Tell whether a text has the shape of a segmentation version."""
    return bool(_VERSION_PATTERN.match(text))
