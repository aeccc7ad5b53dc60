"""Benchmark of ``POST /score`` against a no-op route: ``make bench-score``.

Starts the local stack, seeds a private Redis prefix with customer and terminal
histories, registers a 300-tree LightGBM model in a database of its own, and
runs the scorer (one uvicorn worker, ``python -m services.scorer``) pinned to
one core. vegeta, pinned to the other core, sends each request with its own
transaction id, because repeated ids would be idempotent replays:

* fixed rates (500, 1000 and 2000 req/s by default), each run twice;
* saturation: as fast as a fixed number of connections allows, on ``/score``
  and on ``/noop`` of the same process, whose ratio is the framework's share.

vegeta is an open-model generator: it sends at the set rate whether or not
earlier responses have arrived, so a stalled server shows up as latency and a
shortfall in achieved rate, without coordinated omission. The scorer's own
metrics, read from ``/metrics`` before and after the runs of each rate, give
the server-side p99 of the requests and of each stage, and the feature sources
and errors of those requests. The report goes to ``reports/bench/score.json``.
Everything it creates (database, topics, Redis keys, processes) it removes; the
stack is stopped only if this run started it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lightgbm
import numpy as np
import psycopg
import redis
from psycopg import sql
from psycopg.types.json import Jsonb

from deploy import stack
from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.features import (
    MODEL_INPUTS,
    CustomerEvent,
    TerminalLabel,
    transaction_features,
)
from fraudcore.registry import REGISTRY_STATEMENTS
from fraudcore.settings import REPO_ROOT, PlatformSettings
from fraudcore.store import (
    PG_SCHEMA,
    customer_key,
    encode_customer_member,
    encode_label_member,
    terminal_key,
)
from fraudcore.timeutil import MS_PER_DAY, format_timestamp_ms
from load.scorer_process import wait_ready
from services.scorer.metrics import STAGES

log = logging.getLogger("load.bench_score")

REPORT_PATH = REPO_ROOT / "reports" / "bench" / "score.json"
SERVER_CORE = 0
LOADGEN_CORE = 1
CUSTOMERS = 5_000
TERMINALS = 1_000
EVENTS_PER_CUSTOMER = 60
LABELS_PER_TERMINAL = 30
# Request event times: the seeded histories end just before this instant.
EVENT_MS = 1_712_400_000_000  # 2024-04-06T10:40:00Z
REVIEW_SHARE = 0.02
BLOCK_SHARE = 0.005
SATURATION_CONNECTIONS = 32
SERVER_P99_RATE = 1000


@dataclass(frozen=True)
class BenchEnv:
    """Names and credentials of one benchmark run."""

    run_id: str
    settings: PlatformSettings
    dsn: str
    prefix: str
    topics: dict[str, str]
    work_dir: Path


# --- set-up -------------------------------------------------------------------


def create_database(settings: PlatformSettings, run_id: str) -> str:
    """Create the run's database with the store, registry and decision tables."""
    name = f"fraud_bench_{run_id}"
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = settings.pg_dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in (PG_SCHEMA, *REGISTRY_STATEMENTS, DECISIONS_SCHEMA):
            conn.execute(schema)
    return dsn


