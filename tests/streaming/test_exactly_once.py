"""A feature job killed mid-replay and resumed ends where an uninterrupted run ends.

Two runs consume the same generated transactions and labels from topics of
their own, each with its own offline store, Redis prefix and PostgreSQL
database. Both jobs are unbounded, as in production. Closing transactions and
labels a day after the others push the watermark past every real event. A run
is complete once every transaction has its offline row and the loader has
written every change. The first run goes straight to completion. The second is
killed (SIGKILL to its process group, JVM included) once its first Parquet file
is committed, then resumed from its newest completed checkpoint. Both runs must
leave one offline row per transaction and equal Redis and PostgreSQL contents.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow.dataset as ds
import pytest
import redis
from confluent_kafka import Producer
from psycopg import sql

from deploy import stack
from fraudcore import store
from fraudcore.features import LABEL_DELAY_DAYS
from fraudcore.schema import LabelRecord, TransactionRecord, encode
from fraudcore.settings import PlatformSettings
from fraudcore.timeutil import MS_PER_DAY, format_timestamp_ms
from streaming import replay
from streaming.simulator import add_device_ids, simulate_transactions
from tests.conftest import (
    created_database,
    settings_environment,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST_DAY = date(2018, 4, 1)
LAST_DAY = date(2018, 5, 10)
CHECKPOINT_INTERVAL_MS = 1_000
RUN_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    """About 22,000 generated transactions over 40 days, most with a device."""
    frame = simulate_transactions(
        n_customers=300, n_terminals=600, start_date=FIRST_DAY, n_days=40, seed=7
    )
    return replay.select_span(add_device_ids(frame, seed=7), FIRST_DAY, LAST_DAY)


def _run_settings(
    test_settings: PlatformSettings, name: str, pg_dsn: str
) -> PlatformSettings:
    prefix = f"{test_settings.redis_prefix}-{name}"
    offline = test_settings.offline_store.parent / f"{name}-offline"
    settings = test_settings.namespaced(prefix, offline)
    return settings.model_copy(update={"pg_dsn": pg_dsn})


@pytest.fixture(scope="module")
def runs(
    test_settings: PlatformSettings,
    base_settings: PlatformSettings,
    run_id: str,
    transactions: pd.DataFrame,
) -> Iterator[tuple[PlatformSettings, PlatformSettings]]:
    """Settings of the uninterrupted and the killed run, with their data replayed."""
    with ExitStack() as cleanup:
        settings = []
        for name in ("whole", "killed"):
            name_of_db = f"fraud_test_{run_id}_{name}"
            dsn = cleanup.enter_context(created_database(base_settings, name_of_db))
            run_settings = _run_settings(test_settings, name, dsn)
            cleanup.callback(stack.delete_redis_keys, run_settings)
            cleanup.callback(stack.delete_topics, run_settings, run_settings.topics())
            stack.create_topics(run_settings)
            replay.replay(run_settings, transactions, FIRST_DAY, LAST_DAY)
            _produce_closing_events(run_settings, transactions)
            settings.append(run_settings)
        yield settings[0], settings[1]


def _produce_closing_events(settings: PlatformSettings, frame: pd.DataFrame) -> None:
    """Produce a transaction and a label after every label of ``frame``.

    One of each goes to every partition, so the watermark passes every real
    event without waiting for idle partitions. Their keys have no other events.
    """
    last_label_ms = int(frame["TX_DATETIME"].max().value // 1_000_000)
    last_label_ms += LABEL_DELAY_DAYS * MS_PER_DAY
    closing_ms = last_label_ms + MS_PER_DAY
    timestamp = format_timestamp_ms(closing_ms)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for partition in range(stack.TOPIC_PARTITIONS):
        transaction = TransactionRecord(
            transaction_id=f"closing-{partition}",
            customer_id=f"closing-customer-{partition}",
            terminal_id=f"closing-terminal-{partition}",
            amount=1.0,
            timestamp=timestamp,
        )
        label = LabelRecord(
            transaction_id=f"closing-labelled-{partition}",
            customer_id=f"closing-customer-{partition}",
            terminal_id=f"closing-labelled-terminal-{partition}",
            transaction_timestamp=timestamp,
            label_timestamp=timestamp,
            fraud=0,
        )
        for topic, record in (
            (settings.transactions_topic, transaction),
            (settings.labels_topic, label),
        ):
            producer.produce(
                topic, value=encode(record), partition=partition, timestamp=closing_ms
            )
    assert producer.flush(30) == 0


def _checkpoint_dir(settings: PlatformSettings) -> Path:
    return settings.offline_store.parent / f"{settings.redis_prefix}-checkpoints"


def _start_job(settings: PlatformSettings, *arguments: str) -> subprocess.Popen[bytes]:
    environment = settings_environment(settings) | {
        "FRAUD_CONSUMER_GROUP": f"{settings.redis_prefix}-features",
        "FRAUD_CHECKPOINT_DIR": str(_checkpoint_dir(settings)),
        "FRAUD_CHECKPOINT_INTERVAL_MS": str(CHECKPOINT_INTERVAL_MS),
        "FLINK_LOG_DIR": str(
            settings.offline_store.parent / f"{settings.redis_prefix}-logs"
        ),
    }
    command = [sys.executable, "-m", "streaming.features_job", *arguments]
    with _job_log(settings).open("ab") as log:
        return subprocess.Popen(
            command,
            env=environment,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _job_log(settings: PlatformSettings) -> Path:
    return settings.offline_store.parent / f"{settings.redis_prefix}-job.log"


def _stop(job: subprocess.Popen[bytes]) -> None:
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)


def _offline(settings: PlatformSettings, table: str) -> pd.DataFrame:
    path = settings.offline_store / table
    if not list(path.glob("dt=*/part-*")):
        return pd.DataFrame({"transaction_id": []})
    frame = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    return frame.to_pandas().sort_values("transaction_id").reset_index(drop=True)


def _postgres_counts(settings: PlatformSettings) -> tuple[int, int]:
    with psycopg.connect(settings.pg_dsn) as conn:
        conn.execute(store.PG_SCHEMA)
        events = conn.execute("SELECT count(*) FROM customer_events").fetchone()
        labels = conn.execute("SELECT count(*) FROM terminal_labels").fetchone()
    return (events[0] if events else 0), (labels[0] if labels else 0)


def _run_to_completion(settings: PlatformSettings, total: int, *arguments: str) -> None:
    """Run the job until every row and change of ``total`` transactions landed.

    The closing transactions and labels add a change per partition each.
    """
    job = _start_job(settings, *arguments)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    expected_counts = (total + stack.TOPIC_PARTITIONS,) * 2
    try:
        while True:
            rows = len(_offline(settings, "features"))
            counts = _postgres_counts(settings)
            if rows == total and counts == expected_counts:
                break
            assert job.poll() is None, f"the job exited with {job.returncode}"
            assert time.monotonic() < deadline, (
                f"the run did not complete in time: {rows} of {total} offline rows, "
                f"PostgreSQL events and labels {counts} of {expected_counts}; "
                f"see {_job_log(settings)}"
            )
            time.sleep(2)
    finally:
        _stop(job)


def _kill_after_first_commit(settings: PlatformSettings) -> int:
    """Start the job, SIGKILL it once a Parquet file is committed.

    Returns:
        The number of offline rows committed when it died.
    """
    job = _start_job(settings)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    features = settings.offline_store / "features"
    try:
        while not list(features.glob("dt=*/part-*")):
            assert job.poll() is None, f"the job exited with {job.returncode}"
            assert time.monotonic() < deadline, "no file was committed in time"
            time.sleep(0.1)
    finally:
        _stop(job)
    return len(_offline(settings, "features"))


def _redis_contents(settings: PlatformSettings) -> dict[str, list[tuple[bytes, float]]]:
    client = redis.Redis.from_url(settings.redis_url)
    prefix = f"{settings.redis_prefix}:"
    contents = {
        key.decode().removeprefix(prefix): client.zrange(key, 0, -1, withscores=True)
        for key in client.scan_iter(match=f"{prefix}*", count=1000)
    }
    client.close()
    return contents


def _postgres_contents(settings: PlatformSettings) -> dict[str, list[tuple]]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT * FROM {} ORDER BY 1, 2, 3").format(
                    sql.Identifier(table)
                )
            ).fetchall()
            for table in ("customer_events", "terminal_labels", "device_events")
        }


def test_resumed_job_matches_uninterrupted_run(
    runs: tuple[PlatformSettings, PlatformSettings], transactions: pd.DataFrame
) -> None:
    whole, killed = runs
    total = len(transactions)
    _run_to_completion(whole, total)

    committed_at_kill = _kill_after_first_commit(killed)
    _run_to_completion(killed, total, "--from-checkpoint", "latest")

    expected = _offline(whole, "features")
    resumed = _offline(killed, "features")
    assert 0 < committed_at_kill < total
    assert len(expected) == total
    assert expected["transaction_id"].is_unique
    assert set(expected["transaction_id"]) == set(
        transactions["TRANSACTION_ID"].astype(str)
    )
    pd.testing.assert_frame_equal(resumed, expected)
    pd.testing.assert_frame_equal(_offline(killed, "labels"), _offline(whole, "labels"))
    whole_redis = _redis_contents(whole)
    assert len(whole_redis) > 0
    assert _redis_contents(killed) == whole_redis
    assert _postgres_contents(killed) == _postgres_contents(whole)
