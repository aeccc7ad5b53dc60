"""The feature job under bad, late and sparse input, on the real broker and Flink.

One unbounded job run serves every test of the module. Its topics have two
partitions, and everything is produced to partition 0, so partition 1 of each
topic stays empty for the whole run and must not stall the watermarks.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest
import redis
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from deploy import stack
from fraudcore.schema import TransactionRecord, encode
from fraudcore.settings import PlatformSettings
from fraudcore.store import customer_key, decode_customer_members
from fraudcore.timeutil import format_timestamp_ms, parse_timestamp_ms
from streaming.job_metrics import free_port
from tests.conftest import settings_environment

pytestmark = pytest.mark.integration

START_MS = parse_timestamp_ms("2018-07-01T00:00:00Z")
HOUR_MS = 3_600_000
WAIT_SECONDS = 120
# End hour (exclusive) of the transactions produced after the job fell idle.
RESUMED_UNTIL = 56

BAD_RECORDS = {
    b"{not json": "not valid JSON",
    b'{"transaction_id": "b1", "customer_id": "c", "terminal_id": "t", '
    b'"amount": "12.5", "timestamp": "2018-07-01T01:00:00Z"}': "valid number",
    b'{"transaction_id": "b2", "customer_id": "c", "amount": 1.0, '
    b'"timestamp": "2018-07-01T01:00:00Z"}': "terminal_id",
    b'{"transaction_id": "b3", "customer_id": "c", "terminal_id": "t", '
    b'"amount": -4.0, "timestamp": "2018-07-01T01:00:00Z"}': ">= 0",
    b'{"transaction_id": "b4", "customer_id": "c", "terminal_id": "t", '
    b'"amount": NaN, "timestamp": "2018-07-01T01:00:00Z"}': "not valid JSON",
    b'{"transaction_id": "b5", "customer_id": "c", "terminal_id": "t", '
    b'"amount": 3.0, "timestamp": "1850-07-01T01:00:00Z"}': "outside",
    b"\xff\xfe\x00 not utf-8": "not valid JSON",
}


@dataclass(frozen=True)
class FaultRun:
    """Settings of the module's job run and the ids it produced."""

    settings: PlatformSettings
    on_time_ids: list[str]
    resumed_ids: list[str]
    late_id: str
    metrics_url: str


def transaction(tx_id: str, event_ms: int) -> TransactionRecord:
    return TransactionRecord(
        transaction_id=tx_id,
        customer_id="fault-customer",
        terminal_id="fault-terminal",
        amount=25.0,
        timestamp=format_timestamp_ms(event_ms),
    )