def drop_database(settings: PlatformSettings, dsn: str) -> None:
    """Drop the run's database."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


@dataclass(frozen=True)
class SeededHistories:
    """The histories written to Redis, kept to build training rows from."""

    customers: list[list[CustomerEvent]]
    terminals: list[list[TerminalLabel]]


def seed_redis(url: str, prefix: str, rng: np.random.Generator) -> SeededHistories:
    """Write 30 days of history per customer and terminal, as the stream job does."""
    histories = SeededHistories(
        [_customer_history(c, rng) for c in range(CUSTOMERS)],
        [_terminal_history(t, rng) for t in range(TERMINALS)],
    )
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for customer, events in enumerate(histories.customers):
        members = {encode_customer_member(e): e.event_ms for e in events}
        pipe.zadd(customer_key(prefix, str(customer)), members)
    for terminal, labels in enumerate(histories.terminals):
        members = {encode_label_member(x): x.label_ms for x in labels}
        pipe.zadd(terminal_key(prefix, str(terminal)), members)
    pipe.execute()
    client.close()
    return histories


def _customer_history(customer: int, rng: np.random.Generator) -> list[CustomerEvent]:
    offsets = rng.integers(60_000, 30 * MS_PER_DAY, size=EVENTS_PER_CUSTOMER)
    amounts = np.round(rng.gamma(2.0, 30.0, size=EVENTS_PER_CUSTOMER), 2)
    terminals = rng.integers(0, TERMINALS, size=EVENTS_PER_CUSTOMER)
    return [
        CustomerEvent(EVENT_MS - int(o), f"h{customer}-{i}", float(a), str(t))
        for i, (o, a, t) in enumerate(zip(offsets, amounts, terminals, strict=True))
    ]


def _terminal_history(terminal: int, rng: np.random.Generator) -> list[TerminalLabel]:
    offsets = rng.integers(60_000, 30 * MS_PER_DAY, size=LABELS_PER_TERMINAL)
    # A tenth of the terminals are compromised and have many known frauds.
    rate = 0.5 if terminal % 10 == 0 else 0.02
    frauds = rng.random(LABELS_PER_TERMINAL) < rate
    return [
        TerminalLabel(EVENT_MS - int(o), f"l{terminal}-{i}", int(f))
        for i, (o, f) in enumerate(zip(offsets, frauds, strict=True))
    ]


def delete_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under the run's prefix."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for start in range(0, len(keys), 5000):
        client.delete(*keys[start : start + 5000])
    client.close()


def train_model(
    folder: Path, histories: SeededHistories, rng: np.random.Generator
) -> tuple[Path, np.ndarray]:
    """Fit a 300-tree monotone model, as the training job would, on bench requests.

    The rows are the features of random requests against the seeded histories,
    so the model is fit on the same distribution as the benchmark's traffic. Large
    amounts and terminals with known frauds are labelled fraud, after the
    simulator's scenarios.

    Returns:
        The ONNX path and the model's probabilities on the training rows.
    """
    from training.model import ModelConfig, to_onnx

    rows = 20_000
    customers = rng.integers(0, CUSTOMERS, size=rows)
    terminals = rng.integers(0, TERMINALS, size=rows)
    amounts = np.round(rng.gamma(2.0, 30.0, size=rows), 2)
    x = np.asarray(
        [
            feature_row(histories, int(c), int(t), float(a), f"train-{i}")
            for i, (c, t, a) in enumerate(
                zip(customers, terminals, amounts, strict=True)
            )
        ],
        dtype=np.float32,
    )
    risk = x[:, 0] / 220 + x[:, MODEL_INPUTS.index("TERMINAL_ID_RISK_30DAY_WINDOW")]
    y = (risk + rng.normal(scale=0.2, size=rows) > 1.0).astype(np.int64)
    classifier = lightgbm.LGBMClassifier(**ModelConfig().lightgbm_params())
    classifier.fit(x, y)
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.onnx"
    artifact.write_bytes(to_onnx(classifier).SerializeToString())
    classifier.booster_.save_model(folder / "lightgbm.txt")
    return artifact, classifier.predict_proba(x)[:, 1]


def feature_row(
    histories: SeededHistories,
    customer: int,
    terminal: int,
    amount: float,
    transaction_id: str,
) -> list[float]:
    """Return the model inputs of one request against the seeded histories."""
    features = transaction_features(
        EVENT_MS,
        transaction_id,
        amount,
        histories.customers[customer],
        histories.terminals[terminal],
        customer_id=str(customer),
        terminal_id=str(terminal),
    )
    return list(features.values())


def register(dsn: str, version: str, artifact: Path, scores: np.ndarray) -> None:
    """Register the model with thresholds that send a few percent to review."""
    import hashlib

    review = float(np.quantile(scores, 1 - REVIEW_SHARE))
    block = float(np.quantile(scores, 1 - BLOCK_SHARE))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO model_registry (version, artifact_path, artifact_sha256, "
            "feature_names, metrics, threshold, stage, review_threshold) "
            "VALUES (%s, %s, %s, %s, %s, %s, 'candidate', %s)",
            (
                version,
                str(artifact),
                hashlib.sha256(artifact.read_bytes()).hexdigest(),
                Jsonb(list(MODEL_INPUTS)),
                Jsonb({"synthetic": True}),
                block,
                review,
            ),
        )


def create_topics(bootstrap: str, topics: dict[str, str]) -> None:
    """Create the run's topics."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, 2, 1) for name in topics.values()]
    for future in admin.create_topics(new).values():
        future.result(timeout=30)


