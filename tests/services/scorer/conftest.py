"""Fixtures of the scorer tests: a small ONNX model, a served app and seeded stores.

Tests marked ``integration`` use the session fixtures ``redis_url`` and ``pg_dsn``
of ``tests/conftest.py``, which start the real servers. Every test gets its own
Redis key prefix and its own customer and terminal ids, and removes what it
wrote.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lightgbm
import numpy as np
import onnxmltools
import psycopg
import pytest
import redis
import uvicorn
from onnxmltools.convert.common.data_types import FloatTensorType
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.features import MODEL_INPUTS, CustomerEvent, DeviceEvent, TerminalLabel
from fraudcore.registry import (
    REGISTRY_STATEMENTS,
)
from fraudcore.segments import SEGMENTS_PG_SCHEMA
from fraudcore.store import (
    PG_SCHEMA,
    customer_key,
    device_key,
    encode_customer_member,
    encode_device_member,
    encode_label_member,
    terminal_key,
)
from services.scorer.app import create_app
from services.scorer.model import ScoringModel, open_model
from services.scorer.registry import ServedModel
from services.scorer.runtime import Runtime
from services.scorer.settings import ScorerSettings
from training.model import ModelConfig, to_onnx

SERVER_START_TIMEOUT_SECONDS = 20.0
TEST_THRESHOLD = 0.5


def train_onnx_model(zipmap: bool = False, width: int = len(MODEL_INPUTS)) -> bytes:
    """Train a small LightGBM classifier on random data and export it to ONNX."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(600, width)).astype(np.float32)
    labels = (features[:, 0] + rng.normal(size=600) > 0.8).astype(np.int64)
    classifier = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1)
    classifier.fit(features, labels)
    initial_types = [("input", FloatTensorType([None, width]))]
    exported = onnxmltools.convert_lightgbm(
        classifier, initial_types=initial_types, zipmap=zipmap
    )
    return bytes(exported.SerializeToString())


@dataclass(frozen=True)
class ExplainedModel:
    """ONNX bytes exported as the training job exports, and the LightGBM text."""

    onnx: bytes
    lightgbm_text: str


def train_explained_model(seed: int = 7) -> ExplainedModel:
    """Train a small monotone LightGBM model and export it like the training job."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(800, len(MODEL_INPUTS))).astype(np.float32)
    features[:, 0] = rng.uniform(0, 400, size=800)
    noise = rng.normal(size=800)
    labels = (features[:, 0] / 100 + features[:, 10] + noise > 3.0).astype(np.int64)
    params = ModelConfig(n_estimators=30, num_leaves=7, min_child_samples=10, seed=seed)
    classifier = lightgbm.LGBMClassifier(**params.lightgbm_params())
    classifier.fit(features, labels)
    exported = to_onnx(classifier).SerializeToString()
    return ExplainedModel(exported, classifier.booster_.model_to_string())


@pytest.fixture(scope="session")
def explained_model() -> ExplainedModel:
    """A model with its LightGBM text, for reasons."""
    return train_explained_model()


@pytest.fixture(scope="session")
def onnx_artifact() -> bytes:
    """ONNX bytes of a LightGBM model over ``MODEL_INPUTS``, with zipmap=False."""
    return train_onnx_model()


@pytest.fixture(scope="session")
def scoring_model(onnx_artifact: bytes) -> ScoringModel:
    """The test model, opened as the scorer opens registered models."""
    return open_model(onnx_artifact, "test-model", TEST_THRESHOLD)


@pytest.fixture(scope="session")
def served_model(scoring_model: ScoringModel) -> ServedModel:
    """The test model without rules or explainer, as the runtime serves it."""
    return ServedModel(scoring_model, None, (), None)


def closed_port() -> int:
    """Return a local TCP port that nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never replies, like a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def hung_store_settings(
    settings: ScorerSettings, port: int, **changes: object
) -> ScorerSettings:
    """Return ``settings`` with both stores on ``port``, which never replies."""
    return settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "pg_dsn": f"postgresql://fraud:fraud@127.0.0.1:{port}/fraud",
            **changes,
        }
    )


