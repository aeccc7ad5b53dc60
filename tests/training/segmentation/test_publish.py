"""Tests of segment publication: versions, the offline store, PostgreSQL, Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
import redis
import redis.asyncio

from fraudcore.segments import (
    REDIS_KEPT_VERSIONS,
    SEGMENT_PG_SQL,
    newest_version,
    segment_key,
    segment_of,
    segment_of_async,
)
from fraudcore.settings import PlatformSettings
from training.errors import InputDataError
from training.segmentation.publish import (
    is_version,
    load_segments,
    offline_versions,
    read_profiles_end,
    segment_rows,
    segmentation_version,
    write_offline_segments,
    write_postgres_segments,
    write_redis_segments,
)

CREATED = datetime(2018, 8, 15, 6, 0, 0, 250_000, tzinfo=UTC)
TABLE = pd.DataFrame({"customer_id": ["1", "2", "3"], "x": [0.5, 1.5, 9.0]})


def _rows(version: str, segments: list[int] | None = None) -> pd.DataFrame:
    return segment_rows(
        pd.Series(["1", "2", "3"]), segments or [0, 1, 0], version, CREATED
    )


def _version(offset_seconds: int = 0) -> str:
    return segmentation_version(
        TABLE, {"run": uuid.uuid4().hex}, CREATED + timedelta(seconds=offset_seconds)
    )


def test_version_shape_and_time() -> None:
    version = segmentation_version(TABLE, {"seed": 0}, CREATED)

    assert version.startswith("20180815T060000.250Z-")
    assert is_version(version)


def test_version_hash_follows_input_and_parameters() -> None:
    base = segmentation_version(TABLE, {"seed": 0}, CREATED)
    later = segmentation_version(TABLE, {"seed": 0}, CREATED + timedelta(seconds=1))
    other_seed = segmentation_version(TABLE, {"seed": 1}, CREATED)
    other_rows = segmentation_version(
        TABLE.assign(x=[0.5, 1.5, 9.5]), {"seed": 0}, CREATED
    )

    assert later != base
    assert later[-12:] == base[-12:]
    assert other_seed[-12:] != base[-12:]
    assert other_rows[-12:] != base[-12:]


def test_segment_rows_reject_repeated_ids() -> None:
    with pytest.raises(InputDataError, match="present and unique"):
        segment_rows(pd.Series(["1", "1"]), [0, 1], "v", CREATED)


def test_offline_segments_round_trip(tmp_path: Path) -> None:
    version = _version()

    path = write_offline_segments(tmp_path, _rows(version))
    loaded = load_segments(tmp_path, version)

    assert path == tmp_path / "segments" / f"version={version}" / "part.parquet"
    assert loaded["customer_id"].tolist() == ["1", "2", "3"]
    assert loaded["segment"].tolist() == [0, 1, 0]
    assert (loaded["segmentation_version"] == version).all()
    assert (loaded["created_at"] == pd.Timestamp(CREATED)).all()
    assert list(path.parent.iterdir()) == [path]


def test_offline_segments_keep_profiles_end(tmp_path: Path) -> None:
    cut, uncut = _version(0), _version(60)
    write_offline_segments(tmp_path, _rows(cut), date(2018, 8, 1))
    write_offline_segments(tmp_path, _rows(uncut))

    assert read_profiles_end(tmp_path, cut) == date(2018, 8, 1)
    assert read_profiles_end(tmp_path, uncut) is None
    assert load_segments(tmp_path, cut)["segment"].tolist() == [0, 1, 0]
    with pytest.raises(InputDataError, match="is not in"):
        read_profiles_end(tmp_path, _version(120))


def test_load_segments_newest_by_default(tmp_path: Path) -> None:
    old, new = _version(0), _version(60)
    write_offline_segments(tmp_path, _rows(new, [1, 1, 1]))
    write_offline_segments(tmp_path, _rows(old, [0, 0, 0]))

    assert offline_versions(tmp_path) == [old, new]
    assert load_segments(tmp_path)["segment"].tolist() == [1, 1, 1]


def test_load_segments_unknown_version(tmp_path: Path) -> None:
    write_offline_segments(tmp_path, _rows(_version()))

    with pytest.raises(InputDataError, match="is not in"):
        load_segments(tmp_path, _version(5))


def test_load_segments_malformed_version(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="must look like"):
        load_segments(tmp_path, "../features")


def test_load_segments_empty_store(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="has no segments"):
        load_segments(tmp_path)


@pytest.fixture
def segments_conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Connection to this session's database, which is dropped after the session."""
    with psycopg.connect(pg_dsn) as conn:
        yield conn
        conn.rollback()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix(test_settings: PlatformSettings) -> str:
    """Redis prefix inside this session's own, removed when the session ends."""
    return f"{test_settings.redis_prefix}:{uuid.uuid4().hex[:6]}"