def delete_topics(bootstrap: str, topics: dict[str, str]) -> None:
    """Delete the run's topics."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(list(topics.values())).values():
        future.result(timeout=30)


def create_key(dsn: str) -> str:
    """Store an API key for the load generator and return it."""
    from services.scorer.keys import create_key as store_key

    with psycopg.connect(dsn, autocommit=True) as conn:
        return store_key(conn, "benchmark")[1]


# --- the server -----------------------------------------------------------------


@contextmanager
def scorer(env: BenchEnv, version: str, port: int) -> Iterator[str]:
    """Run the scorer pinned to ``SERVER_CORE`` until the block ends."""
    environment = dict(os.environ)
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment |= {
        "FRAUD_PORT": str(port),
        "FRAUD_WORKERS": "1",
        "FRAUD_PG_DSN": env.dsn,
        "FRAUD_REDIS_URL": env.settings.redis_url,
        "FRAUD_REDIS_PREFIX": env.prefix,
        "FRAUD_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap,
        "FRAUD_TRANSACTIONS_TOPIC": env.topics["transactions"],
        "FRAUD_DECISIONS_TOPIC": env.topics["decisions"],
        "FRAUD_LABELS_TOPIC": env.topics["labels"],
        "FRAUD_MODEL_VERSION": version,
        "FRAUD_REQUIRE_API_KEY": "true",
        "FRAUD_NOOP_ROUTE": "true",
        "FRAUD_LOG_LEVEL": "INFO",
    }
    log_path = env.work_dir / "scorer.log"
    command = ["taskset", "-c", str(SERVER_CORE), sys.executable]
    command += ["-m", "services.scorer"]
    with log_path.open("w") as output:
        process = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base_url, process, log_path)
            yield base_url
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


# --- load -----------------------------------------------------------------------


def write_targets(
    path: Path, base_url: str, route: str, count: int, key: str, tag: str
) -> None:
    """Write ``count`` vegeta JSON targets, each with its own transaction id."""
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    customers = rng.integers(0, CUSTOMERS, size=count)
    terminals = rng.integers(0, TERMINALS, size=count)
    amounts = np.round(rng.gamma(2.0, 30.0, size=count), 2)
    header = {"Content-Type": ["application/json"], "X-API-Key": [key]}
    timestamp = format_timestamp_ms(EVENT_MS)
    with path.open("w") as output:
        for i in range(count):
            body = json.dumps(
                {
                    "transaction_id": f"{tag}-{i}",
                    "customer_id": str(customers[i]),
                    "terminal_id": str(terminals[i]),
                    "amount": float(amounts[i]),
                    "timestamp": timestamp,
                }
            ).encode()
            target = {
                "method": "POST",
                "url": f"{base_url}{route}",
                "body": base64.b64encode(body).decode(),
                "header": header,
            }
            output.write(json.dumps(target) + "\n")


def attack(
    vegeta: str, targets: Path, results: Path, duration: float, rate: int | None
) -> None:
    """Run vegeta pinned to ``LOADGEN_CORE``; ``rate`` None means saturation."""
    command = ["taskset", "-c", str(LOADGEN_CORE), vegeta, "attack"]
    command += ["-format=json", f"-targets={targets}", f"-duration={duration}s"]
    command += [f"-output={results}", "-timeout=10s"]
    if rate is None:
        command += ["-rate=0", f"-max-workers={SATURATION_CONNECTIONS}"]
        command += [f"-workers={SATURATION_CONNECTIONS}"]
    else:
        command += [f"-rate={rate}/s", "-workers=8"]
    subprocess.run(command, check=True)


def summarize(vegeta: str, results: Path) -> dict[str, Any]:
    """Return the latency percentiles, achieved rate and errors of one attack.

    The rate and the percentiles count successful requests (status 200) only,
    so the quick rejections of load shedding (503) add neither throughput nor
    low latencies. ``errors`` counts every other response, and ``shed`` the
    503s among them.
    """
    encoded = subprocess.run(
        [vegeta, "encode", "--to=csv", str(results)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = list(csv.reader(encoded.splitlines()))
    started = np.asarray([int(row[0]) for row in rows])
    latency = np.asarray([int(row[2]) / 1e6 for row in rows])
    status = np.asarray([row[1] for row in rows])
    successful = latency[status == "200"]
    ends = started + latency * 1e6
    elapsed = (ends.max() - started.min()) / 1e9

    def percentile(q: float) -> float | None:
        if not successful.size:
            return None
        return round(float(np.percentile(successful, q)), 3)

    return {
        "requests": len(latency),
        "achieved_rps": round(float(successful.size / elapsed), 1),
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "p999_ms": percentile(99.9),
        "max_ms": percentile(100),
        "errors": int((status != "200").sum()),
        "shed": int((status == "503").sum()),
    }


# --- server-side histogram ---------------------------------------------------------


@dataclass(frozen=True)
class MetricsSnapshot:
    """The samples of one ``/metrics`` scrape that the report uses."""

    samples: dict[str, dict[str, float]]

    @classmethod
    def scrape(cls, base_url: str) -> MetricsSnapshot:
        """Read every sample of the scorer's ``/metrics``."""
        return cls.parse(httpx.get(f"{base_url}/metrics", timeout=5).text)

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        """Group the samples of a Prometheus text exposition by name."""
        samples: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line:
                continue
            series, value = line.rsplit(" ", 1)
            name, brace, labels = series.partition("{")
            samples.setdefault(name, {})[brace + labels] = float(value)
        return cls(samples)

    def counter(self, name: str) -> dict[str, float]:
        """Return a labelled counter's samples, keyed by their label text."""
        return dict(self.samples.get(name, {}))

    def buckets(self, name: str, labels: str = "") -> dict[float, float]:
        """Return the cumulative buckets of a histogram's series with ``labels``.

        ``labels`` is the series' own label text without ``le``, such as
        ``stage="inference"``; empty for an unlabelled histogram.
        """
        buckets: dict[float, float] = {}
        for label_text, value in self.samples.get(f"{name}_bucket", {}).items():
            pairs = label_text.strip("{}").split(",")
            bound = next(p for p in pairs if p.startswith("le="))
            rest = ",".join(p for p in pairs if not p.startswith("le="))
            if rest == labels:
                buckets[float(bound[4:-1])] = value
        return buckets