@pytest.fixture
def offline_settings(tmp_path: Path) -> ScorerSettings:
    """Settings whose Redis and PostgreSQL are closed ports."""
    return ScorerSettings(
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        pg_dsn=f"postgresql://fraud:fraud@127.0.0.1:{closed_port()}/fraud",
        kafka_bootstrap=f"127.0.0.1:{closed_port()}",
        flush_timeout_seconds=0.0,
        require_api_key=False,
        # Refused connections fail at once, and a loaded machine would otherwise
        # turn them into deadline errors.
        request_deadline_ms=2000.0,
        model_dir=tmp_path,
        model_retry_seconds=60.0,
        log_hash_key=SecretStr("test-key"),
    )


@dataclass
class ServedScorer:
    """A scorer running under uvicorn in a thread of the test process."""

    base_url: str
    runtime: Runtime
    client: httpx.Client

    def score(self, body: object) -> httpx.Response:
        """POST ``body`` as JSON to /score."""
        return self.client.post("/score", json=body)

    def decision(self, body: object) -> dict[str, Any]:
        """POST ``body`` to /score and return the decision, failing unless 200."""
        response = self.score(body)
        assert response.status_code == 200, response.text
        payload: dict[str, Any] = response.json()
        return payload


@contextmanager
def serve(settings: ScorerSettings) -> Iterator[ServedScorer]:
    """Run the app built from ``settings`` on a free local port until the block ends."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="scorer", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        port = server.servers[0].sockets[0].getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            yield ServedScorer(base_url, app.state.runtime, client)
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_SECONDS)


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during start-up; see the log above")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start in time")
        time.sleep(0.02)


@pytest.fixture
def run_scorer() -> Iterator[Callable[[ScorerSettings], ServedScorer]]:
    """Start scorers for the test; each stops when the test ends."""
    with ExitStack() as started:

        def start(settings: ScorerSettings) -> ServedScorer:
            return started.enter_context(serve(settings))

        yield start


@pytest.fixture
def offline_scorer(
    run_scorer: Callable[[ScorerSettings], ServedScorer],
    offline_settings: ScorerSettings,
    served_model: ServedModel,
) -> ServedScorer:
    """A scorer with both stores unreachable and the test model installed."""
    served = run_scorer(offline_settings)
    served.runtime.install(served_model)
    return served


# --- real stores -------------------------------------------------------------


@pytest.fixture(scope="session")
def store_dsn(pg_dsn: str) -> str:
    """The session database, with the online-store and registry tables created."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for schema in (PG_SCHEMA, *REGISTRY_STATEMENTS, DECISIONS_SCHEMA):
            conn.execute(schema)
        conn.execute(SEGMENTS_PG_SCHEMA)
    return pg_dsn


@dataclass(frozen=True)
class RegisteredModel:
    """A model row written to ``model_registry`` for one test."""

    version: str
    model_dir: Path
    artifact: bytes


def register_model(
    dsn: str,
    model_dir: Path,
    artifact: bytes,
    *,
    version: str | None = None,
    stage: str = "candidate",
    canary_share: float | None = None,
    threshold: float = TEST_THRESHOLD,
    sha256: str | None = None,
    feature_names: list[str] | None = None,
    created_offset: str = "0 seconds",
    lightgbm_text: str | None = None,
    review_threshold: float | None = None,
    rules: list[dict[str, object]] | None = None,
    segmentation_version: str | None = None,
    segment_thresholds: dict[str, dict[str, float]] | None = None,
) -> RegisteredModel:
    """Write ``artifact`` to ``model_dir`` and insert its registry row.

    ``created_offset`` is a PostgreSQL interval added to now() for ``created_at``.
    With ``lightgbm_text``, the artifact goes to ``<version>/model.onnx`` with
    ``lightgbm.txt`` beside it, as the training job writes them.
    """
    version = version or f"test-{uuid.uuid4().hex[:10]}"
    path = model_dir / f"{version}.onnx"
    if lightgbm_text is not None:
        (model_dir / version).mkdir()
        path = model_dir / version / "model.onnx"
        (model_dir / version / "lightgbm.txt").write_text(lightgbm_text)
    path.write_bytes(artifact)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO model_registry (version, created_at, artifact_path, "
            "artifact_sha256, feature_names, metrics, threshold, stage, "
            "review_threshold, rules, canary_share, segmentation_version, "
            "segment_thresholds) "
            "VALUES (%s, now() + %s::interval, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s)",
            (
                version,
                created_offset,
                str(path.relative_to(model_dir)),
                sha256 or hashlib.sha256(artifact).hexdigest(),
                Jsonb(
                    feature_names if feature_names is not None else list(MODEL_INPUTS)
                ),
                Jsonb({"test": True}),
                threshold,
                stage,
                review_threshold,
                None if rules is None else Jsonb(rules),
                canary_share,
                segmentation_version,
                None if segment_thresholds is None else Jsonb(segment_thresholds),
            ),
        )
    return RegisteredModel(version, model_dir, artifact)