def produce(settings: PlatformSettings, items: list[tuple[bytes, int]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for value, timestamp in items:
        producer.produce(
            settings.transactions_topic, value=value, partition=0, timestamp=timestamp
        )
    assert producer.flush(30) == 0


def read_topic(settings: PlatformSettings, topic: str, expected: int) -> list[dict]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{topic}-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    records: list[dict] = []
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                records.append(orjson.loads(message.value()))
    finally:
        consumer.close()
    return records


def offline_ids(settings: PlatformSettings) -> set[str]:
    path = settings.offline_store / "features"
    if not list(path.glob("dt=*/part-*")):
        return set()
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table(
        columns=["transaction_id"]
    )
    return set(table.column("transaction_id").to_pylist())


def wait_for(
    condition,
    what: str,
    log_dir: Path | None = None,
    job: subprocess.Popen | None = None,
) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    message = f"timed out after {WAIT_SECONDS} s waiting for {what}"
    if log_dir is not None and job is not None:
        message += f"; job exit code {job.poll()}\n{job_log_problems(log_dir)}"
    pytest.fail(message)


def split_idle(log_dir: Path, partition: str) -> bool:
    """Return whether the job's Flink log shows ``partition``'s split as idle.

    Flink logs that once the source reads the partition and finds nothing new
    within the idleness timeout.
    """
    marker = f"[{partition}] Marking split idle"
    return any(
        marker in log.read_text(errors="replace") for log in log_dir.glob("*.log")
    )


def job_log_problems(log_dir: Path, lines: int = 40) -> str:
    """Return the last warnings and errors of the Flink logs in ``log_dir``."""
    problems = [
        line
        for log in sorted(log_dir.glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if " WARN " in line or " ERROR " in line or "Exception" in line
    ]
    return "\n".join(problems[-lines:]) or "no warnings in the Flink log"


@pytest.fixture(scope="module")
def fault_run(test_settings: PlatformSettings) -> Iterator[FaultRun]:
    prefix = f"{test_settings.redis_prefix}-faults"
    offline_store = test_settings.offline_store.parent / "faults-offline"
    settings = test_settings.namespaced(prefix, offline_store)
    stack.create_topics(settings)
    metrics_port = free_port()
    environment = settings_environment(settings)
    environment |= {
        "FRAUD_CONSUMER_GROUP": f"{prefix}-features",
        "FRAUD_CHECKPOINT_DIR": str(settings.offline_store.parent / "faults-ckpt"),
        "FRAUD_CHECKPOINT_INTERVAL_MS": "2000",
        "FRAUD_IDLE_TIMEOUT_MS": "1000",
        "FRAUD_ALLOWED_LATENESS_MS": str(HOUR_MS),
        "FRAUD_STREAM_METRICS_PORT": str(metrics_port),
    }
    # A log of its own, which later jobs of the session do not overwrite.
    log_dir = settings.offline_store.parent / "faults-flink-log"
    environment["FLINK_LOG_DIR"] = str(log_dir)
    # Records already waiting when the job starts, so the sources read them at
    # once and all fall idle together.
    on_time = [(f"on-time-{i}", START_MS + i * HOUR_MS) for i in range(48)]
    records = [(encode(transaction(i, ms)), ms) for i, ms in on_time]
    records += [(raw, START_MS + HOUR_MS) for raw in BAD_RECORDS]
    produce(settings, records)
    on_time_ids = [tx_id for tx_id, _ in on_time]
    job = subprocess.Popen(
        [sys.executable, "-m", "streaming.features_job"], env=environment
    )
    try:
        wait_for(
            lambda: set(on_time_ids[:40]) <= offline_ids(settings),
            "offline rows of the on-time transactions",
            log_dir,
            job,
        )
        # Once the burst is read, partition 0 falls idle like the empty one,
        # and the records below wake the job up again.
        wait_for(
            lambda: split_idle(log_dir, f"{settings.transactions_topic}-0"),
            "the job's transactions source to fall idle",
            log_dir,
            job,
        )
        # Two days behind a watermark that has passed START + 40 hours.
        late_ms = START_MS - 48 * HOUR_MS
        resumed = [
            (f"resumed-{i}", START_MS + i * HOUR_MS) for i in range(48, RESUMED_UNTIL)
        ]
        produce(
            settings,
            [(encode(transaction("late-1", late_ms)), late_ms)]
            + [(encode(transaction(i, ms)), ms) for i, ms in resumed],
        )
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        resumed_ids = [tx_id for tx_id, _ in resumed]
        yield FaultRun(settings, on_time_ids, resumed_ids, "late-1", metrics_url)
    finally:
        job.terminate()
        job.wait(timeout=60)


def test_stream_faults_bad_records_go_to_dead_letters(fault_run):
    records = read_topic(
        fault_run.settings, fault_run.settings.dead_letter_topic, len(BAD_RECORDS)
    )
    by_original = {base64.b64decode(r["original_base64"]): r for r in records}
    assert set(by_original) == set(BAD_RECORDS)
    for raw, expected in BAD_RECORDS.items():
        assert expected in by_original[raw]["reason"], by_original[raw]
        assert by_original[raw]["source_topic"] == fault_run.settings.transactions_topic


def test_stream_faults_empty_partition_does_not_stall(fault_run):
    assert set(fault_run.on_time_ids[:40]) <= offline_ids(fault_run.settings)


def test_stream_faults_features_resume_after_idleness(fault_run):
    # The watermark trails the newest event by the allowed lateness (an hour)
    # plus the out-of-orderness bound, so all but the two newest transactions
    # have their rows in the end.
    expected = set(fault_run.on_time_ids) | set(fault_run.resumed_ids[:-2])
    wait_for(
        lambda: expected <= offline_ids(fault_run.settings),
        "offline rows of the transactions after the job fell idle",
    )


def test_stream_faults_late_event_goes_to_late_topic(fault_run):
    records = read_topic(fault_run.settings, fault_run.settings.late_events_topic, 1)
    assert len(records) == 1
    assert records[0]["kind"] == "transaction"
    assert records[0]["event"]["transaction_id"] == fault_run.late_id
    assert "behind the watermark" in records[0]["reason"]


def test_stream_faults_late_event_not_in_stores(fault_run):
    read_topic(fault_run.settings, fault_run.settings.late_events_topic, 1)
    client = redis.Redis.from_url(fault_run.settings.redis_url)
    key = customer_key(fault_run.settings.redis_prefix, "fault-customer")
    pairs = client.zrange(key, 0, -1, withscores=True)
    stored = decode_customer_members([part for pair in pairs for part in pair])
    ids = {event[1] for event in stored}
    assert "on-time-0" in ids
    assert fault_run.late_id not in ids
    assert fault_run.late_id not in offline_ids(fault_run.settings)


def scrape(url: str) -> dict[str, dict[str, float]]:
    """Return each sample of the job's endpoint by name and operator label."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            operator = sample.labels.get("operator", "")
            samples.setdefault(sample.name, {})[operator] = sample.value
    return samples


def test_stream_faults_metrics_count_bad_and_late(fault_run):
    read_topic(fault_run.settings, fault_run.settings.late_events_topic, 1)
    expected = {
        "fraud_stream_dead_letters_total": len(BAD_RECORDS),
        "fraud_stream_late_events_total": 1,
    }
    samples: dict[str, dict[str, float]] = {}

    def counted() -> bool:
        nonlocal samples
        samples = scrape(fault_run.metrics_url)
        return all(
            sum(samples.get(name, {}).values()) == count
            for name, count in expected.items()
        )

    wait_for(counted, "the dead-letter and late-event counters")
    assert samples["fraud_stream_up"][""] == 1.0
    assert sum(samples["fraud_stream_records_in_total"].values()) > 0
    watermarks = samples["fraud_stream_watermark_seconds"]
    assert max(watermarks.values()) * 1000 >= START_MS + 40 * HOUR_MS
