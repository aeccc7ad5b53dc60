"""Session fixtures: the real servers the integration tests run against.

The stack is started once per test session (servers already running are reused
and left running). Every session gets its own topics, Redis key prefix and
PostgreSQL database, and removes them when it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import redis
from psycopg import sql

from deploy import stack
from fraudcore.settings import PlatformSettings
from streaming import replay


@pytest.fixture(scope="session")
def run_id() -> str:
    """Short random id that keeps this session's names apart from others."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def base_settings() -> Iterator[PlatformSettings]:
    """Settings of the running stack, started here when it is not up yet."""
    settings = PlatformSettings()
    started = stack.up(settings)
    yield settings
    stack.down(settings, started)


@contextmanager
def database(base_dsn: str, name: str) -> Iterator[str]:
    """Create the PostgreSQL database ``name`` for the block; yield its DSN."""
    with psycopg.connect(base_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield base_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(base_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


@pytest.fixture(scope="session")
def pg_dsn(base_settings: PlatformSettings, run_id: str) -> Iterator[str]:
    """DSN of a PostgreSQL database created for this session and dropped after it."""
    with database(base_settings.pg_dsn, f"fraud_test_{run_id}") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_url(base_settings: PlatformSettings) -> str:
    """URL of the stack's Redis server."""
    return base_settings.redis_url


@pytest.fixture(scope="session")
def kafka_bootstrap(base_settings: PlatformSettings) -> str:
    """Bootstrap address of the stack's Kafka broker."""
    return base_settings.kafka_bootstrap


@pytest.fixture(scope="session")
def test_settings(
    base_settings: PlatformSettings,
    pg_dsn: str,
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PlatformSettings]:
    """Settings with this session's own topics, Redis prefix, database and stores."""
    prefix = f"test-{run_id}"
    state = Path(tmp_path_factory.mktemp("state"))
    settings = base_settings.namespaced(prefix, state / "offline").model_copy(
        update={"pg_dsn": pg_dsn, "model_dir": state / "models"}
    )
    stack.create_topics(settings)
    yield settings
    delete_topics(settings)
    delete_redis_keys(settings)


def delete_topics(settings: PlatformSettings) -> None:
    """Delete every topic of ``settings``."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.delete_topics(settings.topics()).values():
        future.result(timeout=30)


def delete_redis_keys(settings: PlatformSettings) -> None:
    """Delete every Redis key under the prefix of ``settings``."""
    client = redis.Redis.from_url(settings.redis_url)
    batch = []
    for key in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def settings_environment(settings: PlatformSettings) -> dict[str, str]:
    """Return ``os.environ`` plus ``FRAUD_*`` variables that reproduce ``settings``."""
    return dict(os.environ) | settings.environment()


@dataclass(frozen=True)
class StreamedSpan:
    """The default replay span after the feature job has consumed it."""

    settings: PlatformSettings
    transactions: pd.DataFrame
    replayed: int


@pytest.fixture(scope="session")
def streamed_span(test_settings: PlatformSettings) -> StreamedSpan:
    """Replay the default span of the real dataset and run the feature job on it.

    Runs once per session and takes a few minutes on two cores. The feature and
    parity tests read what it leaves in the offline and online stores.
    """
    path = test_settings.data_dir / "transactions.parquet"
    if not path.exists():
        pytest.skip(f"the dataset {path} is not available")
    frame = replay.load_source(path, simulate_if_missing=False).frame
    result = replay.replay(test_settings, frame)
    environment = settings_environment(test_settings)
    environment["FRAUD_CONSUMER_GROUP"] = f"{test_settings.redis_prefix}-features"
    environment["FRAUD_CHECKPOINT_DIR"] = str(
        test_settings.offline_store.parent / "checkpoints"
    )
    subprocess.run(
        [sys.executable, "-m", "streaming.features_job", "--bounded"],
        env=environment,
        check=True,
        timeout=1800,
    )
    span = replay.select_span(frame, replay.DEFAULT_START, replay.DEFAULT_END)
    return StreamedSpan(test_settings, span, result.transactions)
