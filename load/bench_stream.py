"""Stream benchmark: ``make bench-stream`` writes ``reports/bench/stream.json``.

Measures, in one run on this machine:

* the pandas batch reference computing the features of every transaction;
* the replay of every transaction and label into Kafka, and the PyFlink job
  consuming them into Redis, PostgreSQL and Parquet (bounded), with the resident
  memory and CPU time of the job's processes and the state size of its latest
  checkpoint sampled every two seconds, and the records it sent to the
  late-events and dead-letter topics;
* freshness at a steady rate: each transaction produced with the wall clock as
  its event time, and the time until its event is visible in Redis, recorded in
  a Prometheus histogram (``reports/bench/freshness.prom``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Histogram, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from deploy import stack
from fraudcore.features import CustomerEvent
from fraudcore.schema import TransactionRecord, encode
from fraudcore.settings import REPO_ROOT, PlatformSettings
from fraudcore.store import customer_key, encode_customer_member
from fraudcore.timeutil import format_timestamp_ms
from streaming import replay
from streaming.batch_features import batch_features
from streaming.job_metrics import free_port

log = logging.getLogger(__name__)

REPORT_DIR = REPO_ROOT / "reports" / "bench"
AMOUNT = 42.0
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


@contextmanager
def bench_settings(base: PlatformSettings, name: str) -> Iterator[PlatformSettings]:
    """Yield settings with topics, Redis keys, a database and stores of their own.

    All of them are removed afterwards, so a run leaves nothing on a shared
    stack and never writes the platform's own tables. The folder of a failed
    run stays, for its job log.
    """
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    folder = base.state_dir / "bench" / prefix
    settings = base.namespaced(prefix, folder / "offline")
    with stack.created_database(base, prefix.replace("-", "_")) as dsn:
        settings = settings.model_copy(update={"pg_dsn": dsn})
        try:
            yield settings
        except BaseException:
            log.error("the %s run failed; its job log stays in %s", name, folder)
            raise
        else:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            stack.delete_topics(settings, settings.topics())
            stack.delete_redis_keys(settings)


def job_environment(settings: PlatformSettings, **extra: str) -> dict[str, str]:
    """Return the environment that runs the feature job with ``settings``."""
    environment = dict(os.environ) | settings.environment()
    environment["FRAUD_CONSUMER_GROUP"] = f"{settings.redis_prefix}-features"
    checkpoints = settings.offline_store.parent / "checkpoints"
    environment["FRAUD_CHECKPOINT_DIR"] = str(checkpoints)
    environment.update(extra)
    return environment


def process_tree_rss_mb(pid: int) -> float:
    """Return the resident memory of a process and its descendants, in MiB."""
    total = 0
    for child in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def process_tree_cpu_seconds(pid: int) -> float:
    """Return the CPU time (user and system) of a process and its descendants."""
    ticks = 0
    for child in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children + [d for c in children for d in _descendants(c)]


def measure_reference(frame: pd.DataFrame) -> float:
    """Time the pandas batch computation of every transaction's features."""
    started = time.perf_counter()
    batch_features(frame)
    return time.perf_counter() - started


def measure_stream(base: PlatformSettings, frame: pd.DataFrame) -> dict[str, Any]:
    """Replay every transaction and label, then time the bounded feature job."""
    with bench_settings(base, "throughput") as settings:
        return _replay_and_run(settings, frame)