@pytest.mark.integration
def test_postgres_segments_written(segments_conn: psycopg.Connection) -> None:
    version = _version()

    written = write_postgres_segments(segments_conn, _rows(version))

    assert written == 3
    rows = segments_conn.execute(
        "SELECT customer_id, segment, created_at FROM customer_segments "
        "WHERE segmentation_version = %s ORDER BY customer_id",
        (version,),
    ).fetchall()
    assert rows == [("1", 0, CREATED), ("2", 1, CREATED), ("3", 0, CREATED)]


@pytest.mark.integration
def test_postgres_same_version_replaced(segments_conn: psycopg.Connection) -> None:
    version = _version()
    write_postgres_segments(segments_conn, _rows(version))

    write_postgres_segments(segments_conn, _rows(version, [2, 2, 2]))

    count, segments = segments_conn.execute(
        "SELECT count(*), array_agg(DISTINCT segment) FROM customer_segments "
        "WHERE segmentation_version = %s",
        (version,),
    ).fetchone()
    assert count == 3
    assert segments == [2]


@pytest.mark.integration
def test_postgres_lookup_query(segments_conn: psycopg.Connection) -> None:
    first, second = _version(0), _version(1)
    write_postgres_segments(segments_conn, _rows(first, [0, 1, 0]))
    write_postgres_segments(segments_conn, _rows(second, [3, 3, 4]))

    found = segments_conn.execute(SEGMENT_PG_SQL, ("2", first)).fetchone()
    other = segments_conn.execute(SEGMENT_PG_SQL, ("3", second)).fetchone()
    missing = segments_conn.execute(SEGMENT_PG_SQL, ("9", first)).fetchone()

    assert found == (1,)
    assert other == (4,)
    assert missing is None


@pytest.mark.integration
def test_redis_segments_lookup(redis_client: redis.Redis, prefix: str) -> None:
    version = _version()

    written = write_redis_segments(redis_client, prefix, _rows(version))

    assert written == 3
    assert segment_of(redis_client, prefix, "2", version) == 1
    assert segment_of(redis_client, prefix, "3", version) == 0
    assert segment_of(redis_client, prefix, "9", version) is None
    assert segment_of(redis_client, prefix, "2", _version(9)) is None
    assert newest_version(redis_client, prefix) == version


@pytest.mark.integration
def test_redis_async_lookup(
    redis_client: redis.Redis, redis_url: str, prefix: str
) -> None:
    version = _version()
    write_redis_segments(redis_client, prefix, _rows(version))

    async def lookup() -> tuple[int | None, int | None]:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            found = await segment_of_async(client, prefix, "2", version)
            missing = await segment_of_async(client, prefix, "9", version)
        finally:
            await client.aclose()
        return found, missing

    assert asyncio.run(lookup()) == (1, None)


@pytest.mark.integration
def test_redis_keeps_newest_versions(redis_client: redis.Redis, prefix: str) -> None:
    versions = [_version(offset) for offset in range(REDIS_KEPT_VERSIONS + 1)]

    for number, version in enumerate(versions):
        rows = _rows(version, [number] * 3)
        # Publication times follow the version times.
        rows["created_at"] = pd.Timestamp(CREATED + timedelta(seconds=number))
        write_redis_segments(redis_client, prefix, rows)

    fields = redis_client.hgetall(segment_key(prefix, "1"))
    kept_versions = {field.decode() for field in fields}
    assert kept_versions == set(versions[1:])
    assert segment_of(redis_client, prefix, "1", versions[-1]) == REDIS_KEPT_VERSIONS
    assert segment_of(redis_client, prefix, "1", versions[0]) is None
    assert newest_version(redis_client, prefix) == versions[-1]