@pytest.fixture
def registered_versions(store_dsn: str) -> Iterator[list[str]]:
    """Versions that the test registered; their rows are deleted after it."""
    versions: list[str] = []
    yield versions
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM model_registry WHERE version = ANY(%s)", (versions,))


@pytest.fixture
def registered_model(
    store_dsn: str, tmp_path: Path, onnx_artifact: bytes, registered_versions: list[str]
) -> RegisteredModel:
    """The test model, registered under a version of its own."""
    model = register_model(store_dsn, tmp_path, onnx_artifact)
    registered_versions.append(model.version)
    return model


@dataclass
class SeededStores:
    """Ids, Redis prefix and clients of one test's rows in the real stores."""

    prefix: str
    customer_id: str
    terminal_id: str
    device_id: str
    redis: redis.Redis
    dsn: str

    def seed_redis(
        self,
        events: list[CustomerEvent],
        labels: list[TerminalLabel],
        devices: list[DeviceEvent] | None = None,
    ) -> None:
        """Write events and labels as the stream job writes them to Redis."""
        if events:
            members = {encode_customer_member(e): e.event_ms for e in events}
            self.redis.zadd(customer_key(self.prefix, self.customer_id), members)
        if labels:
            members = {encode_label_member(x): x.label_ms for x in labels}
            self.redis.zadd(terminal_key(self.prefix, self.terminal_id), members)
        if devices:
            members = {encode_device_member(d): d.event_ms for d in devices}
            self.redis.zadd(device_key(self.prefix, self.device_id), members)

    def seed_postgres(
        self,
        events: list[CustomerEvent],
        labels: list[TerminalLabel],
        devices: list[DeviceEvent] | None = None,
    ) -> None:
        """Insert events and labels into the PostgreSQL copy of the online store."""
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customer_events VALUES (%s, %s, %s, %s, %s)",
                [(self.customer_id, *event) for event in events],
            )
            cur.executemany(
                "INSERT INTO terminal_labels VALUES (%s, %s, %s, %s)",
                [(self.terminal_id, *label) for label in labels],
            )
            cur.executemany(
                "INSERT INTO device_events VALUES (%s, %s, %s, %s)",
                [(self.device_id, *device) for device in devices or []],
            )

    def flush_redis(self) -> None:
        """Delete every Redis key under this test's prefix."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            self.redis.delete(*keys)


@pytest.fixture
def stores(redis_url: str, store_dsn: str) -> Iterator[SeededStores]:
    """Fresh ids and Redis prefix in the real stores, cleaned up after the test."""
    run = uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(redis_url)
    seeded = SeededStores(
        prefix=f"scorer-test-{run}",
        customer_id=f"customer-{run}",
        terminal_id=f"terminal-{run}",
        device_id=f"device-{run}",
        redis=client,
        dsn=store_dsn,
    )
    yield seeded
    seeded.flush_redis()
    client.close()
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM customer_events WHERE customer_id = %s", (seeded.customer_id,)
        )
        conn.execute(
            "DELETE FROM terminal_labels WHERE terminal_id = %s", (seeded.terminal_id,)
        )
        conn.execute(
            "DELETE FROM device_events WHERE device_id = %s", (seeded.device_id,)
        )
        conn.execute(
            "DELETE FROM customer_segments WHERE customer_id = %s",
            (seeded.customer_id,),
        )
        conn.execute(
            "DELETE FROM scored_transactions WHERE customer_id = %s",
            (seeded.customer_id,),
        )


@pytest.fixture
def live_settings(
    redis_url: str, stores: SeededStores, registered_model: RegisteredModel
) -> ScorerSettings:
    """Settings for the real stores, serving the registered test model."""
    return ScorerSettings(
        redis_url=redis_url,
        pg_dsn=stores.dsn,
        redis_prefix=stores.prefix,
        kafka_bootstrap=f"127.0.0.1:{closed_port()}",
        flush_timeout_seconds=0.0,
        require_api_key=False,
        # Budgets far above the defaults, because the test machine may be busy
        # and a timeout would change the feature source.
        redis_timeout_seconds=0.5,
        pg_timeout_seconds=1.0,
        request_deadline_ms=3000.0,
        model_dir=registered_model.model_dir,
        model_version=registered_model.version,
        return_features=True,
        log_hash_key=SecretStr("test-key"),
    )


# --- Kafka, private servers and keys -----------------------------------------


@dataclass(frozen=True)
class KafkaTopics:
    """Topics of one test module on the shared broker, deleted after it."""

    bootstrap: str
    transactions: str
    decisions: str
    labels: str

    def settings_update(self) -> dict[str, object]:
        """Return the ScorerSettings fields that point the scorer at these topics."""
        return {
            "kafka_bootstrap": self.bootstrap,
            "transactions_topic": self.transactions,
            "decisions_topic": self.decisions,
            "labels_topic": self.labels,
        }


@pytest.fixture(scope="module")
def kafka_topics(kafka_bootstrap: str) -> Iterator[KafkaTopics]:
    """Fresh topics on the shared broker, so no test reads another's events."""
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"scorer-test-{uuid.uuid4().hex[:10]}"
    topics = KafkaTopics(
        kafka_bootstrap,
        f"{prefix}-transactions",
        f"{prefix}-decisions",
        f"{prefix}-labels",
    )
    names = [topics.transactions, topics.decisions, topics.labels]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        future.result(timeout=30)
    yield topics
    for future in admin.delete_topics(names).values():
        future.result(timeout=30)