def _replay_and_run(settings: PlatformSettings, frame: pd.DataFrame) -> dict[str, Any]:
    stack.create_topics(settings)
    started = time.perf_counter()
    result = replay.replay(
        settings,
        frame,
        frame["TX_DATETIME"].min().date(),
        frame["TX_DATETIME"].max().date(),
    )
    replay_seconds = time.perf_counter() - started
    log.info("replayed %d transactions in %.1f s", result.transactions, replay_seconds)

    command = [sys.executable, "-m", "streaming.features_job", "--bounded"]
    log_path = settings.offline_store.parent / "job.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, float]] = []
    state_samples: list[tuple[float, float]] = []
    cpu_seconds = 0.0
    metrics_port = free_port()
    environment = job_environment(settings, FRAUD_STREAM_METRICS_PORT=str(metrics_port))
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    with log_path.open("w") as output:
        job = subprocess.Popen(command, env=environment, stdout=output, stderr=output)
        while job.poll() is None:
            elapsed = time.perf_counter() - started
            samples.append((elapsed, process_tree_rss_mb(job.pid)))
            state_bytes = checkpoint_state_bytes(metrics_port)
            if state_bytes is not None:
                state_samples.append((elapsed, state_bytes / 2**20))
            cpu_seconds = max(cpu_seconds, process_tree_cpu_seconds(job.pid))
            time.sleep(2)
    seconds = time.perf_counter() - started
    if job.returncode != 0:
        raise RuntimeError(f"the feature job failed; see {log_path}")
    events = result.transactions + result.labels
    return {
        "transactions": result.transactions,
        "events": events,
        "replay_seconds": round(replay_seconds, 1),
        "seconds": round(seconds, 1),
        "events_per_second": round(events / seconds),
        # Sampled with the memory, so up to one interval short of the total.
        "cpu_seconds": round(cpu_seconds, 1),
        "late_events": stack.topic_records(settings, settings.late_events_topic),
        "dead_letters": stack.topic_records(settings, settings.dead_letter_topic),
        "memory_mib": _size_summary(samples),
        "checkpoint_state_mib": _size_summary(state_samples),
        "load_average": _load_averages(load_at_start),
    }


def _load_averages(at_start: tuple[float, float, float]) -> dict[str, list[float]]:
    """Return the 1-, 5- and 15-minute load averages at the start and now."""
    return {
        "start": [round(value, 2) for value in at_start],
        "end": [round(value, 2) for value in os.getloadavg()],
    }


def checkpoint_state_bytes(metrics_port: int) -> float | None:
    """Return the job's latest checkpoint state size from its metrics endpoint.

    None before the first checkpoint, and while the endpoint does not respond
    (the job starting or ending).
    """
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "fraud_stream_checkpoint_state_bytes":
            return float(family.samples[0].value)
    return None


