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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from deploy import stack
from deploy.stack import created_database
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


@pytest.fixture(scope="session")
def pg_dsn(base_settings: PlatformSettings, run_id: str) -> Iterator[str]:
    """DSN of a PostgreSQL database created for this session and dropped after it."""
    with created_database(base_settings, f"fraud_test_{run_id}") as dsn:
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
    stack.delete_topics(settings, settings.topics())
    stack.delete_redis_keys(settings)


def settings_environment(settings: PlatformSettings) -> dict[str, str]:
    """Return ``os.environ`` plus ``FRAUD_*`` variables that reproduce ``settings``."""
    return dict(os.environ) | settings.environment()


@dataclass(frozen=True)
class StreamedSpan:
    """The default replay span after the feature job has consumed it."""

    settings: PlatformSettings
    transactions: pd.DataFrame
    replayed: int


def run_bounded_feature_job(settings: PlatformSettings, checkpoints: Path) -> None:
    """Run the feature job until it has consumed what the topics contain now."""
    environment = settings_environment(settings)
    environment["FRAUD_CONSUMER_GROUP"] = f"{settings.redis_prefix}-features"
    environment["FRAUD_CHECKPOINT_DIR"] = str(checkpoints)
    subprocess.run(
        [sys.executable, "-m", "streaming.features_job", "--bounded"],
        env=environment,
        check=True,
        timeout=1800,
    )


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
    run_bounded_feature_job(
        test_settings, test_settings.offline_store.parent / "checkpoints"
    )
    span = replay.select_span(frame, replay.DEFAULT_START, replay.DEFAULT_END)
    return StreamedSpan(test_settings, span, result.transactions)


@pytest.fixture(scope="session")
def simulated_span(
    test_settings: PlatformSettings, run_id: str
) -> Iterator[StreamedSpan]:
    """Replay a small simulated span with device ids and run the feature job on it.

    The dataset has no devices, so the device features are checked on these
    rows: about a thousand transactions over 12 days, in topics, Redis keys, a
    database and stores of their own, because their ids overlap the dataset's.
    """
    from streaming.simulator import add_device_ids, simulate_transactions

    prefix = f"{test_settings.redis_prefix}-devices"
    state = test_settings.offline_store.parent / "devices"
    with created_database(test_settings, f"fraud_test_{run_id}_devices") as dsn:
        settings = test_settings.namespaced(prefix, state / "offline")
        settings = settings.model_copy(update={"pg_dsn": dsn})
        stack.create_topics(settings)
        try:
            frame = simulate_transactions(
                n_customers=40, n_terminals=60, n_days=12, seed=5, radius=30.0
            )
            frame = add_device_ids(frame, seed=5)
            days = frame["TX_DATETIME"].dt.date
            result = replay.replay(settings, frame, days.min(), days.max())
            run_bounded_feature_job(settings, state / "checkpoints")
            yield StreamedSpan(settings, frame, result.transactions)
        finally:
            stack.delete_topics(settings, settings.topics())
            stack.delete_redis_keys(settings)