def consume(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_seconds: float = 30.0,
    keep: Callable[[bytes], bool] = lambda value: True,
) -> list[tuple[bytes, bytes, int]]:
    """Read ``(key, value, timestamp_ms)`` from the start of ``topic``.

    Keeps the messages whose value passes ``keep``. Stops once ``expected``
    were kept and no more came within a second, or when the timeout runs out,
    so a duplicate after the expected count shows.
    """
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"scorer-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[tuple[bytes, bytes, int]] = []
    deadline = time.monotonic() + timeout_seconds
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                if len(messages) >= expected and time.monotonic() - quiet_since > 1:
                    break
                continue
            if not keep(message.value()):
                continue
            quiet_since = time.monotonic()
            _, timestamp = message.timestamp()
            messages.append((message.key(), message.value(), timestamp))
    finally:
        consumer.close()
    return messages


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target address while it is started.

    Stopping closes the listener and every forwarded connection, so the port
    refuses connections like a server that is down.
    """

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port if port is not None else closed_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` of the proxy."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen and forward until :meth:`stop`."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and all forwarded connections."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone
            # would leave the port accepting connections on Linux.
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class PrivateRedis:
    """A redis-server of one test on a free port, which the test may stop."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.port = closed_port()
        self.folder = folder
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Redis URL of the server, with its password if it has one."""
        credentials = "" if self.password is None else f":{self.password}@"
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it replies to PING."""
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        command = [server, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        if self.password is not None:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        """Stop the server (this test's own, by its process handle)."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started redis-server of this test, stopped after it."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def create_api_key(dsn: str, name: str = "test") -> tuple[str, str]:
    """Store a new API key and return its id and the key."""
    from services.scorer.keys import create_key

    with psycopg.connect(dsn, autocommit=True) as conn:
        return create_key(conn, name)


def unique_transaction(stores: SeededStores, **changes: object) -> dict[str, object]:
    """Return a valid /score body with a fresh transaction id for ``stores``' ids."""
    body: dict[str, object] = {
        "transaction_id": f"tx-{uuid.uuid4().hex[:12]}",
        "customer_id": stores.customer_id,
        "terminal_id": stores.terminal_id,
        "amount": 42.5,
        "timestamp": "2024-04-06T10:42:03.456Z",
    }
    return body | changes