def _size_summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Summarize sizes in MiB sampled over a run: maximum and quarter means.

    The quarter means need at least four samples, and are left out below that.
    """
    if not samples:
        return {}
    sizes = np.array([mib for _, mib in samples])
    summary: dict[str, Any] = {"max": round(float(sizes.max()), 1)}
    quarter = len(sizes) // 4
    if quarter:
        second = sizes[quarter : 2 * quarter].mean()
        summary["second_quarter_mean"] = round(float(second), 1)
        summary["last_quarter_mean"] = round(float(sizes[-quarter:].mean()), 1)
    summary["samples"] = len(sizes)
    return summary


def measure_freshness(
    base: PlatformSettings, rate: int, seconds: int, sample_every: int = 5
) -> dict[str, Any]:
    """Produce at a steady ``rate`` and time each sampled event until Redis has it."""
    with bench_settings(base, "freshness") as settings:
        return _paced_freshness(settings, rate, seconds, sample_every)


def _paced_freshness(
    settings: PlatformSettings, rate: int, seconds: int, sample_every: int
) -> dict[str, Any]:
    stack.create_topics(settings)
    log_path = settings.offline_store.parent / "job.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()
    with log_path.open("w") as output:
        job = subprocess.Popen(
            [sys.executable, "-m", "streaming.features_job"],
            env=job_environment(settings),
            stdout=output,
            stderr=output,
        )
        try:
            _wait_until_consuming(settings)
            latencies = _paced_run(settings, rate, seconds, sample_every)
        finally:
            job.terminate()
            job.wait(timeout=60)
    report = _freshness_report(latencies, rate, seconds)
    report["load_average"] = _load_averages(load_at_start)
    return report


def _wait_until_consuming(settings: PlatformSettings) -> None:
    """Produce probes until the job writes one to Redis (it is then running)."""
    client = redis.Redis.from_url(settings.redis_url)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        _produce(producer, settings, "probe", "probe-customer")
        producer.flush(5)
        if client.exists(customer_key(settings.redis_prefix, "probe-customer")):
            return
        time.sleep(1)
    raise RuntimeError("the feature job wrote nothing to Redis within 180 s")


def _produce(
    producer: Producer, settings: PlatformSettings, tx_id: str, customer: str
) -> str:
    """Produce a transaction stamped with the time now and return its Redis member."""
    now_ms = int(time.time() * 1000)
    record = TransactionRecord(
        transaction_id=tx_id,
        customer_id=customer,
        terminal_id=f"terminal-{hash(customer) % 500}",
        amount=AMOUNT,
        timestamp=format_timestamp_ms(now_ms),
    )
    producer.produce(
        settings.transactions_topic,
        value=encode(record),
        key=customer.encode(),
        timestamp=now_ms,
    )
    event = CustomerEvent(now_ms, tx_id, AMOUNT, record.terminal_id)
    return encode_customer_member(event)


def _paced_run(
    settings: PlatformSettings, rate: int, seconds: int, sample_every: int
) -> list[float]:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 1})
    pending: dict[str, tuple[str, float]] = {}
    lock = threading.Lock()
    latencies: list[float] = []
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_redis, args=(settings, pending, lock, latencies, done)
    )
    watcher.start()
    started = time.perf_counter()
    for index in range(rate * seconds):
        target = started + index / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        tx_id = f"fresh-{index}"
        customer = f"customer-{index % 2000}"
        member = _produce(producer, settings, tx_id, customer)
        producer.poll(0)
        if index % sample_every == 0:
            with lock:
                pending[tx_id] = (customer, member, time.perf_counter())
    producer.flush(30)
    deadline = time.perf_counter() + 30
    while pending and time.perf_counter() < deadline:
        time.sleep(0.1)
    done.set()
    watcher.join()
    latencies += [float("inf")] * len(pending)
    return latencies


def _watch_redis(settings, pending, lock, latencies, done) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    while not done.is_set():
        with lock:
            batch = list(pending.items())[:500]
        if not batch:
            time.sleep(0.002)
            continue
        pipe = client.pipeline(transaction=False)
        for _, (customer, member, _) in batch:
            key = customer_key(settings.redis_prefix, customer)
            pipe.zscore(key, member)
        found_at = time.perf_counter()
        for (tx_id, (_, _, sent)), score in zip(batch, pipe.execute(), strict=True):
            if score is not None:
                latencies.append(found_at - sent)
                with lock:
                    pending.pop(tx_id, None)
        time.sleep(0.002)


def _freshness_report(
    latencies: list[float], rate: int, seconds: int
) -> dict[str, Any]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "fraud_feature_freshness_seconds",
        "Time from producing a transaction to its event being readable in Redis.",
        buckets=FRESHNESS_BUCKETS,
        registry=registry,
    )
    for value in latencies:
        histogram.observe(value)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(REPORT_DIR / "freshness.prom"), registry)
    values = np.array(latencies)
    return {
        "rate_per_second": rate,
        "seconds": seconds,
        "sampled_events": len(values),
        "never_visible": int(np.isinf(values).sum()),
        "p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1),
        "max_ms": round(float(values.max()) * 1000, 1),
    }


def _freshness_only(base: PlatformSettings, rate: int, seconds: int) -> int:
    started_servers = stack.up(base)
    try:
        freshness = measure_freshness(base, rate, seconds)
    finally:
        stack.down(base, started_servers)
    report = {"machine": f"{os.cpu_count()} cores", "freshness": freshness}
    (REPORT_DIR / "freshness.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(prog="python -m load.bench_stream")
    parser.add_argument("--rate", type=int, default=1_000, help="events/s, freshness")
    parser.add_argument("--freshness-seconds", type=int, default=60)
    parser.add_argument(
        "--days",
        type=int,
        default=0,
        help="replay only the first N days (0: all of them)",
    )
    parser.add_argument(
        "--freshness-only",
        action="store_true",
        help="measure freshness only, and write reports/bench/freshness.json",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = PlatformSettings()
    if args.freshness_only:
        return _freshness_only(base, args.rate, args.freshness_seconds)
    started_servers = stack.up(base)
    try:
        frame = pd.read_parquet(base.data_dir / "transactions.parquet")
        if args.days:
            first = frame["TX_DATETIME"].min().normalize()
            frame = frame[frame["TX_DATETIME"] < first + pd.Timedelta(days=args.days)]
        reference_load = os.getloadavg()
        reference_seconds = measure_reference(frame)
        reference_load_average = _load_averages(reference_load)
        log.info("pandas reference: %.1f s", reference_seconds)
        stream = measure_stream(base, frame)
        freshness = measure_freshness(base, args.rate, args.freshness_seconds)
    finally:
        stack.down(base, started_servers)
    report = {
        "machine": f"{os.cpu_count()} cores",
        **stream,
        "reference_seconds": round(reference_seconds, 1),
        "reference_load_average": reference_load_average,
        "ratio_to_reference": round(stream["seconds"] / reference_seconds, 2),
        "freshness": freshness,
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "stream.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