def counter_increase(
    before: MetricsSnapshot, after: MetricsSnapshot, name: str
) -> dict[str, float]:
    """Return the increase of each sample of a labelled counter that increased."""
    start = before.counter(name)
    return {
        labels: value - start.get(labels, 0.0)
        for labels, value in after.counter(name).items()
        if value > start.get(labels, 0.0)
    }


def server_figures(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, Any]:
    """Return the scorer's own view of the requests between two scrapes.

    That is the p99 of its request histogram and of each scoring stage, in ms,
    and the feature sources and errors of those requests.
    """
    request = "fraud_score_request_duration_seconds"
    stage = "fraud_score_stage_duration_seconds"
    stages = {}
    for name in STAGES:
        labels = f'stage="{name}"'
        start, end = before.buckets(stage, labels), after.buckets(stage, labels)
        if end and end[float("inf")] > start.get(float("inf"), 0.0):
            stages[name] = round(histogram_quantile(start, end, 0.99) * 1000, 3)
    return {
        "server_p99_ms": round(
            histogram_quantile(before.buckets(request), after.buckets(request), 0.99)
            * 1000,
            3,
        ),
        "server_stage_p99_ms": stages,
        "feature_sources": counter_increase(
            before, after, "fraud_score_feature_source_total"
        ),
        "errors_by_kind": counter_increase(before, after, "fraud_score_errors_total"),
    }


def histogram_quantile(
    before: dict[float, float], after: dict[float, float], quantile: float
) -> float:
    """Estimate a quantile from the bucket increments, as Prometheus does.

    The estimate interpolates linearly within the bucket that contains it, so its
    resolution is that of the buckets.
    """
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    rank = quantile * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if np.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / max(count - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return bounds[-2]


# --- the run ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Describe the machine, the placement and the load at the start."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(
            os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3, 1
        ),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "server_core": SERVER_CORE,
        "load_generator_core": LOADGEN_CORE,
        "note": "Redis, PostgreSQL and Kafka are the shared stack's and not "
        "pinned; other work may share the cores.",
    }


def run_point(
    vegeta: str,
    env: BenchEnv,
    base_url: str,
    key: str,
    route: str,
    rate: int | None,
    duration: float,
) -> dict[str, Any]:
    """Attack one route at one rate (None: saturation) and summarize it."""
    name = f"{route.strip('/')}-{rate or 'max'}-{uuid.uuid4().hex[:6]}"
    count = int((rate or 6_000) * duration * 1.2) + 100
    targets = env.work_dir / f"{name}.targets"
    results = env.work_dir / f"{name}.bin"
    write_targets(targets, base_url, route, count, key, f"{env.run_id}-{name}")
    attack(vegeta, targets, results, duration, rate)
    summary = summarize(vegeta, results)
    targets.unlink()
    results.unlink()
    log.info("%s %s: %s", route, rate or "saturation", summary)
    return summary


def run_rates(
    vegeta: str,
    env: BenchEnv,
    base_url: str,
    key: str,
    rates: Sequence[int],
    repeats: int,
    duration: float,
) -> tuple[list[dict[str, Any]], float | None]:
    """Run every fixed rate ``repeats`` times; return the points and server p99.

    Each point carries the scorer's own figures over all of its runs.
    """
    points, server_p99 = [], None
    for rate in rates:
        before = MetricsSnapshot.scrape(base_url)
        runs = [
            run_point(vegeta, env, base_url, key, "/score", rate, duration)
            for _ in range(repeats)
        ]
        server = server_figures(before, MetricsSnapshot.scrape(base_url))
        if rate == SERVER_P99_RATE:
            server_p99 = server["server_p99_ms"]
        # A run without a single successful request is the worst.
        worst = max(runs, key=lambda run: run["p99_ms"] or float("inf"))
        points.append({"target_rps": rate, **worst, "runs": runs, **server})
    return points, server_p99


def run_benchmark(
    vegeta: str, env: BenchEnv, version: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Start the scorer and run every load point against it."""
    key = create_key(env.dsn)
    port = stack_free_port()
    with scorer(env, version, port) as base_url:
        run_point(vegeta, env, base_url, key, "/score", 500, 5.0)  # warm-up
        points, server_p99 = run_rates(
            vegeta, env, base_url, key, args.rates, args.repeats, args.duration
        )
        saturation = [
            run_point(vegeta, env, base_url, key, "/score", None, args.duration)
            for _ in range(args.repeats)
        ]
        noop = [
            run_point(vegeta, env, base_url, key, "/noop", None, args.duration)
            for _ in range(args.repeats)
        ]
        end = MetricsSnapshot.scrape(base_url)
    saturation_rps = max(run["achieved_rps"] for run in saturation)
    noop_rps = max(run["achieved_rps"] for run in noop)
    return {
        "rates": points,
        "saturation_rps": saturation_rps,
        "saturation_runs": saturation,
        "noop_saturation_rps": noop_rps,
        "noop_saturation_runs": noop,
        "ratio_to_noop": round(saturation_rps / noop_rps, 3),
        "server_p99_ms_at_1000_rps": server_p99,
        "decisions": end.counter("fraud_score_decisions_total"),
        "feature_sources": end.counter("fraud_score_feature_source_total"),
        "errors_by_kind": end.counter("fraud_score_errors_total"),
        "saturation_connections": SATURATION_CONNECTIONS,
        "duration_seconds_per_run": args.duration,
    }


def stack_free_port() -> int:
    """Return a free local port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_vegeta() -> str:
    """Return the vegeta binary.

    Raises:
        SystemExit: if vegeta is not installed.
    """
    found = shutil.which("vegeta") or shutil.which(
        str(Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "vegeta")
    )
    if found is None:
        raise SystemExit(
            "vegeta is not installed; run `go install "
            "github.com/tsenart/vegeta/v12@v12.13.0` or `make bench-score`."
        )
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m load.bench_score")
    parser.add_argument(
        "--rates",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[500, 1000, 2000],
        help="fixed rates in req/s, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=15.0, help="seconds per run (default: 15)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per load point (default: 2)"
    )
    parser.add_argument("--output", type=Path, default=REPORT_PATH)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    vegeta = find_vegeta()
    settings = PlatformSettings()
    started_servers = stack.up(settings)
    run_id = uuid.uuid4().hex[:8]
    work_dir = settings.state_dir / "bench" / run_id
    work_dir.mkdir(parents=True)
    topics = {
        name: f"bench-{run_id}-{name}"
        for name in ("transactions", "decisions", "labels")
    }
    env = BenchEnv(
        run_id, settings, create_database(settings, run_id), f"bench-{run_id}",
        topics, work_dir,
    )  # fmt: skip
    report: dict[str, Any] = {"machine": machine()}
    try:
        rng = np.random.default_rng(0)
        histories = seed_redis(settings.redis_url, env.prefix, rng)
        artifact, scores = train_model(work_dir / "model", histories, rng)
        version = f"bench-{run_id}"
        register(env.dsn, version, artifact, scores)
        create_topics(settings.kafka_bootstrap, topics)
        report |= run_benchmark(vegeta, env, version, args)
    finally:
        delete_topics(settings.kafka_bootstrap, topics)
        delete_redis_keys(settings.redis_url, env.prefix)
        drop_database(settings, env.dsn)
        shutil.rmtree(work_dir, ignore_errors=True)
        stack.down(settings, started_servers)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
